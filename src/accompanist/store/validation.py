"""Checks a :class:`WriteBatch` before it joins a group transaction.

Why up front: a group transaction carries many callers' batches, so one bad row that the
database rejects would fail every caller in the group. Rejecting it here fails only the caller
that wrote it, with a message naming the field, and the database never sees it. The rules are
the intersection of what SQLite and PostgreSQL accept (PostgreSQL text cannot hold NUL, SQLite
cannot encode lone surrogates, both cap integers at 64 bits), so every store behaves the same.
"""

from __future__ import annotations

import math
from typing import Any

from accompanist.envelope import Envelope
from accompanist.errors import StoreInputError
from accompanist.store.base import TX_STATUSES, JournalEntry, SessionRecord, SessionStatus, TxRecord, WriteBatch

__all__ = ["INT64_MAX", "INT64_MIN", "SESSION_STATUSES", "envelope_problem", "validate_batch"]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
SESSION_STATUSES = frozenset(s.value for s in SessionStatus)


class _InvalidError(Exception):
    pass


def _text(value: Any, where: str, *, nonempty: bool = False) -> None:
    if not isinstance(value, str):
        raise _InvalidError(f"{where} must be a str, got {type(value).__name__}")
    if nonempty and not value:
        raise _InvalidError(f"{where} must not be empty")
    if "\x00" in value:
        raise _InvalidError(f"{where} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _InvalidError(f"{where} is not valid Unicode text ({exc.reason})") from None


def _opt_text(value: Any, where: str) -> None:
    if value is not None:
        _text(value, where)


def _int(value: Any, where: str) -> None:
    if type(value) is not int:
        raise _InvalidError(f"{where} must be an int, got {type(value).__name__}")
    if not INT64_MIN <= value <= INT64_MAX:
        raise _InvalidError(f"{where} must fit in 64 bits, got {value}")


def _time(value: Any, where: str) -> None:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise _InvalidError(f"{where} must be a finite number of seconds, got {value!r}")


def _blob(value: Any, where: str, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, bytes):
        raise _InvalidError(f"{where} must be bytes, got {type(value).__name__}")


def _session(rec: Any, where: str) -> None:
    if not isinstance(rec, SessionRecord):
        raise _InvalidError(f"{where} must be a SessionRecord, got {type(rec).__name__}")
    _text(rec.session_id, f"{where}.session_id", nonempty=True)
    _text(rec.choreography, f"{where}.choreography")
    _int(rec.version, f"{where}.version")
    _text(rec.role, f"{where}.role")
    if not isinstance(rec.status, str) or rec.status not in SESSION_STATUSES:
        raise _InvalidError(f"{where}.status must be one of {sorted(SESSION_STATUSES)}, got {rec.status!r}")
    _blob(rec.args, f"{where}.args")
    _blob(rec.result, f"{where}.result", optional=True)
    _opt_text(rec.error, f"{where}.error")
    _int(rec.attempts, f"{where}.attempts")
    _time(rec.created_at, f"{where}.created_at")
    _time(rec.updated_at, f"{where}.updated_at")
    _blob(rec.failure, f"{where}.failure", optional=True)
    _blob(rec.seed, f"{where}.seed")
    _blob(rec.state, f"{where}.state", optional=True)


def _envelope(env: Any, where: str) -> None:
    if not isinstance(env, Envelope):
        raise _InvalidError(f"{where} must be an Envelope, got {type(env).__name__}")
    _text(env.session_id, f"{where}.session_id")
    _text(env.choreography, f"{where}.choreography")
    _int(env.version, f"{where}.version")
    _text(env.src, f"{where}.src")
    _text(env.dst, f"{where}.dst")
    _int(env.seq, f"{where}.seq")
    _text(env.kind, f"{where}.kind")
    _blob(env.payload, f"{where}.payload")
    if not isinstance(env.headers, dict):
        raise _InvalidError(f"{where}.headers must be a dict, got {type(env.headers).__name__}")
    for name, value in env.headers.items():
        _text(name, f"{where}.headers key")
        _text(value, f"{where}.headers[{name!r}]")
    _text(env.auth, f"{where}.auth")


def _ack(ack: Any, where: str) -> None:
    if not isinstance(ack, tuple) or len(ack) != 3:
        raise _InvalidError(f"{where} must be a (session_id, dst, seq) tuple, got {ack!r}")
    _text(ack[0], f"{where}[0] (session_id)")
    _text(ack[1], f"{where}[1] (dst)")
    _int(ack[2], f"{where}[2] (seq)")


def _journal(entry: Any, where: str) -> None:
    if not isinstance(entry, JournalEntry):
        raise _InvalidError(f"{where} must be a JournalEntry, got {type(entry).__name__}")
    _text(entry.session_id, f"{where}.session_id", nonempty=True)
    _int(entry.step, f"{where}.step")
    _text(entry.kind, f"{where}.kind")
    _text(entry.name, f"{where}.name")
    _blob(entry.value, f"{where}.value", optional=True)


def _tx(rec: Any, where: str) -> None:
    if not isinstance(rec, TxRecord):
        raise _InvalidError(f"{where} must be a TxRecord, got {type(rec).__name__}")
    _text(rec.session_id, f"{where}.session_id", nonempty=True)
    _text(rec.key, f"{where}.key", nonempty=True)
    _text(rec.name, f"{where}.name")
    _int(rec.step, f"{where}.step")
    if not isinstance(rec.status, str) or rec.status not in TX_STATUSES:
        raise _InvalidError(f"{where}.status must be one of {sorted(TX_STATUSES)}, got {rec.status!r}")
    _blob(rec.result, f"{where}.result", optional=True)
    _time(rec.updated_at, f"{where}.updated_at")
    _blob(rec.args, f"{where}.args", optional=True)
    _int(rec.clock, f"{where}.clock")


def envelope_problem(envelope: Envelope) -> str | None:
    """Why ``envelope`` could not be stored (a field no database can hold), or None.

    The engine checks every envelope from a peer with this where it arrives, so that the
    batches it builds from them need no second check at commit time (see
    ``WriteBatch.trusted``).
    """
    e = envelope
    if (
        isinstance(e, Envelope)
        and type(e.seq) is int
        and type(e.version) is int
        and INT64_MIN <= e.seq <= INT64_MAX
        and INT64_MIN <= e.version <= INT64_MAX
        and type(e.payload) is bytes
        and type(e.headers) is dict
    ):
        try:  # every text field at once (a non-str among them falls through to the full check)
            text = "".join(
                (e.session_id, e.choreography, e.src, e.dst, e.kind, e.auth, *e.headers, *e.headers.values())
            )
        except TypeError:
            text = "\x00"
        if "\x00" not in text and (text.isascii() or _encodable(text)):
            return None
    try:
        _envelope(envelope, "envelope")
    except _InvalidError as exc:
        return str(exc)
    return None  # pragma: no cover - the quick check above passes whatever this one passes


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def validate_batch(batch: WriteBatch, *, store: str = "store") -> None:
    """Check every row of ``batch``; nothing is written when this raises.

    Args:
        batch: the writes to check.
        store: names the store in the error message.

    Raises:
        StoreInputError: a row has a wrong type, an out-of-range integer, text a database
            cannot hold, or an unknown session or transaction status; the message names the
            row and field.
    """
    if not isinstance(batch, WriteBatch):
        raise StoreInputError(f"{store}: commit() needs a WriteBatch, got {type(batch).__name__}")
    try:
        for i, rec in enumerate(batch.sessions):
            _session(rec, f"sessions[{i}]")
        for i, env in enumerate(batch.inbox):
            _envelope(env, f"inbox[{i}]")
        for i, env in enumerate(batch.outbox):
            _envelope(env, f"outbox[{i}]")
        for i, ack in enumerate(batch.acks):
            _ack(ack, f"acks[{i}]")
        for i, entry in enumerate(batch.journal):
            _journal(entry, f"journal[{i}]")
        for i, tx in enumerate(batch.txlog):
            _tx(tx, f"txlog[{i}]")
    except _InvalidError as exc:
        raise StoreInputError(f"{store}: invalid write batch, nothing written: {exc}") from None
