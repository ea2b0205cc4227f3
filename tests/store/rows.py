"""Row builders shared by the store tests: small valid records, overridable field by field."""

from __future__ import annotations

from typing import Any

from accompanist.envelope import Envelope, EnvelopeKind
from accompanist.store.base import JournalEntry, SessionRecord, SessionStatus, TxRecord, WriteBatch


def env(sid: str = "s1", src: str = "wh", dst: str = "pay", seq: int = 1, **kw: Any) -> Envelope:
    fields: dict[str, Any] = {"choreography": "order", "version": 1, "kind": EnvelopeKind.VALUE, "payload": b"p"}
    fields.update(kw)
    return Envelope(session_id=sid, src=src, dst=dst, seq=seq, **fields)


def session(sid: str = "s1", status: str = SessionStatus.RUNNING, **kw: Any) -> SessionRecord:
    fields: dict[str, Any] = {"choreography": "order", "version": 1, "role": "wh", "created_at": 100.0}
    fields.update(kw)
    return SessionRecord(session_id=sid, status=status, **fields)


def journal(sid: str = "s1", step: int = 0, value: bytes | None = b"v", **kw: Any) -> JournalEntry:
    fields: dict[str, Any] = {"kind": "locally", "name": "price"}
    fields.update(kw)
    return JournalEntry(session_id=sid, step=step, value=value, **fields)


def tx(sid: str = "s1", name: str = "reserve", step: int = 1, status: str = "committed", **kw: Any) -> TxRecord:
    return TxRecord(session_id=sid, key=f"{sid}/wh/{name}/0", name=name, step=step, status=status, **kw)


def full_batch(sid: str) -> WriteBatch:
    """One row of every kind for ``sid``; its outbox row (to 'pay', seq 1) is unacknowledged."""
    return WriteBatch(
        sessions=[session(sid)],
        inbox=[env(sid, "pay", "wh", 1)],
        outbox=[env(sid)],
        journal=[journal(sid)],
        txlog=[tx(sid)],
    )
