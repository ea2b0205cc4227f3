"""``ac.testing.explore``: it finds a planted bug with a readable report, and passes where
the choreography is right (the sample and the project's examples)."""

from __future__ import annotations

import pytest
from examples.bank_transfer import Ledger as Books
from examples.bank_transfer import make_transfer
from examples.bookseller import bookseller
from examples.travel import Cars, Flights, Hotels, Trip, make_trip

import accompanist as ac
from accompanist.testing import ExploreError, Ledger, explore
from tests.testing.sample import make_shop

BUYER, SELLER = ac.roles("buyer", "seller")


def test_a_compensation_that_is_not_idempotent_is_found() -> None:
    ledger = Ledger()
    with pytest.raises(ExploreError) as found:
        explore(lambda: make_shop(ledger, idempotent=False), "book", effects=ledger)
    report = found.value.report
    bad = report.failures[0]
    assert [v.code for v in bad.violations] == ["effect-twice"]
    assert bad.schedule.fail is not None and bad.schedule.crash is not None
    assert bad.schedule.crash.at == "compensate" and bad.schedule.crash.role == "shop"
    assert set(bad.statuses.values()) == {"compensated"}
    text = str(found.value)
    # The report reads as a story: the schedule, the reference, each role, what broke, and why.
    for needed in (
        "first failing schedule",
        "transaction charge#0 at bank fails (Abort)",
        "crash 'shop' right after the compensate of reserve#0 at shop returned",
        "central interpreter: failed: compensated",
        "shop: compensated",
        "bank: compensated",
        "[effect-twice] the compensate effect 'unreserve' was applied 2 times",
        "'shop' restarted on its store",
    ):
        assert needed in text, f"{needed!r} missing from:\n{text}"
    unreserves = [e for e in bad.effects if e.label == "unreserve"]
    assert len(unreserves) == 2 and unreserves[0].key == unreserves[1].key


def test_the_same_saga_with_idempotent_compensations_passes() -> None:
    ledger = Ledger()
    report = explore(lambda: make_shop(ledger), "book", effects=ledger)
    assert report.ok, str(report)
    kinds = {(r.schedule.crash.at if r.schedule.crash else "-", r.schedule.fail is not None) for r in report.runs}
    # crashes before steps and after commits, failing transactions, crashes during compensation
    assert {("step", False), ("commit", False), ("-", True), ("compensate", True)} <= kinds
    assert (
        sum(1 for r in report.runs if r.schedule.crash and r.schedule.crash.at == "step") == 5 + 3
    )  # steps of shop, bank
    completed = [r for r in report.runs if r.schedule.fail is None]
    assert all(r.result == "reserved book, paid 40" for r in completed)


def test_a_result_that_differs_from_the_central_run_is_reported() -> None:
    # A service double whose state leaks from run to run: the central run (first) and the
    # engines' run (second) see different prices, which explore must not take for agreement.
    calls = {"n": 0}

    def price(title: str) -> int:
        calls["n"] += 1
        return calls["n"]

    @ac.choreography("drift", roles=(BUYER, SELLER))
    async def drift(ch: ac.Choreo, title: ac.Located[str]) -> ac.Located[int]:
        at_seller = await ch.comm(BUYER, SELLER, title)
        return await ch.comm(SELLER, BUYER, await ch.locally(SELLER, price, at_seller))

    report = explore(drift, "x", raise_on_failure=False)
    assert not report.ok and report.failures[0].violations[0].code == "result-differs"
    assert "result 2, the central interpreter's 1" in str(report)


def test_default_mode_explores_failing_transactions_only() -> None:
    ledger = Ledger()
    report = explore(lambda: make_shop(ledger), "book", effects=ledger, mode="default")
    assert report.ok and all(r.schedule.crash is None for r in report.runs)
    assert len(report.runs) == 3 and "default mode keeps no state" in str(report)


@pytest.mark.parametrize("city", ["Lisbon", "Reykjavik"])
def test_the_travel_example_passes(city: str) -> None:
    report = explore(lambda: make_trip(Flights(seats=5), Hotels(), Cars(per_city=2)), Trip("ada", city, 2))
    assert report.ok and len(report.runs) > 20


def test_the_bank_transfer_and_the_bookseller_pass() -> None:
    transfer = explore(
        lambda: make_transfer(Books({"alice": 100}), Books({"bob": 5}), source="alice", target="bob"), 30
    )
    assert transfer.ok and transfer.runs[0].result["outcome"] == "committed"
    assert explore(bookseller, "SICP").ok


def test_a_commit_whose_retries_run_out_is_compensated_without_a_false_alarm() -> None:
    undone: list[str] = []

    async def down(ctx: ac.TxContext, x: int) -> int:
        raise ConnectionError("the service is down")

    async def undo(ctx: ac.TxContext, x: int, result: object) -> None:
        undone.append(ctx.idempotency_key)

    flaky = ac.Transaction("flaky", down, undo, retry=ac.Retry(attempts=2, initial=0.01))

    @ac.choreography("down", roles=(BUYER, SELLER))
    async def saga(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        return await ch.transaction(BUYER, flaky, x)

    report = explore(saga, 1)
    assert report.ok, str(report)
    assert set(report.runs[0].statuses.values()) == {"compensated"} and undone  # it may have taken effect
