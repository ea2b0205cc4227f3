"""Undoing what one role committed in a failed saga.

A role's commits come from its live run when the projection ran in this process, and
otherwise from the transaction log, which keeps each commit's arguments, result and Lamport
clock: a role that finished its part, crashed, or diverged compensates without re-running
its session. Each compensation is retried until it succeeds and recorded as compensated
(atomically with the service's own undo for an ``atomic`` transaction), so a crash in the
middle resumes where it stopped.

For the global reverse order (the default), the initiator collects every role's commits with
their clocks and orders them with :func:`plan`: a commit that causally follows another has a
larger clock, so undoing in decreasing clock order undoes later steps first.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from accompanist.engine.protocol import Report
from accompanist.errors import CodecError, TransactionFailedError
from accompanist.interpreters.common import Committed
from accompanist.language.transaction import TxContext, commit_with_retry, compensate_until_done
from accompanist.store.base import TxRecord

if TYPE_CHECKING:
    from accompanist.engine.host import Host
    from accompanist.engine.session import SessionRun

__all__ = ["commits_of", "compensate", "plan", "report_of"]

_UNDOABLE = ("committed", "uncertain", "compensated", "pending")


def commits_of(host: Host, run: SessionRun) -> list[Committed] | None:
    """Every commit of the session at this role, oldest first (compensated ones included).

    None when the log names a transaction this process does not know, or one whose arguments
    could not be logged: the caller then replays the session to meet it again.
    """
    if run.projected or not host.durable:
        return sorted(run.committed, key=lambda c: (c.clock, c.ctx.step))
    out: list[Committed] = []
    codec = run.codec
    for rec in sorted(run.txlog.values(), key=lambda r: (r.clock, r.step)):
        if rec.status not in _UNDOABLE:
            continue
        tx = host.registry.get(run.choreography.name, rec.name)
        if tx is None or (rec.args is None and tx.compensate is not None):
            return None
        try:
            args = list(codec.decode(rec.args)) if rec.args is not None else []
            result = codec.decode(rec.result) if rec.result is not None else None
        except CodecError:
            return None
        occurrence = int(rec.key.rsplit("/", 1)[-1]) if rec.key.rsplit("/", 1)[-1].isdigit() else 0
        ctx = TxContext(run.session_id, run.record.role, rec.name, occurrence, rec.step, 1)
        out.append(Committed(tx, args, result, ctx, rec.clock, settle=rec.status == "pending"))
    return out


def compensated_keys(run: SessionRun) -> set[str]:
    """Idempotency keys of this role's commits already compensated."""
    return {k for k, r in run.txlog.items() if r.status == "compensated"} | run.undone_keys


def report_of(commits: Iterable[Committed]) -> Report:
    """What a role reports to the initiator for an ordered compensation."""
    return Report(commits=[(c.clock, c.ctx.idempotency_key) for c in commits])


def plan(reports: Mapping[str, Report]) -> list[tuple[str, list[str]]]:
    """Every role's commits in global reverse causal order, as batches: consecutive commits
    of one role form one batch (its compensations run one after the other there)."""
    entries = sorted(((clock, role, key) for role, r in reports.items() for clock, key in r.commits), reverse=True)
    batches: list[tuple[str, list[str]]] = []
    for _, role, key in entries:
        if batches and batches[-1][0] == role:
            batches[-1][1].append(key)
        else:
            batches.append((role, [key]))
    return batches


async def compensate(host: Host, run: SessionRun, commits: Iterable[Committed]) -> int:
    """Compensate ``commits`` in the order given (skipping those already compensated);
    return how many there were."""
    done = compensated_keys(run)
    count = 0
    for item in commits:
        key = item.ctx.idempotency_key
        if item.settle and key not in done:
            settled = await _settle(host, run, item)
            if settled is None:
                continue  # the service declined it: it never took effect
            item = settled
        count += 1
        if key not in done:
            await _compensate_one(host, run, item, key)
            run.undone_keys.add(key)
    return count


async def _settle(host: Host, run: SessionRun, item: Committed) -> Committed | None:
    """A commit known only by its intent: run it again with the same idempotency key to learn
    its result (the service did it once at most), so that its compensation gets the real one.
    None when the service declines it: nothing took effect."""

    def ctx(attempt: int) -> TxContext:
        return dataclasses.replace(item.ctx, attempt=attempt)

    try:
        result = await commit_with_retry(item.tx, ctx, item.args)
    except TransactionFailedError as exc:
        if not exc.uncertain:
            host.log.info("intent %s was declined when settled: nothing to undo", item.ctx.idempotency_key)
            return None
        result = None  # still unknown: compensate it as a commit that may have taken effect
    return dataclasses.replace(item, result=result, settle=False)


async def _compensate_one(host: Host, run: SessionRun, item: Committed, key: str) -> None:
    """Run one compensation until it succeeds and record it as compensated."""
    logged = run.txlog.get(key)
    mark = TxRecord(
        session_id=run.session_id,
        key=key,
        name=item.tx.name,
        step=item.ctx.step,
        status="compensated",
        result=logged.result if logged is not None else None,
        updated_at=time.time(),
        args=logged.args if logged is not None else None,
        clock=item.clock,
    )
    atomic = host.atomic() if item.tx.atomic and host.durable else None
    if atomic is not None and run.unsaved:
        await run.unsaved.save()  # its commit's row must not land after the mark

    attempts = 0

    def ctx(attempt: int) -> TxContext:
        nonlocal attempts
        attempts = attempt
        return dataclasses.replace(item.ctx, attempt=attempt, compensating=True)

    def complain(attempt: int, exc: BaseException) -> None:
        if attempt in (1, 10) or attempt % 100 == 0:
            host.log.warning("compensation %s failed (try %d), retrying: %s", key, attempt, exc)

    async def undo_atomically(attempt_ctx: TxContext) -> None:
        # The service's undo and the 'compensated' mark commit together.
        assert atomic is not None and item.tx.compensate is not None
        async with atomic() as scope:
            lent = dataclasses.replace(attempt_ctx, connection=scope.connection)
            await item.tx.compensate(lent, *item.args, item.result)
            scope.batch.txlog.append(mark)

    began = time.perf_counter()
    with host.tracing.step(run.session_id, "compensate", transaction=item.tx.name, step=item.ctx.step) as span:
        await compensate_until_done(
            item.tx,
            ctx,
            item.args,
            item.result,
            on_error=complain,
            max_delay=host.config.retry_max,
            call=undo_atomically if atomic is not None else None,
        )
        if span is not None:
            span.set_attribute("accompanist.attempts", attempts)
    host.trails.note_undone(run.session_id, (item.tx.name, key, item.ctx.step, began, time.perf_counter(), attempts))
    if host.durable and atomic is None:
        # Durable with the next commit (the answer to the initiator, or the outcome), after
        # the commit's own row if that waited too. Lost in a crash, the compensation runs
        # again under the same idempotency key, as a compensation retried after an error does.
        run.unsaved.txlog(mark)
    run.txlog[key] = mark
    host.metrics.compensations.inc()
