"""The outcome round: every role of a session ends with the outcome its initiator declares.

The initiator is the one place where a session's outcome is decided, so two truths cannot
arise:

- **Completion.** A role whose part is done is only ``finished``: it reports ``done`` to the
  initiator, naming the roles it sent to. When the initiator has finished too and holds
  ``done`` from every role that took part, it declares ``completed`` and tells them.
- **Failure.** A role whose step fails (a transaction aborts, a local step raises, its
  buffer overflows) reports the failure to the initiator. The initiator decides: the first
  failure it learns of (its own, a report, an operator's cancel) is the session's, and it
  tells every other role. A cancel that arrives after the outcome was declared loses.
- **Compensation.** Every role undoes what it committed: in global reverse causal order
  (the default: the initiator collects each role's commits with their Lamport clocks and asks
  each role to compensate its batch in turn) or all at once (``parallel``). Each role answers
  ``undone``; only when every role has, the initiator declares ``compensated`` (something was
  undone) or ``failed`` (nothing had committed), with the one failure, and tells them all.

Every status change happens through the engine's ``transition`` under the session's lock;
the functions named ``*_locked`` expect the caller to hold it. Waiting roles ask the initiator
again after ``outcome_query_after`` seconds, then at doubling intervals (one copy at a time:
see ``Runs.resend``); in fault-tolerant mode a role that waits longer than the receive timeout
parks (no task) and resumes when the envelope it waits for arrives. In default mode the
initiator stops waiting only for a role that is unreachable, not for one that is slow.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from accompanist.engine import compensation
from accompanist.engine.config import CompensationOrder
from accompanist.engine.protocol import Compensate, Outcome, Query, Report, Undone, decode, encode, failure_of
from accompanist.engine.session import DONE_HEADER, SessionRun
from accompanist.engine.status import is_decided
from accompanist.engine.timers import with_timer_state
from accompanist.envelope import MESSAGE_KINDS, Envelope, EnvelopeKind, batch_of, number_of
from accompanist.errors import SessionCancelledError
from accompanist.failure import Failure
from accompanist.interpreters.common import Committed
from accompanist.store.base import SessionStatus

if TYPE_CHECKING:
    from accompanist.engine.coordinator import Coordinator

__all__ = [
    "SessionStopped",
    "absorb",
    "all_done",
    "await_outcome",
    "cancel_failure",
    "compensation_phase",
    "decide_locked",
    "fail_locked",
    "finish",
    "on_control_locked",
    "participants",
    "query_of",
    "restore_contacts",
]

S = SessionStatus
_UNDECIDED = (S.RUNNING, S.PARKED, S.FINISHED, S.DIVERGED)


class SessionStopped(Exception):  # noqa: N818 - a signal to the projection, not an error
    """The session's outcome was decided elsewhere: the projection stops at its next step."""


# -- what envelopes tell a run -------------------------------------------------------------
def absorb(run: SessionRun, envelope: Envelope) -> None:
    """Record what a control envelope (or a message's ``done`` header) says, live or replayed
    from the inbox. Changes no status: see :func:`on_control_locked`.

    Raises:
        DefinitionError: a malformed control payload.
    """
    kind, src = envelope.kind, envelope.src
    if kind in MESSAGE_KINDS:
        done = envelope.headers.get(DONE_HEADER)
        if done is not None:
            _note_done(run, src, done.encode())
        return
    if kind == EnvelopeKind.DONE:
        _note_done(run, src, envelope.payload)
    elif kind == EnvelopeKind.FAILURE:
        failure = failure_of(envelope.payload)
        if run.initiator:
            run.reports.setdefault(src, failure)
        else:
            run.decision = run.decision or failure
            run.decisions += 1
    elif kind == EnvelopeKind.OUTCOME:
        run.outcome = decode(envelope.payload, Outcome, "outcome")
    elif kind == EnvelopeKind.CANCEL:
        run.cancels.setdefault(src, failure_of(envelope.payload))
    elif kind == EnvelopeKind.UNDONE:
        undone = decode(envelope.payload, Undone, "undone")
        if batch_of(envelope.seq):
            run.batches_done[batch_of(envelope.seq)] = undone
        else:
            run.undone[src] = undone
    elif kind == EnvelopeKind.REPORT:
        run.commit_reports[src] = decode(envelope.payload, Report, "report")
    elif kind == EnvelopeKind.COMPENSATE:
        order = decode(envelope.payload, Compensate, "compensate")
        run.orders[order.batch] = order
    elif kind == EnvelopeKind.DIVERGED:
        run.diverged = failure_of(envelope.payload)
    elif kind == EnvelopeKind.RESUME:
        run.resumed[src] = max(run.resumed.get(src, -1), number_of(kind, envelope.seq))
    run.arrivals += 1
    run.signal.set()


def _note_done(run: SessionRun, src: str, contacts_json: bytes) -> None:
    try:
        contacts: list[str] = msgspec.json.decode(contacts_json, type=list[str])
    except msgspec.DecodeError:
        run.host.log.warning("ignoring malformed 'done' from '%s' for %s", src, run.session_id)
        return
    run.dones[src] = contacts
    run.arrivals += 1
    run.signal.set()


def participants(run: SessionRun) -> set[str]:
    """Roles known to have taken part: this one, whom it sent to, and whom they sent to."""
    roles = {run.record.role, *run.contacts}
    for contacts in run.dones.values():
        roles.update(contacts)
    return roles


def all_done(run: SessionRun) -> bool:
    """Whether every other participant has reported ``done`` (initiator only)."""
    return all(r in run.dones for r in participants(run) if r != run.record.role)


def _not_done(run: SessionRun) -> list[str]:
    """The participants the initiator still waits to hear ``done`` from."""
    return sorted(r for r in participants(run) if r not in run.dones and r != run.record.role)


def cancel_failure(role: str, reason: str | None = None) -> Failure:
    """The failure an operator's cancel at ``role`` stands for (or, with ``reason``, a saga
    deadline's: the same path, another cause)."""
    return Failure(
        role=role,
        step=None,
        transaction=None,
        error_type=SessionCancelledError.__name__,
        message=f"cancelled at role '{role}': {reason}" if reason else f"cancelled by an operator at role '{role}'",
    )


# -- deciding ------------------------------------------------------------------------------
async def decide_locked(co: Coordinator, run: SessionRun, failure: Failure) -> bool:
    """At the initiator: make ``failure`` the session's, unless the outcome is decided.

    Returns whether this call decided it.
    """
    if is_decided(run.record.status):
        return False
    tell = [co.control(run, role, EnvelopeKind.FAILURE, failure.encode()) for role in co.peers_of(run)]
    await co.transition(run, S.COMPENSATING, failure=failure, sends=tell)
    run.decision = failure
    run.interrupt(SessionStopped(failure.describe()))
    return True


async def fail_locked(co: Coordinator, run: SessionRun, failure: Failure) -> None:
    """This role failed: the initiator decides; another role reports to the initiator (and,
    since a role that has not sent ``done`` cannot see its session completed, starts
    compensating at once)."""
    if run.initiator:
        await decide_locked(co, run, failure)
        return
    if run.record.status not in _UNDECIDED:
        return
    report = co.control(run, run.choreography.initiator.name, EnvelopeKind.FAILURE, failure.encode())
    await co.transition(run, S.COMPENSATING, failure=failure, sends=[report])
    run.interrupt(SessionStopped(failure.describe()))


async def on_control_locked(co: Coordinator, run: SessionRun, envelope: Envelope) -> None:
    """The status changes a control envelope causes (after :func:`absorb` recorded it)."""
    kind, status = envelope.kind, run.record.status
    if kind == EnvelopeKind.FAILURE:
        if run.initiator:
            await decide_locked(co, run, failure_of(envelope.payload))
        elif status in _UNDECIDED:
            decided = failure_of(envelope.payload)
            await co.transition(run, S.COMPENSATING, failure=decided)
            run.interrupt(SessionStopped(decided.describe()))
    elif kind == EnvelopeKind.CANCEL and run.initiator:
        await decide_locked(co, run, failure_of(envelope.payload))
    elif kind == EnvelopeKind.DIVERGED and status in (S.RUNNING, S.PARKED, S.FINISHED) and not is_decided(status):
        if run.resumed.get(envelope.src, -1) > number_of(kind, envelope.seq):
            return  # a late copy: that role resumed since
        notice = failure_of(envelope.payload)
        await co.transition(run, S.DIVERGED, failure=notice)
        run.interrupt(SessionStopped(notice.describe()))


# -- the end of the projection -------------------------------------------------------------
async def finish(co: Coordinator, run: SessionRun, result: bytes | None) -> None:
    """This role's part ran to its end: ``finished`` (with ``done`` to the initiator)."""
    async with co.session_lock(run.session_id):
        if run.record.status != S.RUNNING:
            run.drop_deferred()
            return  # decided (or diverged) meanwhile: the driver goes on from the new status
        if run.initiator:
            run.record.result = result
            if all_done(run):  # every participant reported already: declare in the same commit
                await co.transition(run, S.COMPLETED, sends=_completed(co, run))
                return
            state = with_timer_state(run.record.state, contacts=sorted(run.contacts))  # a saga deadline stays
            await co.transition(run, S.FINISHED, state=state)
            return
        done = run.last_envelope_with_done() or co.control(
            run, run.choreography.initiator.name, EnvelopeKind.DONE, msgspec.json.encode(sorted(run.contacts))
        )
        await co.transition(run, S.FINISHED, sends=[done])


def _completed(co: Coordinator, run: SessionRun) -> list[Envelope]:
    """The initiator's ``completed`` outcome for every other participant."""
    completed = encode(Outcome(status=S.COMPLETED))
    others = sorted(participants(run) - {run.record.role})
    return [co.control(run, r, EnvelopeKind.OUTCOME, completed) for r in others]


def restore_contacts(run: SessionRun) -> None:
    """A finished initiator resumed without its projection: whom it sent to, from its record."""
    if run.record.state:
        try:
            state: dict[str, Any] = msgspec.json.decode(run.record.state, type=dict[str, Any])
            run.contacts.update(str(c) for c in state.get("contacts", []))
        except msgspec.DecodeError:
            run.host.log.warning("unreadable state of session %s", run.session_id)


async def _nothing() -> None:
    return None


async def _wait(
    co: Coordinator,
    run: SessionRun,
    phase: str,
    ready: Callable[[], bool],
    nudge: Callable[[], Awaitable[None]],
    *,
    awaiting: Callable[[], Iterable[str]] | None = None,
    probing: bool = False,
) -> bool:
    """Wait in ``phase`` until ``ready()`` (or the status changed), nudging peers after
    ``outcome_query_after`` seconds, then at doubling intervals up to the receive timeout: a
    long wait (a slow peer, a loaded machine) must not fill the links with nudges that say
    nothing new, or the envelopes that end the sessions wait behind them. False when the run
    should stop waiting: in fault-tolerant
    mode after the receive timeout (the run parks, and resumes when what it waits for
    arrives); in default mode only at the initiator, once every role it waits for
    (``awaiting``) is silent: nothing came from it for the receive timeout, and, when the
    nudges send it copies (``probing``), the latest copy went unacknowledged. A role that is
    only slow (its machine is loaded, its compensation takes long) still acknowledges the
    copies, and is waited for: a slow machine must not turn into an outcome."""
    config = co.config
    since = time.monotonic()
    interval, longest = config.outcome_query_after, max(config.outcome_query_after, config.receive_timeout)
    while True:
        try:
            await run.wait_for(lambda: ready() or run.record.status != phase, interval)
            return True
        except TimeoutError:
            pass
        await nudge()
        interval = min(2 * interval, longest)
        if co.durable:
            if time.monotonic() - since >= config.receive_timeout:
                return False
        elif awaiting is not None and all(
            run.reach.silent(role, since, config.receive_timeout, probed=probing) for role in awaiting()
        ):
            return False


async def await_outcome(co: Coordinator, run: SessionRun) -> bool:
    """The ``finished`` phase. Returns False when the run should park."""
    if run.initiator:
        waited = await _wait(co, run, S.FINISHED, lambda: all_done(run), _nothing, awaiting=lambda: _not_done(run))
        async with co.session_lock(run.session_id):
            if run.record.status != S.FINISHED:
                return True
            if not waited and not all_done(run) and co.durable:
                return False
            if not all_done(run):  # default mode: a participant never reported; compensate
                missing = _not_done(run)
                why = Failure(
                    role=run.record.role,
                    step=None,
                    transaction=None,
                    error_type="ReceiveTimeoutError",
                    message=f"no 'done' from {', '.join(missing)}",
                )
                await decide_locked(co, run, why)
                return True
            await co.transition(run, S.COMPLETED, sends=_completed(co, run))
        return True
    if not await _wait(co, run, S.FINISHED, lambda: run.outcome is not None, lambda: co.query(run)):
        return False
    async with co.session_lock(run.session_id):
        told = run.outcome
        if run.record.status != S.FINISHED or told is None:
            return True
        if told.status == S.COMPLETED:
            await co.transition(run, S.COMPLETED, lazy=True)  # lost, it is asked for again
        else:  # the initiator knows no such session: nothing completed it; undo what committed here
            await co.transition(run, S.COMPENSATING, failure=told.failure)
    return True


# -- compensating --------------------------------------------------------------------------
async def compensation_phase(co: Coordinator, run: SessionRun) -> bool:
    """The ``compensating`` phase at this role. Returns False when the run should park."""
    commits = compensation.commits_of(co, run)
    if commits is None:
        commits = await co.discover(run)
        if commits is None:
            return False  # blocked: the engine said why
    ordered = co.config.compensation is CompensationOrder.ORDERED
    if run.initiator:
        return await (_lead_ordered(co, run, commits) if ordered else _lead_parallel(co, run, commits))
    return await (_follow_ordered(co, run, commits) if ordered else _follow_parallel(co, run, commits))


async def _declare(co: Coordinator, run: SessionRun, undone: int, unconfirmed: list[str] | None = None) -> None:
    """The initiator: everyone compensated; declare the outcome and tell every role.

    In default mode a role that stays unreachable past the receive timeout is not waited for
    (``unconfirmed``): the outcome is ``failed``, saying whose compensation is not confirmed.
    """
    async with co.session_lock(run.session_id):
        if run.record.status != S.COMPENSATING:
            return
        failure = run.decision or (Failure.decode(run.record.failure) if run.record.failure else None)
        status = S.COMPENSATED if undone or (failure is not None and failure.transaction) else S.FAILED
        if unconfirmed and failure is not None:
            note = f" (compensation not confirmed by {', '.join(unconfirmed)}: unreachable; default mode)"
            failure = msgspec.structs.replace(failure, message=failure.message + note)
            status = S.FAILED
        outcome = encode(Outcome(status=status, failure=failure))
        tell = [co.control(run, role, EnvelopeKind.OUTCOME, outcome) for role in co.peers_of(run)]
        await co.transition(run, status, failure=failure, sends=tell)


async def _resend_decision(co: Coordinator, run: SessionRun, missing: Callable[[], list[str]]) -> None:
    """Default mode: the decision (or an answer to it) may have been lost; say it again."""
    if not co.durable and run.record.failure is not None:
        await co.resend(run, [co.control(run, r, EnvelopeKind.FAILURE, run.record.failure) for r in missing()])


async def _answers(co: Coordinator, run: SessionRun, answered: Mapping[str, object]) -> list[str] | None:
    """The initiator waits until every other role answered its decision (its ``undone`` or
    ``report`` lands in ``answered``). Returns the roles that did not (default mode gives up
    after the receive timeout), or None when the run should park."""
    peers = co.peers_of(run)

    def missing() -> list[str]:
        return [r for r in peers if r not in answered]

    done = await _wait(
        co,
        run,
        S.COMPENSATING,
        lambda: not missing(),
        lambda: _resend_decision(co, run, missing),
        awaiting=missing,
        probing=True,
    )
    return None if not done and co.durable else missing()


async def _lead_parallel(co: Coordinator, run: SessionRun, commits: list[Committed]) -> bool:
    own = await compensation.compensate(co, run, reversed(commits))
    unconfirmed = await _answers(co, run, run.undone)
    if unconfirmed is None:
        return False
    await _declare(co, run, own + sum(u.count for u in run.undone.values()), unconfirmed)
    return True


async def _lead_ordered(co: Coordinator, run: SessionRun, commits: list[Committed]) -> bool:
    me = run.record.role
    unconfirmed = await _answers(co, run, run.commit_reports)
    if unconfirmed is None:
        return False
    reports = {**run.commit_reports, me: compensation.report_of(commits)}
    by_key = {c.ctx.idempotency_key: c for c in commits}
    batches = compensation.plan(reports)
    for number, (role, keys) in enumerate(batches, start=1):
        if role == me:
            await compensation.compensate(co, run, [by_key[k] for k in keys])
            continue
        if number not in run.batches_done:
            order = co.control(run, role, EnvelopeKind.COMPENSATE, encode(Compensate(batch=number, keys=keys)), number)
            async with co.session_lock(run.session_id):
                await co.write(run, [order])

            if not await _wait_batch(co, run, number, order):
                if co.durable:
                    return False
                unconfirmed.append(role)
    await _declare(co, run, sum(len(keys) for _, keys in batches), unconfirmed)
    return True


async def _wait_batch(co: Coordinator, run: SessionRun, number: int, order: Envelope) -> bool:
    async def resend() -> None:
        if not co.durable:
            await co.resend(run, [order])

    return await _wait(
        co, run, S.COMPENSATING, lambda: number in run.batches_done, resend, awaiting=lambda: [order.dst], probing=True
    )


async def _answer(co: Coordinator, run: SessionRun, envelope: Envelope) -> None:
    async with co.session_lock(run.session_id):
        await co.write(run, [envelope])


async def _follow_parallel(co: Coordinator, run: SessionRun, commits: list[Committed]) -> bool:
    count = await compensation.compensate(co, run, reversed(commits))
    initiator = run.choreography.initiator.name
    undone = co.control(run, initiator, EnvelopeKind.UNDONE, encode(Undone(count=count)))
    await _answer(co, run, undone)
    return await _await_final(co, run, [undone])


async def _follow_ordered(co: Coordinator, run: SessionRun, commits: list[Committed]) -> bool:
    initiator = run.choreography.initiator.name
    by_key = {c.ctx.idempotency_key: c for c in commits}
    report = co.control(run, initiator, EnvelopeKind.REPORT, encode(compensation.report_of(commits)))
    await _answer(co, run, report)
    answered: dict[int, Envelope] = {}
    while True:
        for number, order in sorted(run.orders.items()):
            if number in answered:
                continue
            await compensation.compensate(co, run, [by_key[k] for k in order.keys if k in by_key])
            undone = co.control(run, initiator, EnvelopeKind.UNDONE, encode(Undone(count=len(order.keys))), number)
            await _answer(co, run, undone)
            answered[number] = undone
        if run.outcome is not None:
            break
        if not await _wait_orders(co, run, len(run.orders), [report, *answered.values()]):
            return False
    # Presumed abort, or an order lost: whatever is left is undone before the end.
    await compensation.compensate(co, run, reversed(commits))
    return await _await_final(co, run, [report, *answered.values()])


async def _wait_orders(co: Coordinator, run: SessionRun, seen: int, answers: list[Envelope]) -> bool:
    return await _wait(
        co,
        run,
        S.COMPENSATING,
        lambda: run.outcome is not None or len(run.orders) > seen,
        lambda: _nudge_initiator(co, run, answers),
    )


async def _nudge_initiator(co: Coordinator, run: SessionRun, answers: list[Envelope]) -> None:
    """Ask the initiator for the outcome; in default mode also say our answers again when the
    initiator repeated its decision (it may have missed them)."""
    if not co.durable and run.decisions > 1:
        run.decisions = 1
        await co.resend(run, answers)
    await co.query(run)


async def _await_final(co: Coordinator, run: SessionRun, answers: list[Envelope]) -> bool:
    """A role that compensated its part waits for the initiator's outcome and ends with it."""
    if not await _wait(
        co, run, S.COMPENSATING, lambda: run.outcome is not None, lambda: _nudge_initiator(co, run, answers)
    ):
        return False
    async with co.session_lock(run.session_id):
        told = run.outcome
        if run.record.status != S.COMPENSATING or told is None:
            return True
        status = told.status if told.status != S.COMPLETED else S.COMPENSATED
        if told.status == S.COMPLETED:
            co.log.error("session %s: the initiator declared 'completed' to a compensating role", run.session_id)
        await co.transition(run, status, failure=told.failure)
    return True


def query_of(run: SessionRun) -> Query:
    """What a waiting role tells the initiator when it asks for the outcome."""
    failure = Failure.decode(run.record.failure) if run.record.failure else None
    return Query(status=run.record.status, failure=failure)
