"""One role's steps of one session, as ``GET /sessions/{id}/steps`` answers them.

Why one builder for every source: a sidecar answers from memory (the live steps it ran, with
their times, values and attempts: :mod:`accompanist.engine.trail`) and, in fault-tolerant mode,
from its store (the journal, the transaction log, the inbox and the outbox) for what ran before
this process or was evicted from memory; ``accompanist show --store`` reads the same rows from
a store after the fact. Each answer has the same shape, so the commands, the web view and the
diagram never care where a step came from (``source`` says it, per step).
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

from accompanist.codec import PayloadCodec
from accompanist.engine.session import CLOCK_HEADER
from accompanist.engine.trail import Sealed, TrailView
from accompanist.envelope import MESSAGE_KINDS, Envelope
from accompanist.failure import Failure
from accompanist.language.steps import Step, StepKind
from accompanist.store.base import JournalEntry, OutboxRow, SessionRecord, SessionStatus, TxRecord
from accompanist.summary import summarize, summarize_bytes

__all__ = ["KINDS", "StoreRows", "iso", "role_steps", "short_name"]

S = SessionStatus
KINDS = {
    StepKind.SEND: "send",
    StepKind.RECV: "receive",
    StepKind.LOCAL: "local",
    StepKind.NOW: "now",
    StepKind.UUID: "uuid",
    StepKind.RANDOM: "random",
    StepKind.TX: "transaction",
    StepKind.SLEEP: "sleep",
    StepKind.DEADLINE: "deadline",
    StepKind.PATCH: "patch",
}
"""The API's name of each step kind (``compensation`` is the one kind no projection makes)."""

_TYPE_ONLY = re.compile(r"^<[\w.]+>$|^<\d+ bytes>$")
_MESSAGE = re.compile(r"^(?P<src>.+)->(?P<dst>.+)#(?P<seq>\d+)/(?P<kind>\w+)$")


def iso(ts: float | None) -> str | None:
    """UNIX seconds as ISO 8601 in UTC (None for None or 0)."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat() if ts else None


def short_name(name: str) -> str:
    """``order.<locals>.settle.<locals>.ship`` reads better as ``ship``."""
    return name.rsplit("<locals>.", 1)[-1]


class StoreRows:
    """What a store holds of one session at one role (all empty in default mode).

    Args:
        journal: its journal entries.
        txlog: its transaction records.
        inbox: the envelopes it received.
        outbox: the envelopes it sent (rows or bare envelopes).
    """

    def __init__(
        self,
        journal: Iterable[JournalEntry] = (),
        txlog: Iterable[TxRecord] = (),
        inbox: Iterable[Envelope] = (),
        outbox: Iterable[OutboxRow | Envelope] = (),
    ) -> None:
        self.journal = {j.step: j for j in journal}
        self.txlog = sorted({t.key: t for t in txlog}.values(), key=lambda t: (t.step, t.key))  # the last row wins
        self.received = {(e.src, e.seq): e for e in inbox if e.kind in MESSAGE_KINDS}
        sent = [r.envelope if isinstance(r, OutboxRow) else r for r in outbox]
        self.sent = {(e.dst, e.seq): e for e in sent if e.kind in MESSAGE_KINDS}

    def tx_at(self, step: int) -> TxRecord | None:
        """The transaction record of step ``step``, if any."""
        return next((t for t in self.txlog if t.step == step), None)


def _clock(envelope: Envelope | None) -> int | None:
    stamp = envelope.headers.get(CLOCK_HEADER, "") if envelope is not None else ""
    return int(stamp) if stamp.isdigit() else None


def _blank(index: int | None, kind: str, name: str, source: str) -> dict[str, Any]:
    return {
        "index": index,
        "kind": kind,
        "name": name,
        "peer": None,
        "seq": None,
        "message": None,
        "started_at": None,
        "ended_at": None,
        "duration_ms": None,
        "attempts": None,
        "transaction": None,
        "value": None,
        "error": None,
        "state": "done",
        "clock": None,
        "source": source,
    }


def _message_name(src: str | None, dst: str | None, seq: int | None) -> str:
    return f"{src}->{dst} #{seq}"


def _from_memory(entries: list[Sealed], clock: float) -> dict[str, Any]:
    """One step from its trail entries (a receive that parked and resumed has two)."""
    index, kind, name, src, dst, seq, message, _, ended, value, summed, attempts, how, why = entries[-1]
    out = _blank(index, KINDS.get(StepKind(kind), kind), short_name(name), "memory")
    if kind == StepKind.SEND:
        out.update(peer=dst, seq=seq, message=message, name=_message_name(src, dst, seq))
    elif kind == StepKind.RECV:
        out.update(peer=src, seq=seq, message=message, name=_message_name(src, dst, seq))
    first = entries[0][7]
    out.update(started_at=iso(first + clock), ended_at=iso(ended + clock), duration_ms=round((ended - first) * 1e3, 3))
    if kind == StepKind.TX:
        out["attempts"] = attempts or None
    if any(e[12] == "parked" for e in entries[:-1]):
        out["parked"] = True
    if how is None and summed and _TYPE_ONLY.match(str(value)):
        out["_typed"] = value  # only its type was kept: the store's copy, if any, says more
    elif how is None:
        out["value"] = value if summed else summarize(value)
    else:
        out.update(state=how, error=why or None)
    return out


def _from_journal(entry: JournalEntry, codec: PayloadCodec | None) -> dict[str, Any]:
    try:
        kind = KINDS[StepKind(entry.kind)]
    except (ValueError, KeyError):
        kind = entry.kind
    out = _blank(entry.step, kind, short_name(entry.name), "journal")
    found = _MESSAGE.match(entry.name) if kind in ("send", "receive") else None
    if found is not None:
        src, dst, seq = found["src"], found["dst"], int(found["seq"])
        out.update(peer=dst if kind == "send" else src, seq=seq, message=found["kind"], name=f"{src}->{dst} #{seq}")
    elif kind == "transaction" and entry.value is not None:  # a failed commit's record
        try:
            failed = (codec or PayloadCodec()).decode(entry.value)
            out.update(state="failed", error=str(failed.get("failed", "the commit failed")))
        except Exception:
            out.update(state="failed", error="the commit failed")
    elif entry.value is not None:
        out["value"] = summarize_bytes(entry.value, codec)
    return out


def _enrich(out: dict[str, Any], rows: StoreRows, codec: PayloadCodec | None, undone: set[int]) -> None:
    """Add what the store knows of a step: its message's clock and value, its commit's status."""
    kind, index = out["kind"], out["index"]
    if kind in ("send", "receive") and out["seq"] is not None:
        envelope = (rows.sent if kind == "send" else rows.received).get((out["peer"], out["seq"]))
        out["clock"] = _clock(envelope)
        if out["value"] is None and envelope is not None and out["state"] == "done":
            out["value"] = summarize_bytes(envelope.payload, codec)
    elif kind == "transaction":
        record = rows.tx_at(index)
        if record is not None:
            out["transaction"] = record.status
            if out["value"] is None and record.result is not None:
                out["value"] = summarize_bytes(record.result, codec)
            if out["ended_at"] is None and record.status != "compensated":
                out["ended_at"] = iso(record.updated_at)
        elif out["state"] == "done":
            out["transaction"] = "compensated" if index in undone else "committed"
        elif out["state"] == "failed":
            out["transaction"] = "failed"
        if index in undone and out["transaction"] in ("committed", "uncertain", "pending"):
            out["transaction"] = "compensated"


def _compensations(trail: TrailView | None, rows: StoreRows, clock: float, codec: PayloadCodec | None) -> list[Any]:
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for name, key, step, began, ended, attempts in trail.undone if trail is not None else ():
        entry = _blank(None, "compensation", name, "memory")
        entry.update(
            started_at=iso(began + clock),
            ended_at=iso(ended + clock),
            duration_ms=round((ended - began) * 1e3, 3),
            attempts=attempts,
            transaction="compensated",
            compensates=step,
        )
        out.append(entry)
        seen.add(key)
    for record in sorted(rows.txlog, key=lambda t: t.updated_at):
        if record.status == "compensated" and record.key not in seen:
            entry = _blank(None, "compensation", record.name, "store")
            entry.update(ended_at=iso(record.updated_at), transaction="compensated", compensates=record.step)
            out.append(entry)
    return out


def _waiting(
    record: SessionRecord, status: str, doing: tuple[Step, float] | None, initiator: str | None, clock: float
) -> Any:
    """Where this role waits now, in words and (for a receive) by peer and seq."""
    here: dict[str, Any] = {"peer": None, "seq": None, "since": None}
    if status == S.RUNNING and doing is not None:
        current = doing[0]
        here["since"] = iso(doing[1] + clock)
        if current.kind is StepKind.RECV:
            here.update(peer=current.src, seq=current.seq, text=f"waiting for #{current.seq} from '{current.src}'")
        else:
            here["text"] = f"running {KINDS.get(current.kind, str(current.kind))} {short_name(current.name)}"
        return here
    texts = {
        S.PARKED: f"parked: {record.error or 'waiting for an envelope'}",
        S.FINISHED: "waiting for the other roles to finish"
        if initiator in (None, record.role)
        else f"waiting for the outcome from '{initiator}'",
        S.COMPENSATING: "compensating (or waiting for its turn to)",
        S.DIVERGED: "diverged: waiting for an operator to resume or cancel it",
        "blocked": f"blocked: {record.error or 'its version is not deployed here'}",
    }
    text = texts.get(status)
    if text is None:
        return None
    here["text"] = text
    here["since"] = iso(record.updated_at)
    return here


def role_steps(
    record: SessionRecord,
    *,
    status: str | None = None,
    trail: TrailView | None = None,
    doing: tuple[Step, float] | None = None,
    rows: StoreRows | None = None,
    codec: PayloadCodec | None = None,
    roles: Sequence[str] | None = None,
    initiator: str | None = None,
) -> dict[str, Any]:
    """The steps answer for one session at one role.

    Args:
        record: the session's record at this role.
        status: its status as the API shows it (``blocked`` overrides the record's).
        trail: the live steps this process ran (None: none kept).
        doing: the live step running now and when it began (``perf_counter``), if one is.
        rows: what the store holds of it (fault-tolerant mode, or a post-mortem).
        codec: the choreography's codec, to summarize stored values (None: lenient decoding).
        roles: the choreography's roles in order, when known.
        initiator: the role that decides the outcome, when known.
    """
    rows = rows or StoreRows()
    status = status or record.status
    clock = time.time() - time.perf_counter()  # perf_counter readings -> UNIX seconds
    by_index: dict[int, list[Sealed]] = {}
    for plain in trail.sealed(summarize) if trail is not None else ():
        by_index.setdefault(plain[0], []).append(plain)
    undone = {u[2] for u in trail.undone} if trail is not None else set()
    undone |= {t.step for t in rows.txlog if t.status == "compensated"}
    steps: list[dict[str, Any]] = []
    for index in sorted(set(by_index) | set(rows.journal)):
        entries = by_index.get(index)
        if entries is not None:
            out = _from_memory(entries, clock)
            journaled = rows.journal.get(index)
            local = out["kind"] in (
                "local",
                "now",
                "uuid",
                "random",
                "sleep",
                "deadline",
            )  # a commit's journal value is its failure
            if local and out["value"] is None and journaled is not None and journaled.value is not None:
                out["value"] = summarize_bytes(journaled.value, codec)
        else:
            out = _from_journal(rows.journal[index], codec)
        _enrich(out, rows, codec, undone)
        typed = out.pop("_typed", None)
        if out["value"] is None and typed is not None:
            out["value"] = typed
        steps.append(out)
    steps += _compensations(trail, rows, clock, codec)
    failure = Failure.decode(record.failure).to_json() if record.failure else None
    sources = (["memory"] if trail is not None else []) + (["store"] if rows.journal or rows.txlog else [])
    return {
        "session_id": record.session_id,
        "role": record.role,
        "choreography": record.choreography,
        "version": record.version,
        "status": status,
        "roles": list(roles) if roles is not None else None,
        "initiator": initiator,
        "steps": steps,
        "waiting": _waiting(record, status, doing, initiator, clock),
        "failure": failure,
        "sources": sources,
    }
