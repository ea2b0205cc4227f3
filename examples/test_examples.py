"""Every example, run under both interpreters, with its results checked."""

from __future__ import annotations

import asyncio
import doctest
import uuid
from collections.abc import Callable
from typing import Any

import pytest

import accompanist as ac
from accompanist.interpreters import project
from accompanist.interpreters.common import session_result
from accompanist.language.steps import Step, StepKind
from examples import bank_transfer, bookseller, diffie_hellman, merge_sort

Runner = Callable[..., Any]
RUNNERS = {"central": ac.run_central, "projected": ac.testing.run_projected}


@pytest.fixture(params=sorted(RUNNERS))
def run(request: pytest.FixtureRequest) -> Runner:
    """``ac.run_central`` or ``ac.testing.run_projected``: every test runs under both."""
    return RUNNERS[request.param]


@pytest.mark.parametrize("module", [bookseller, diffie_hellman, bank_transfer, merge_sort])
def test_module_docstrings_and_doctests(module: Any) -> None:
    assert module.__doc__ and len(module.__doc__) > 200
    failures, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert failures == 0


# -- bookseller -------------------------------------------------------------------------------
def test_bookseller_buys_sicp(run: Runner) -> None:
    assert run(bookseller.bookseller, "SICP") == "bought at 30"


@pytest.mark.parametrize("title", ["TAPL", "HtDP", "Some Unknown Book"])
def test_bookseller_declines_other_titles(run: Runner, title: str) -> None:
    assert run(bookseller.bookseller, title) == "too expensive"


def test_bookseller_only_ships_when_bought() -> None:
    async def shipped(title: str) -> bool:
        trace = (await ac.CentralRunner(bookseller.bookseller).run(title)).trace
        return any(e.kind == "local" and e.src == "seller" and e.name == "ship" for e in trace)

    assert asyncio.run(shipped("SICP")) is True
    assert asyncio.run(shipped("TAPL")) is False


# -- Diffie-Hellman ---------------------------------------------------------------------------
def test_group_key_exchange_agrees_and_is_fresh_each_run(run: Runner) -> None:
    first = run(diffie_hellman.group_key_exchange)
    second = run(diffie_hellman.group_key_exchange)
    for outcome in (first, second):
        assert outcome["agreed"] is True
        assert set(outcome["fingerprints"]) == {"alice", "bob", "carol"}
        assert len(set(outcome["fingerprints"].values())) == 1
    assert first["fingerprints"]["alice"] != second["fingerprints"]["alice"]


def test_rfc3526_group_is_the_published_one() -> None:
    p = diffie_hellman.MODULUS
    assert p.bit_length() == 2048
    assert hex(p).endswith("15728e5a8aacaa68ffffffffffffffff")
    assert pow(2, p - 1, p) == 1  # Fermat: consistent with p being prime


class _JournalRunner:
    """A step runner that records journaled helper results, or serves them from a journal,
    the way the fault-tolerant engine does on replay."""

    def __init__(self, role: str, channels: dict[tuple[str, str], asyncio.Queue[bytes]], journal: dict[Any, Any]):
        self.role, self.channels, self.journal = role, channels, journal
        self.codec = diffie_hellman.group_key_exchange.codec

    def _queue(self, step: Step) -> asyncio.Queue[bytes]:
        return self.channels.setdefault((str(step.src), str(step.dst)), asyncio.Queue())

    async def send(self, step: Step, value: Any) -> None:
        self._queue(step).put_nowait(self.codec.encode(value))

    async def recv(self, step: Step) -> Any:
        return self.codec.decode(await self._queue(step).get())

    async def local(self, step: Step, thunk: Any) -> Any:
        key = (self.role, step.index)
        if step.kind in (StepKind.UUID, StepKind.NOW, StepKind.RANDOM) and key in self.journal:
            return self.journal[key]
        value = await thunk()
        if step.kind in (StepKind.UUID, StepKind.NOW, StepKind.RANDOM):
            self.journal[key] = value
        return value


def run_with_journal(choreography: ac.Choreography, journal: dict[Any, Any]) -> Any:
    """Run every role's projection concurrently, journaling or replaying helper results."""

    async def go() -> Any:
        channels: dict[tuple[str, str], asyncio.Queue[bytes]] = {}
        results = await asyncio.gather(
            *(project(choreography, r, _JournalRunner(r.name, channels, journal)) for r in choreography.roles)
        )
        return session_result(choreography, results[0])

    return asyncio.run(go())


def test_group_key_exchange_replays_to_the_same_key() -> None:
    journal: dict[Any, Any] = {}
    recorded = run_with_journal(diffie_hellman.group_key_exchange, journal)
    assert sum(isinstance(v, uuid.UUID) for v in journal.values()) == 6  # two per party
    assert run_with_journal(diffie_hellman.group_key_exchange, journal) == recorded


def test_group_key_is_g_to_the_product_of_the_exponents() -> None:
    # Serve chosen UUIDs from the journal, then check the key against plain arithmetic.
    drawn = {
        name: (uuid.UUID(int=i * 1000 + 1), uuid.UUID(int=i * 1000 + 2))
        for i, name in enumerate(["alice", "bob", "carol"], 1)
    }
    journal = {(name, index): pair[index] for name, pair in drawn.items() for index in (0, 1)}
    outcome = run_with_journal(diffie_hellman.group_key_exchange, journal)
    a, b, c = (diffie_hellman.exponent_from(*drawn[n]) for n in ("alice", "bob", "carol"))
    expected = pow(diffie_hellman.GENERATOR, a * b * c, diffie_hellman.MODULUS)
    assert outcome["agreed"] is True
    assert outcome["fingerprints"]["alice"] == diffie_hellman.fingerprint(expected)


# -- bank transfer ----------------------------------------------------------------------------
def ledgers() -> tuple[bank_transfer.Ledger, bank_transfer.Ledger]:
    return bank_transfer.Ledger({"alice": 100}), bank_transfer.Ledger({"bob": 5})


def test_transfer_commits_and_moves_money(run: Runner) -> None:
    a, b = ledgers()
    outcome = run(bank_transfer.make_transfer(a, b, source="alice", target="bob"), 30)
    assert outcome == {"outcome": "committed", "votes": {"bank_a": True, "bank_b": True}}
    assert a.balances == {"alice": 70}
    assert b.balances == {"bob": 35}
    assert a.pending == {} and b.pending == {}


def test_transfer_with_insufficient_funds_aborts_without_asking_bank_b(run: Runner) -> None:
    a, b = ledgers()
    outcome = run(bank_transfer.make_transfer(a, b, source="alice", target="bob"), 101)
    assert outcome == {"outcome": "aborted", "votes": {"bank_a": False, "bank_b": False}}
    assert a.balances == {"alice": 100}
    assert b.balances == {"bob": 5}
    assert b.log == ["abort"]  # told the decision, never asked to prepare


def test_transfer_to_a_missing_account_releases_the_hold(run: Runner) -> None:
    a, b = ledgers()
    outcome = run(bank_transfer.make_transfer(a, b, source="alice", target="nobody"), 40)
    assert outcome == {"outcome": "aborted", "votes": {"bank_a": True, "bank_b": False}}
    assert a.balances == {"alice": 100}
    assert a.log == ["prepare debit alice 40", "abort"]
    assert b.balances == {"bob": 5}


async def test_concurrent_transfers_keep_their_holds_apart() -> None:
    a, b = ledgers()
    transfer = bank_transfer.make_transfer(a, b, source="alice", target="bob")
    amounts = [30, 50, 40, 10]
    outcomes = await asyncio.gather(*(ac.testing.run_projected(transfer, n) for n in amounts))
    moved = sum(n for n, o in zip(amounts, outcomes, strict=True) if o["outcome"] == "committed")
    assert 0 < moved <= 100
    assert a.balances == {"alice": 100 - moved}
    assert b.balances == {"bob": 5 + moved}
    assert a.pending == {} and b.pending == {}


def test_bank_b_is_not_in_the_prepare_a_enclave() -> None:
    a, b = ledgers()
    transfer = bank_transfer.make_transfer(a, b, source="alice", target="bob")
    trace = asyncio.run(ac.CentralRunner(transfer).run(101)).trace
    messages = [(e.kind, e.src, e.dsts) for e in trace if e.kind in ("value", "select")]
    assert messages == [
        ("value", "client", ("bank_a",)),  # prepare request, inside the enclave
        ("value", "bank_a", ("client",)),  # the vote
        ("value", "client", ("bank_b",)),  # cond among=[bank_b]: "bank_a is not prepared"
        ("select", "client", ("bank_a", "bank_b")),  # the decision
    ]


# -- merge sort -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "items",
    [[], [7], [2, 1], [5, 3, 5, 1, 3, 5], list(range(30, 0, -1)), [-4, 0, 9, -4, 2**40, -(2**70)], [1] * 9],
)
def test_merge_sort_matches_sorted(run: Runner, items: list[int]) -> None:
    assert run(merge_sort.merge_sort, items) == sorted(items)


def test_sort_remotely_runs_on_its_own(run: Runner) -> None:
    assert run(merge_sort.sort_remotely, [3, 1, 2]) == [1, 2, 3]


def test_merge_sort_workers_each_get_one_half() -> None:
    trace = asyncio.run(ac.CentralRunner(merge_sort.merge_sort).run([4, 3, 2, 1, 0])).trace
    sent = [(e.src, e.dsts[0], e.value) for e in trace if e.kind == "value"]
    assert sent == [
        ("primary", "worker1", "[4, 3]"),
        ("worker1", "primary", "[3, 4]"),
        ("primary", "worker2", "[2, 1, 0]"),
        ("worker2", "primary", "[0, 1, 2]"),
    ]
