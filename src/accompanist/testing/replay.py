"""Export one recorded session of one role, and replay it against the current code.

Why: the question before deploying a change to a choreography is "would the sessions running
now replay on the new code?". A sidecar answers it only at its next restart, by stopping a
session as ``diverged``. Here the same check runs offline, in CI: the session's rows (its
record, journal, inbox, outbox and transaction log, as ``accompanist export`` writes them) feed
the role's projection of the *current* code through a step runner that has no side effects:
receives are answered from the inbox, local steps and ``now``/``uuid``/``random`` from the
journal, transactions from the transaction log, and sends are compared with the outbox. Each
step is checked against the journal exactly as the engine's replay checks it (kind and name,
:func:`accompanist.engine.session.journal_name`), and the first difference is reported with
the same :class:`~accompanist.errors.NondeterminismError` the engine would raise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from accompanist.engine.origin import origin_of
from accompanist.engine.session import journal_name
from accompanist.envelope import Envelope
from accompanist.errors import (
    AccompanistError,
    CodecError,
    NondeterminismError,
    TransactionFailedError,
    UnknownSessionError,
)
from accompanist.interpreters.common import session_result
from accompanist.interpreters.projected import project
from accompanist.language.choreo import LocalThunk
from accompanist.language.choreography import App, Choreography
from accompanist.language.steps import Step, StepKind
from accompanist.language.transaction import Transaction
from accompanist.store.base import JournalEntry, OutboxRow, SessionRecord, Store, TxRecord

__all__ = ["FORMAT", "ReplayReport", "SessionExport", "export_session", "load_export", "replay_session"]

FORMAT = "accompanist-session/1"


class SessionExport(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Every stored row of one session at one role (bytes fields are base64 in JSON)."""

    format: str = FORMAT
    role: str
    record: SessionRecord
    journal: list[JournalEntry]
    inbox: list[Envelope]
    outbox: list[OutboxRow]
    txlog: list[TxRecord]

    def to_json(self) -> bytes:
        """The export as indented JSON."""
        return msgspec.json.format(msgspec.json.encode(self), indent=2)


async def export_session(store: Store, session_id: str) -> SessionExport:
    """Read one session's rows from an open ``store``.

    Raises:
        UnknownSessionError: the store has no such session.
    """
    record = await store.get_session(session_id)
    if record is None:
        raise UnknownSessionError(f"the store has no session {session_id}", session_id=session_id)
    return SessionExport(
        role=record.role,
        record=record,
        journal=await store.journal_load(session_id),
        inbox=await store.inbox_load(session_id),
        outbox=await store.outbox_load(session_id),
        txlog=await store.txlog_load(session_id),
    )


def load_export(data: bytes, source: str = "the export") -> SessionExport:
    """Parse an export written by :meth:`SessionExport.to_json`.

    Raises:
        AccompanistError: it is not such an export; the message names what is wrong.
    """
    try:
        export: SessionExport = msgspec.json.decode(data, type=SessionExport)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise AccompanistError(f"{source} is not an accompanist session export: {exc}") from None
    if export.format != FORMAT:
        raise AccompanistError(f"{source} has format {export.format!r}; this version reads {FORMAT!r}")
    return export


@dataclass
class ReplayReport:
    """What replaying one session found.

    Attributes:
        session_id / role / choreography / version: what was replayed.
        steps: steps of the record the code matched.
        recorded: steps in the record.
        divergence: the first difference (None when the code agrees with the record).
        ended: why the replay stopped where it did.
        notes: differences that are not divergences (a value sent differs, a result differs).
    """

    session_id: str
    role: str
    choreography: str
    version: int
    steps: int = 0
    recorded: int = 0
    divergence: NondeterminismError | None = None
    ended: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the current code replays the record without a divergence."""
        return self.divergence is None

    def __str__(self) -> str:
        head = f"session {self.session_id} ({self.choreography} v{self.version}) at role '{self.role}'"
        if self.divergence is not None:
            d = self.divergence
            body = f"DIVERGES at step {d.step}: the record has {d.expected}, the current code makes {d.actual}"
        else:
            body = f"replays: {self.steps} of {self.recorded} recorded steps match ({self.ended})"
        return "\n".join([head, body, *(f"note: {n}" for n in self.notes)])


class _EndOfRecord(Exception):  # noqa: N818 - a signal, not an error
    """The record holds no more to answer the next step with."""


async def _never() -> Any:  # pragma: no cover - a replay answers from the journal
    raise AssertionError("a replay runs no local step")


class _ReplayRunner:
    """A ``StepRunner`` answering every step from the export, checking it against the journal."""

    def __init__(self, export: SessionExport, choreography: Choreography, report: ReplayReport) -> None:
        self.export = export
        self.codec = choreography.codec
        self.report = report
        self.sid = export.record.session_id
        self.journal = {e.step: e for e in export.journal}
        self.inbox = {(e.src, e.seq): e for e in export.inbox}
        self.outbox = {(r.envelope.dst, r.envelope.seq): r.envelope for r in export.outbox}
        self.txlog = {t.key: t for t in export.txlog}
        self.occurrences: dict[str, int] = {}
        self.made = 0

    def _check(self, step: Step) -> JournalEntry:
        self.made = max(self.made, step.index + 1)
        entry = self.journal.get(step.index)
        if entry is None:
            raise _EndOfRecord(f"the record ends before step {step.index}")
        name = journal_name(step)
        if entry.kind != step.kind or entry.name != name:
            raise NondeterminismError(self.sid, step.index, f"{entry.kind}({entry.name})", f"{step.kind}({name})")
        self.report.steps = step.index + 1
        return entry

    def patch(self, index: int, name: str, *, deprecated: bool) -> bool:
        """``ch.patched`` decided as the engine decides it (see ``SessionRun.patch``)."""
        entry = self.journal.get(index)
        if entry is not None:
            taken = entry.kind == StepKind.PATCH and entry.name == name
            if taken:
                self.made = max(self.made, index + 1)
                self.report.steps = index + 1
            return taken
        origin = origin_of(self.export.record.seed)
        return not deprecated and origin is not None and name in origin.patches

    async def send(self, step: Step, value: Any) -> None:
        self._check(step)
        sent = self.outbox.get((step.dst or "", step.seq or 0))
        if sent is not None:
            try:
                recorded = self.codec.decode(sent.payload)
            except CodecError:
                return
            if recorded != value:
                self.report.notes.append(
                    f"step {step.index} sends {value!r} to '{step.dst}', the record sent {recorded!r}"
                )

    async def recv(self, step: Step) -> Any:
        self._check(step)
        envelope = self.inbox.get((step.src or "", step.seq or 0))
        if envelope is None:
            raise _EndOfRecord(f"the inbox no longer holds envelope #{step.seq} from '{step.src}' (pruned?)")
        return self.codec.decode(envelope.payload)

    async def local(self, step: Step, thunk: LocalThunk) -> Any:
        entry = self._check(step)
        if entry.value is None:
            raise _EndOfRecord(f"step {step.index}'s result was not journaled (it could not be encoded)")
        return self.codec.decode(entry.value)

    async def sleep(self, step: Step, deadline_of: Callable[[float], float]) -> None:
        """A recorded sleep is over in a replay: its deadline is checked, never waited for."""
        await self.local(step, _never)

    async def cancel_at(self, step: Step, deadline_of: Callable[[float], float], reason: str) -> None:
        """A recorded saga deadline: checked against the journal; nothing to cancel here."""
        await self.local(step, _never)

    async def transaction(self, step: Step, tx: Transaction, args: list[Any]) -> Any:
        entry = self._check(step)
        occurrence = self.occurrences.get(tx.name, 0)
        self.occurrences[tx.name] = occurrence + 1
        logged = self.txlog.get(f"{self.sid}/{self.export.role}/{tx.name}/{occurrence}")
        if logged is not None and logged.status in ("committed", "compensated"):
            return self.codec.decode(logged.result) if logged.result is not None else None
        if entry.value is not None:  # the commit failed, as recorded: the projection fails the same way
            failed = self.codec.decode(entry.value)
            raise TransactionFailedError(
                self.export.role, tx.name, step.index, str(failed.get("failed", "the commit failed"))
            )
        raise _EndOfRecord(f"transaction {tx.name} at step {step.index} has no recorded result")


async def replay_session(export: SessionExport, app: App) -> ReplayReport:
    """Replay ``export`` on the current code in ``app``, without side effects.

    Raises:
        UnknownChoreographyError: ``app`` lacks the session's choreography or version.
    """
    record = export.record
    report = ReplayReport(record.session_id, export.role, record.choreography, record.version)
    report.recorded = len(export.journal)
    choreography = app.get(record.choreography, record.version)
    runner = _ReplayRunner(export, choreography, report)
    role = choreography.role(export.role)
    args = choreography.codec.decode(record.args) if role == choreography.initiator and record.args else []
    if role != choreography.initiator:
        args = [None] * choreography.arity
    try:
        returned = await project(choreography, role, runner, args)
    except NondeterminismError as exc:
        report.divergence = exc
        report.ended = "diverged"
        return report
    except _EndOfRecord as end:
        report.ended = str(end)
        return report
    except TransactionFailedError as exc:
        report.ended = f"the projection failed at step {exc.step} as recorded: {exc.reason}"
        return report
    except Exception as exc:  # the user's code raised where the record has more steps
        if runner.made < report.recorded:
            report.divergence = NondeterminismError(
                record.session_id, runner.made, _entry_text(export, runner.made), f"an error: {exc!r}"
            )
            report.ended = "diverged"
        else:
            report.ended = f"the projection raised {type(exc).__name__}: {exc}"
        return report
    if runner.made < report.recorded:
        report.divergence = NondeterminismError(
            record.session_id, runner.made, _entry_text(export, runner.made), "the end of the choreography"
        )
        report.ended = "diverged"
        return report
    report.ended = "the end of the choreography"
    _compare_result(report, record, choreography, returned)
    return report


def _entry_text(export: SessionExport, step: int) -> str:
    entry = next((e for e in export.journal if e.step == step), None)
    return f"{entry.kind}({entry.name})" if entry is not None else f"step {step}"


def _compare_result(report: ReplayReport, record: SessionRecord, choreography: Choreography, returned: Any) -> None:
    if record.result is None or choreography.initiator.name != record.role:
        return
    try:
        now, then = session_result(choreography, returned), choreography.codec.decode(record.result)
    except AccompanistError:
        return
    if now != then:
        report.notes.append(f"the result is {now!r}, the record's {then!r}")
