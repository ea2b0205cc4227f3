"""The ``Store`` protocol: durable sessions, inbox, outbox, journal and transaction log.

The session engine talks to a store only through this protocol. Every write goes through
:meth:`Store.commit` as a :class:`WriteBatch`; implementations merge concurrent batches into
one transaction (group commit), so many sessions share one fsync under load.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from accompanist.envelope import Envelope

__all__ = [
    "AtomicScope",
    "JournalEntry",
    "OutboxRow",
    "SessionRecord",
    "SessionStatus",
    "Store",
    "StoreCounts",
    "TxRecord",
    "WriteBatch",
    "TERMINAL_STATUSES",
    "TX_STATUSES",
]


class SessionStatus(enum.StrEnum):
    """Lifecycle of one session at one role."""

    RUNNING = "running"
    PARKED = "parked"  # waiting for an envelope after a receive timeout (fault-tolerant mode)
    FINISHED = "finished"  # this role's part is done; a saga may still compensate
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    FAILED = "failed"
    COMPENSATED = "compensated"
    DIVERGED = "diverged"  # a replay disagreed with the journal; waits for an operator
    CANCELLED = "cancelled"


# Not DIVERGED: a diverged session waits for an operator to cancel or resume it, so it is
# replayed after a restart and never pruned.
TERMINAL_STATUSES = frozenset(
    {
        SessionStatus.COMPLETED,
        SessionStatus.FAILED,
        SessionStatus.COMPENSATED,
        SessionStatus.CANCELLED,
    }
)

TX_STATUSES = frozenset({"pending", "committed", "uncertain", "failed", "compensated"})
"""What a :class:`TxRecord` may say of its commit: it is about to be called (its intent, durable
before the service hears of it); it took effect; retries ran out, so it may have taken effect;
it was declined (nothing to undo); it was undone."""


class SessionRecord(msgspec.Struct, kw_only=True):
    """One session at one role.

    ``args`` and ``result`` hold codec bytes; ``error`` is a human-readable reason.
    Times are UNIX seconds (float). ``failure``, ``seed`` and ``state`` belong to the engine
    and are opaque to the store: the JSON of a structured failure, the random bytes drawn when
    the record was first created (replay-stable uuids derive from them), and the JSON of the
    engine's protocol bookkeeping.
    """

    session_id: str
    choreography: str
    version: int
    role: str
    status: str
    args: bytes = b""
    result: bytes | None = None
    error: str | None = None
    attempts: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    failure: bytes | None = None
    seed: bytes = b""
    state: bytes | None = None


class JournalEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One step of a session at this role, in step-index order.

    ``value`` holds codec bytes of a local step's result (None when not journaled, e.g. for
    message steps or when the value could not be encoded).
    """

    session_id: str
    step: int
    kind: str
    name: str
    value: bytes | None = None


class TxRecord(msgspec.Struct, kw_only=True):
    """A saga transaction's commit or compensation, keyed by its idempotency key.

    ``status`` is one of :data:`TX_STATUSES`. ``args`` holds codec bytes of the commit's
    arguments, so a compensation can run from the log alone; ``clock`` is the commit's Lamport
    timestamp, so compensations can run in reverse causal order.
    """

    session_id: str
    key: str  # session_id/role/name/occurrence
    name: str
    step: int
    status: str
    result: bytes | None = None
    updated_at: float = 0.0
    args: bytes | None = None
    clock: int = 0


class OutboxRow(msgspec.Struct, frozen=True):
    """An outgoing envelope and whether the peer acknowledged it."""

    envelope: Envelope
    acked: bool


@dataclass
class WriteBatch:
    """Writes that must become durable together (one transaction).

    Applied in this order: sessions (upsert the whole row), inbox (insert, ignore duplicates),
    outbox (insert, ignore duplicates), acks (mark outbox rows acknowledged, keyed by
    ``(session_id, dst, seq)``), journal (insert, ignore duplicates by
    ``(session_id, step)``), txlog (upsert by key).
    """

    sessions: list[SessionRecord] = field(default_factory=list)
    inbox: list[Envelope] = field(default_factory=list)
    outbox: list[Envelope] = field(default_factory=list)
    acks: list[tuple[str, str, int]] = field(default_factory=list)
    journal: list[JournalEntry] = field(default_factory=list)
    txlog: list[TxRecord] = field(default_factory=list)
    #: Set by the engine for the batches it builds itself, from inputs it checked where they
    #: entered (peer envelopes, API calls, error texts made storable): the store skips its row
    #: validation then, which costs more than the rest of preparing a commit. Anything else
    #: leaves it False and is checked row by row.
    trusted: bool = False

    def __bool__(self) -> bool:
        return bool(self.sessions or self.inbox or self.outbox or self.acks or self.journal or self.txlog)

    def extend(self, other: WriteBatch) -> None:
        """Append ``other``'s writes after this batch's (trusted only if both were)."""
        self.trusted = self.trusted and other.trusted
        self.sessions.extend(other.sessions)
        self.inbox.extend(other.inbox)
        self.outbox.extend(other.outbox)
        self.acks.extend(other.acks)
        self.journal.extend(other.journal)
        self.txlog.extend(other.txlog)


@dataclass
class AtomicScope:
    """An open store transaction lent to a saga transaction (``atomic=True``).

    The service writes through ``connection``; the runtime adds its rows (the transaction log
    entry, journal) to ``batch``; both commit together when the scope ends without an error,
    and both roll back otherwise.

    Attributes:
        connection: an :class:`AtomicConnection` on the store's database (None for the memory
            store, which has no database to share).
        batch: the runtime's writes, committed in the same transaction.
    """

    connection: Any
    batch: WriteBatch = field(default_factory=WriteBatch)


@dataclass(frozen=True)
class StoreCounts:
    """Row counts, for metrics, retention checks and tests."""

    sessions: int
    inbox: int
    outbox: int
    outbox_unacked: int
    journal: int
    txlog: int


class Store(Protocol):
    """Durable state of one sidecar (one role)."""

    async def open(self) -> None:
        """Open the store, creating or migrating the schema.

        Raises:
            StoreCorruptError: the file or schema is damaged, or belongs to another role.
            StoreError: the store cannot be reached.
        """

    async def close(self) -> None:
        """Flush pending writes and close."""

    async def commit(self, batch: WriteBatch) -> None:
        """Make ``batch`` durable (all or nothing); concurrent calls may share a transaction."""

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """The session, or None."""

    async def list_sessions(self, status: str | None = None, limit: int = 1000) -> list[SessionRecord]:
        """Sessions (newest first), optionally only those with ``status``."""

    async def nonterminal_sessions(self) -> list[SessionRecord]:
        """Every session whose status is not terminal (to replay after a restart)."""

    async def inbox_load(self, session_id: str) -> list[Envelope]:
        """Every inbox envelope of the session, ordered by (src, seq)."""

    async def outbox_load(self, session_id: str) -> list[OutboxRow]:
        """Every outbox row of the session."""

    async def outbox_pending(self, limit: int = 1000, dst: str | None = None) -> list[Envelope]:
        """Unacknowledged outbox envelopes of every session (or only those to ``dst``),
        oldest first; the cost follows the rows returned, not the backlog."""

    async def journal_load(self, session_id: str) -> list[JournalEntry]:
        """The session's journal in step order."""

    async def txlog_load(self, session_id: str) -> list[TxRecord]:
        """The session's transaction records, in step order."""

    async def prune(self, before: float, tombstones_before: float | None = None) -> int:
        """Delete inbox/outbox/journal/txlog rows of terminal sessions last updated before
        ``before``; delete the session rows themselves if updated before
        ``tombstones_before``. A session with an unacknowledged outbox row keeps every row,
        however old, so a peer that was down longer than the retention still gets it.
        Returns the number of rows deleted."""

    async def counts(self) -> StoreCounts:
        """Row counts."""
