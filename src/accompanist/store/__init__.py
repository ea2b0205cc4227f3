"""Durable state of a sidecar: sessions, inbox, outbox, journal and transaction log.

``Store`` is the protocol the engine talks to; ``MemoryStore``, ``SQLiteStore`` and
``PostgresStore`` (in :mod:`accompanist.store.postgres`, needs the ``postgres`` extra)
implement it, and :func:`open_store` picks one from a URL.
"""

from accompanist.store.base import (
    TERMINAL_STATUSES,
    TX_STATUSES,
    JournalEntry,
    OutboxRow,
    SessionRecord,
    SessionStatus,
    Store,
    StoreCounts,
    TxRecord,
    WriteBatch,
)
from accompanist.store.group_commit import GroupCommitStats, GroupCommitter
from accompanist.store.memory import MemoryStore
from accompanist.store.sqlite import SQLiteStore
from accompanist.store.url import open_store

__all__ = [
    "GroupCommitStats",
    "GroupCommitter",
    "JournalEntry",
    "MemoryStore",
    "OutboxRow",
    "SQLiteStore",
    "SessionRecord",
    "SessionStatus",
    "Store",
    "StoreCounts",
    "TERMINAL_STATUSES",
    "TX_STATUSES",
    "TxRecord",
    "WriteBatch",
    "open_store",
]
