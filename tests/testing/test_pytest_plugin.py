"""The pytest plugin, as a user's test suite sees it: its ``cluster`` and ``explore`` fixtures
in a test file run by pytest itself (``pytester``), with the plugin loaded from the entry
point the package installs."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

USER_TESTS = """
import accompanist as ac
from accompanist.testing import Ledger

Shop, Bank = ac.roles("shop", "bank")


def make(ledger, idempotent=True):
    async def unreserve(ctx, item, reserved):
        (ledger.once if idempotent else ledger.record)(ctx, "unreserve")

    @ac.transaction(compensate=unreserve, name="reserve")
    async def reserve(ctx, item):
        ledger.once(ctx, "reserve")
        return item.upper()

    @ac.transaction(name="charge")
    async def charge(ctx, amount):
        if amount > 100:
            raise ac.Abort("too dear")
        return amount

    @ac.choreography("shop", roles=(Shop, Bank))
    async def shop(ch, item):
        reserved = await ch.transaction(Shop, reserve, item)
        at_bank = await ch.comm(Shop, Bank, await ch.locally(Shop, len, item))
        paid = await ch.comm(Bank, Shop, await ch.transaction(Bank, charge, at_bank))
        return await ch.locally(Shop, lambda r, p: f"{r} for {p}", reserved, paid)

    return shop


async def test_cluster_runs_crashes_and_restarts(cluster):
    async with cluster(make(Ledger())) as c:
        assert await c.run("shop", "pen") == "PEN for 3"
        sid = await c.start_session("shop", "book")
        await c.crash("bank")
        await c.restart("bank")
        records = await c.settle(sid)
        assert {r.status for r in records.values()} == {"completed"}
        assert c.crashes == {"bank": 1}


def test_explore_passes(explore):
    ledger = Ledger()
    report = explore(lambda: make(ledger), "pen", effects=ledger)
    assert report.ok and len(report.runs) > 10


def test_explore_fails_with_a_readable_trace(explore):
    ledger = Ledger()
    explore(lambda: make(ledger, idempotent=False), "pen", effects=ledger)
"""


def test_the_fixtures_work_in_a_users_test_file(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_explore_fails_with_a_readable_trace*",
            "*first failing schedule:*",
            "*crash 'shop' right after the compensate of reserve#0 at shop returned*",
            "*broken: ?effect-twice? the compensate effect 'unreserve' was applied 2 times*",
        ]
    )
    assert "Traceback" not in result.stdout.str()  # a failure reads like a test failure
