"""``MemoryStore``: the store contract in process memory, without durability.

Used by tests and by default mode's session table. It keeps the same semantics as the SQL
stores (duplicate inserts ignored, whole-row upserts, all-or-nothing batches, the same
validation and orderings) so that code tested against it behaves the same on SQLite or
PostgreSQL. Records are copied in and out, so a caller mutating a ``SessionRecord`` after
committing it cannot change what is stored.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator, Callable
from functools import partial

import msgspec

from accompanist.envelope import Envelope
from accompanist.errors import StoreError
from accompanist.store.base import (
    TERMINAL_STATUSES,
    AtomicScope,
    JournalEntry,
    OutboxRow,
    SessionRecord,
    StoreCounts,
    TxRecord,
    WriteBatch,
)
from accompanist.store.group_commit import GroupCommitStats
from accompanist.store.validation import validate_batch

__all__ = ["MemoryStore"]

_Key = tuple[str, str, str, int]
_Undo = list[Callable[[], object]]


class _Out:
    __slots__ = ("acked", "envelope", "order")

    def __init__(self, envelope: Envelope, order: int) -> None:
        self.envelope = envelope
        self.acked = False
        self.order = order


class MemoryStore:
    """A :class:`~accompanist.store.base.Store` held in dictionaries.

    Args:
        role: the role this store belongs to (kept for parity with the durable stores).
    """

    def __init__(self, role: str = "memory") -> None:
        self.role = role
        self._open = False
        self._sessions: dict[str, SessionRecord] = {}
        self._inbox: dict[str, dict[_Key, Envelope]] = {}
        self._outbox: dict[str, dict[_Key, _Out]] = {}
        self._unacked: dict[_Key, _Out] = {}
        self._unacked_to: dict[str, dict[_Key, _Out]] = {}  # the same rows, by destination
        self._order = itertools.count()  # outbox insertion order, i.e. oldest first
        self._journal: dict[str, dict[int, JournalEntry]] = {}
        self._txlog: dict[str, TxRecord] = {}
        self._commits = 0  # every batch is its own transaction here
        self._failed = 0

    @property
    def commit_stats(self) -> GroupCommitStats:
        """Counters; every batch is its own transaction here."""
        n = self._commits
        return GroupCommitStats(n, n, self._failed, 0, 1 if n else 0)

    async def open(self) -> None:
        """Mark the store usable (there is nothing to create)."""
        self._open = True

    async def close(self) -> None:
        """Mark the store closed; the data stays in this object until it is dropped."""
        self._open = False

    def _check_open(self) -> None:
        if not self._open:
            raise StoreError(f"memory store of role '{self.role}' is not open")

    @contextlib.asynccontextmanager
    async def atomic(self) -> AsyncIterator[AtomicScope]:
        """An atomic scope without a database: ``scope.batch`` commits when it ends well."""
        self._check_open()
        scope = AtomicScope(None)
        yield scope
        await self.commit(scope.batch)

    async def commit(self, batch: WriteBatch) -> None:
        """Apply ``batch`` all or nothing.

        Raises:
            StoreError: the store is not open, or the batch is invalid (nothing written).
        """
        self._check_open()
        if not (isinstance(batch, WriteBatch) and batch.trusted):
            validate_batch(batch, store=f"memory store '{self.role}'")
        undo: _Undo = []
        try:
            self._write_sessions(undo, batch.sessions)
            self._write_inbox(undo, batch.inbox)
            self._write_outbox(undo, batch.outbox)
            self._write_acks(undo, batch.acks)
            self._write_journal(undo, batch.journal)
            self._write_txlog(undo, batch.txlog)
        except BaseException as exc:
            for step in reversed(undo):
                step()
            self._commits += 1
            self._failed += 1
            if isinstance(exc, StoreError) or not isinstance(exc, Exception):
                raise
            raise StoreError(f"memory store '{self.role}': commit failed: {exc!r}") from exc
        self._commits += 1

    # Each writer records how to undo what it did, so a failure leaves nothing behind.

    def _write_sessions(self, undo: _Undo, rows: list[SessionRecord]) -> None:
        for rec in rows:
            old = self._sessions.get(rec.session_id)
            self._sessions[rec.session_id] = msgspec.structs.replace(rec)
            if old is None:
                undo.append(partial(self._sessions.pop, rec.session_id, None))
            else:
                undo.append(partial(self._sessions.__setitem__, rec.session_id, old))

    def _write_inbox(self, undo: _Undo, rows: list[Envelope]) -> None:
        for env in rows:
            per = self._inbox.setdefault(env.session_id, {})
            if env.key not in per:
                per[env.key] = env
                undo.append(partial(per.pop, env.key, None))

    def _write_outbox(self, undo: _Undo, rows: list[Envelope]) -> None:
        for env in rows:
            per = self._outbox.setdefault(env.session_id, {})
            if env.key not in per:
                row = _Out(env, next(self._order))
                per[env.key] = row
                self._pend(env.key, row)
                undo.append(partial(self._drop_out, per, env.key))

    def _pend(self, key: _Key, row: _Out) -> None:
        self._unacked[key] = row
        self._unacked_to.setdefault(key[2], {})[key] = row

    def _unpend(self, key: _Key) -> None:
        self._unacked.pop(key, None)
        self._unacked_to.get(key[2], {}).pop(key, None)

    def _drop_out(self, per: dict[_Key, _Out], key: _Key) -> None:
        per.pop(key, None)
        self._unpend(key)

    def _write_acks(self, undo: _Undo, acks: list[tuple[str, str, int]]) -> None:
        for session_id, dst, seq in acks:  # an outbox row's src is the store's own role
            key = (session_id, self.role, dst, seq)
            row = self._outbox.get(session_id, {}).get(key)
            if row is not None and not row.acked:
                row.acked = True
                self._unpend(key)
                undo.append(partial(self._unack, row, key))

    def _unack(self, row: _Out, key: _Key) -> None:
        row.acked = False
        self._pend(key, row)

    def _write_journal(self, undo: _Undo, rows: list[JournalEntry]) -> None:
        for entry in rows:
            jper = self._journal.setdefault(entry.session_id, {})
            if entry.step not in jper:
                jper[entry.step] = entry
                undo.append(partial(jper.pop, entry.step, None))

    def _write_txlog(self, undo: _Undo, rows: list[TxRecord]) -> None:
        for rec in rows:
            old = self._txlog.get(rec.key)
            self._txlog[rec.key] = msgspec.structs.replace(rec)
            if old is None:
                undo.append(partial(self._txlog.pop, rec.key, None))
            else:
                undo.append(partial(self._txlog.__setitem__, rec.key, old))

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """The session, or None."""
        self._check_open()
        rec = self._sessions.get(session_id)
        return None if rec is None else msgspec.structs.replace(rec)

    async def list_sessions(self, status: str | None = None, limit: int = 1000) -> list[SessionRecord]:
        """Sessions, newest first (by ``created_at``, then ``session_id``)."""
        self._check_open()
        recs = [r for r in self._sessions.values() if status is None or r.status == status]
        recs.sort(key=lambda r: (r.created_at, r.session_id), reverse=True)
        return [msgspec.structs.replace(r) for r in recs[: max(limit, 0)]]

    async def nonterminal_sessions(self) -> list[SessionRecord]:
        """Every session not in a terminal status, oldest first."""
        self._check_open()
        recs = [r for r in self._sessions.values() if r.status not in TERMINAL_STATUSES]
        recs.sort(key=lambda r: (r.created_at, r.session_id))
        return [msgspec.structs.replace(r) for r in recs]

    async def inbox_load(self, session_id: str) -> list[Envelope]:
        """The session's inbox ordered by (src, seq), then dst so the order is total."""
        self._check_open()
        return sorted(self._inbox.get(session_id, {}).values(), key=lambda e: (e.src, e.seq, e.dst))

    async def outbox_load(self, session_id: str) -> list[OutboxRow]:
        """The session's outbox rows in insertion order."""
        self._check_open()
        return [OutboxRow(r.envelope, r.acked) for r in self._outbox.get(session_id, {}).values()]

    async def outbox_pending(self, limit: int = 1000, dst: str | None = None) -> list[Envelope]:
        """Unacknowledged outbox envelopes of every session (or only to ``dst``), oldest first."""
        self._check_open()
        rows = self._unacked.values() if dst is None else self._unacked_to.get(dst, {}).values()
        oldest = heapq.nsmallest(max(limit, 0), rows, key=lambda r: r.order)
        return [r.envelope for r in oldest]

    async def journal_load(self, session_id: str) -> list[JournalEntry]:
        """The session's journal in step order."""
        self._check_open()
        per = self._journal.get(session_id, {})
        return [per[k] for k in sorted(per)]

    async def txlog_load(self, session_id: str) -> list[TxRecord]:
        """The session's transaction records in step order (then key)."""
        self._check_open()
        recs = [r for r in self._txlog.values() if r.session_id == session_id]
        recs.sort(key=lambda r: (r.step, r.key))
        return [msgspec.structs.replace(r) for r in recs]

    async def prune(self, before: float, tombstones_before: float | None = None) -> int:
        """Delete terminal sessions' rows (see :meth:`Store.prune`); returns rows deleted.

        A session with an unacknowledged outbox row keeps every row, however old.
        """
        self._check_open()
        cutoff = before if tombstones_before is None else max(before, tombstones_before)
        deleted = 0
        gone = {
            r.session_id
            for r in self._sessions.values()
            if r.status in TERMINAL_STATUSES and r.updated_at < cutoff and not self._has_unacked(r.session_id)
        }
        for sid in gone:
            deleted += len(self._inbox.pop(sid, {}))
            deleted += len(self._outbox.pop(sid, {}))  # all acknowledged: none is in _unacked
            deleted += len(self._journal.pop(sid, {}))
            if tombstones_before is not None and self._sessions[sid].updated_at < tombstones_before:
                del self._sessions[sid]
                deleted += 1
        tx_keys = [k for k, r in self._txlog.items() if r.session_id in gone]
        for tx_key in tx_keys:
            del self._txlog[tx_key]
        return deleted + len(tx_keys)

    def _has_unacked(self, session_id: str) -> bool:
        return any(not row.acked for row in self._outbox.get(session_id, {}).values())

    async def trim(self, keep: int) -> int:
        """Forget the oldest ended sessions beyond ``keep`` (with all their rows, unless a row is
        unacknowledged); returns how many sessions went. Bounds default mode's memory."""
        self._check_open()
        ended = [r for r in self._sessions.values() if r.status in TERMINAL_STATUSES]
        if len(ended) <= keep:
            return 0
        ended.sort(key=lambda r: r.updated_at)
        gone = [r.session_id for r in ended[: len(ended) - keep] if not self._has_unacked(r.session_id)]
        for sid in gone:
            del self._sessions[sid]
            self._inbox.pop(sid, None)
            self._outbox.pop(sid, None)
            self._journal.pop(sid, None)
        for key in [k for k, r in self._txlog.items() if r.session_id in set(gone)]:
            del self._txlog[key]
        return len(gone)

    async def counts(self) -> StoreCounts:
        """Row counts."""
        self._check_open()
        return StoreCounts(
            sessions=len(self._sessions),
            inbox=sum(len(p) for p in self._inbox.values()),
            outbox=sum(len(p) for p in self._outbox.values()),
            outbox_unacked=len(self._unacked),
            journal=sum(len(p) for p in self._journal.values()),
            txlog=len(self._txlog),
        )

    def session_count(self) -> int:
        """How many sessions it holds (ended ones included)."""
        return len(self._sessions)

    def __repr__(self) -> str:
        return f"MemoryStore(role={self.role!r}, sessions={len(self._sessions)})"
