"""The outcome round when peers are slow but reachable (a loaded machine, a narrow link).

Under CPU load the saga-edge campaign (``test_random_cancels_never_leave_roles_disagreeing``)
used to leave sessions stuck for good and roles disagreeing. Two causes, each reproduced here
deterministically, without loading the CPU:

- the outcome round's best-effort copies (queries, the initiator's decision and orders said
  again, answers to queries) went out every ``outcome_query_after`` seconds whether or not the
  previous copy had been answered: on a link slower than that traffic, the queue grew without
  bound and the envelopes that would have ended the sessions waited behind it;
- in default mode the initiator gave up on a role that had not answered within the receive
  timeout, and declared ``failed`` ("not confirmed: unreachable") although the role was
  reachable and only slow to compensate (or to answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter

import pytest

import accompanist as ac
from accompanist.engine.config import CompensationOrder, EngineConfig
from accompanist.envelope import Envelope, EnvelopeKind
from accompanist.store.base import SessionStatus
from accompanist.transport.memory import FaultPlan
from tests.engine.harness import cluster
from tests.engine.test_saga_edges import DEFAULT, FT, Ledger, chain_app, statuses

A, B, C = ac.roles("a", "b", "c")
S = SessionStatus
MODES = {"default": DEFAULT, "fault-tolerant": FT}


def _failing_chain(ledger: Ledger, slow_undo: asyncio.Event | None = None) -> ac.App:
    """a reserves, b charges, c refuses to ship: a and b must compensate (b's undo waits for
    ``slow_undo`` when given)."""
    reserve, charge, ship = ledger.tx("reserve"), ledger.tx("charge"), ledger.tx("ship", fail_below=10**9)
    if slow_undo is not None:
        undo_charge = charge.compensate
        assert undo_charge is not None

        async def slow(ctx: ac.TxContext, value: int, result: int) -> None:
            await slow_undo.wait()
            await undo_charge(ctx, value, result)

        charge = ac.Transaction(charge.name, charge.commit, slow, retry=charge.retry)

    @ac.choreography("failing-chain", roles=(A, B, C))
    async def failing_chain(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
        await ch.transaction(A, reserve, x)
        at_b = await ch.comm(A, B, x)
        await ch.transaction(B, charge, at_b)
        at_c = await ch.comm(B, C, at_b)
        await ch.transaction(C, ship, at_c)
        return await ch.comm(C, A, at_c)

    return ac.App(failing_chain)


def _config(mode: str, order: CompensationOrder) -> EngineConfig:
    base = MODES[mode]
    return EngineConfig(**{**base.__dict__, "receive_timeout": 0.4, "outcome_query_after": 0.1, "compensation": order})


@pytest.mark.parametrize("order", list(CompensationOrder))
@pytest.mark.parametrize("mode", list(MODES))
async def test_a_compensation_slower_than_the_receive_timeout_is_waited_for(
    mode: str, order: CompensationOrder
) -> None:
    """b's compensation takes several receive timeouts (its service is slow); b stays
    reachable. The initiator waits for it instead of declaring it unreachable."""
    ledger, service_back = Ledger(), asyncio.Event()
    config = _config(mode, order)
    async with cluster(_failing_chain(ledger, service_back), "abc", config=config) as c:
        asyncio.get_running_loop().call_later(4 * config.receive_timeout, service_back.set)
        sid = await c["a"].start_session("failing-chain", [1])
        seen = await statuses(c, sid, "abc")
        records = [await c[r].get(sid) for r in "abc"]
        assert seen == [S.COMPENSATED] * 3, [r.error if r else None for r in records]
        errors = {r.error for r in records if r}
        assert len(errors) == 1 and (errors.pop() or "").endswith("Abort: ship refuses 1"), "one failure, c's"
        assert sorted(ledger.names("undo")) == ["charge", "reserve"]


def _slow_answers(envelope: Envelope) -> float:
    """b's answers to the initiator's decision take three receive timeouts to arrive."""
    answers = (EnvelopeKind.REPORT, EnvelopeKind.UNDONE)
    return 1.2 if envelope.src == "b" and envelope.kind in answers else 0.0


@pytest.mark.parametrize("order", list(CompensationOrder))
@pytest.mark.parametrize("mode", list(MODES))
async def test_an_answer_slower_than_the_receive_timeout_is_waited_for(mode: str, order: CompensationOrder) -> None:
    """b answers the decision at once, but its answers are slow on the way back; the decision
    said again reaches b each time. b is reachable: the initiator waits for its answer."""
    ledger = Ledger()
    async with cluster(
        _failing_chain(ledger), "abc", config=_config(mode, order), plan=FaultPlan(hold=_slow_answers)
    ) as c:
        sid = await c["a"].start_session("failing-chain", [1])
        seen = await statuses(c, sid, "abc")
        records = [await c[r].get(sid) for r in "abc"]
        assert seen == [S.COMPENSATED] * 3, [r.error if r else None for r in records]
        assert sorted(ledger.names("undo")) == ["charge", "reserve"]


@pytest.mark.parametrize("mode", list(MODES))
async def test_random_cancels_over_narrow_links_end_everywhere_alike(mode: str) -> None:
    """The saga-edge campaign over links that carry one envelope per 10 ms (100 a second, as a
    sidecar on a loaded machine may read them): no session stays stuck, every role agrees.
    Before the fix, nudges outran the links: default mode declared most sessions ``failed``
    (their roles "unreachable"), fault-tolerant mode sent 27,000 envelopes and left sessions
    unfinished for good."""
    ledger = Ledger()
    rng = random.Random(7)
    plan = FaultPlan(serve=0.01, seed=3)
    async with cluster(chain_app(ledger), "abc", config=MODES[mode], plan=plan) as c:
        sids = [await c["a"].start_session("chain", [i]) for i in range(120)]

        async def cancel_later(sid: str) -> None:
            await asyncio.sleep(rng.uniform(0, 0.03))
            # It may have completed first, or that role may not have heard of it yet.
            with contextlib.suppress(ac.OutcomeDecidedError, ac.UnknownSessionError):
                await c[rng.choice("abc")].cancel(sid)

        await asyncio.gather(*(cancel_later(s) for s in sids))
        outcomes: Counter[str] = Counter()
        for sid in sids:
            seen = await statuses(c, sid, "abc", timeout=60)
            assert len(set(seen)) == 1, (sid, seen)
            outcomes[seen[0]] += 1
        assert outcomes[S.COMPLETED] + outcomes[S.COMPENSATED] == len(sids), outcomes
        assert max(ledger.raw.values()) == 1, "no effect twice"
