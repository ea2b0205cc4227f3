"""The SQL every :class:`~accompanist.store.sql.SQLStore` runs, and the rows it binds.

Each column list and the function that fills it live side by side here, so a column added to
a table (as schema version 2 did) changes one file. SQLite and PostgreSQL accept the same
statements; only table names (PostgreSQL prefixes its schema) and parameter marks (``?`` or
``$n``) differ, and :meth:`Statements.build` applies both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from accompanist.envelope import Envelope
from accompanist.store.base import TERMINAL_STATUSES, JournalEntry, SessionRecord, TxRecord

__all__ = [
    "ENV_COLS",
    "JOURNAL_COLS",
    "Row",
    "SESSION_COLS",
    "Statements",
    "TX_COLS",
    "env_row",
    "journal_row",
    "session_row",
    "tx_row",
]

Row = tuple[Any, ...]

SESSION_COLS = (
    "session_id, choreography, version, role, status, args, result, error, attempts, created_at, updated_at, "
    "failure, seed, state"
)
ENV_COLS = "session_id, choreography, version, src, dst, seq, kind, payload, headers, auth"
JOURNAL_COLS = "session_id, step, kind, name, value"
TX_COLS = "key, session_id, name, step, status, result, updated_at, args, clock"
_TERMINAL = ", ".join(f"'{s.value}'" for s in sorted(TERMINAL_STATUSES))


def session_row(r: SessionRecord) -> Row:
    """``r`` as parameters for :data:`SESSION_COLS`."""
    return (
        r.session_id,
        r.choreography,
        r.version,
        r.role,
        r.status,
        r.args,
        r.result,
        r.error,
        r.attempts,
        float(r.created_at),
        float(r.updated_at),
        r.failure,
        r.seed,
        r.state,
    )


def env_row(env: Envelope) -> Row:
    """``env`` as parameters for :data:`ENV_COLS` (headers as JSON text)."""
    headers = msgspec.json.encode(env.headers).decode() if env.headers else "{}"
    return (
        env.session_id,
        env.choreography,
        env.version,
        env.src,
        env.dst,
        env.seq,
        env.kind,
        env.payload,
        headers,
        env.auth,
    )


def journal_row(e: JournalEntry) -> Row:
    """``e`` as parameters for :data:`JOURNAL_COLS`."""
    return (e.session_id, e.step, e.kind, e.name, e.value)


def tx_row(r: TxRecord) -> Row:
    """``r`` as parameters for :data:`TX_COLS`."""
    return (r.key, r.session_id, r.name, r.step, r.status, r.result, float(r.updated_at), r.args, r.clock)


def _upsert(table: str, cols: str, key: str) -> str:
    names = [c.strip() for c in cols.split(",")]
    updates = ", ".join(f"{c} = excluded.{c}" for c in names if c != key)
    marks = ", ".join("?" for _ in names)
    return f"INSERT INTO {table} ({cols}) VALUES ({marks}) ON CONFLICT ({key}) DO UPDATE SET {updates}"


def _insert_ignore(table: str, cols: str, key: str) -> str:
    marks = ", ".join("?" for _ in cols.split(","))
    return f"INSERT INTO {table} ({cols}) VALUES ({marks}) ON CONFLICT ({key}) DO NOTHING"


@dataclass(frozen=True)
class Statements:
    """Every statement the store runs, with tables named and parameters marked per dialect."""

    upsert_session: str
    insert_inbox: str
    insert_outbox: str
    ack: str
    insert_journal: str
    upsert_tx: str
    get_session: str
    list_sessions: str
    list_sessions_status: str
    nonterminal: str
    inbox_load: str
    outbox_load: str
    outbox_pending: str
    outbox_pending_to: str
    journal_load: str
    txlog_load: str
    prune_children: tuple[str, ...]
    prune_sessions: str
    counts: str

    @classmethod
    def build(cls, table: Callable[[str], str], params: Callable[[str], str]) -> Statements:
        """Statements for tables named by ``table(name)``; ``params`` rewrites ``?`` marks."""
        s, i, o, j, t = (table(n) for n in ("acc_sessions", "acc_inbox", "acc_outbox", "acc_journal", "acc_txlog"))
        key = "session_id, src, dst, seq"
        # Retention never deletes anything of a session with an unacknowledged outbox row: a
        # peer that was down longer than the retention must still get it (a failure
        # envelope, say). The probe seeks the outbox's unique index by its session_id prefix.
        old = f"status IN ({_TERMINAL}) AND updated_at < ?"
        unacked = f"SELECT 1 FROM {o} AS pending WHERE pending.session_id = {s}.session_id AND pending.acked = 0"
        prunable = f"{old} AND NOT EXISTS ({unacked})"
        raw = cls(
            upsert_session=_upsert(s, SESSION_COLS, "session_id"),
            insert_inbox=_insert_ignore(i, f"{ENV_COLS}, received_at", key),
            insert_outbox=_insert_ignore(o, f"{ENV_COLS}, acked, created_at", key),
            # By the unique key (src is the store's own role): one row, whatever the backlog.
            ack=f"UPDATE {o} SET acked = 1 WHERE session_id = ? AND src = ? AND dst = ? AND seq = ? AND acked = 0",
            insert_journal=_insert_ignore(j, JOURNAL_COLS, "session_id, step"),
            upsert_tx=_upsert(t, TX_COLS, "key"),
            get_session=f"SELECT {SESSION_COLS} FROM {s} WHERE session_id = ?",
            list_sessions=f"SELECT {SESSION_COLS} FROM {s} ORDER BY created_at DESC, session_id DESC LIMIT ?",
            list_sessions_status=(
                f"SELECT {SESSION_COLS} FROM {s} WHERE status = ? ORDER BY created_at DESC, session_id DESC LIMIT ?"
            ),
            nonterminal=(
                f"SELECT {SESSION_COLS} FROM {s} WHERE status NOT IN ({_TERMINAL}) ORDER BY created_at, session_id"
            ),
            inbox_load=f"SELECT {ENV_COLS} FROM {i} WHERE session_id = ? ORDER BY src, seq, dst",
            outbox_load=f"SELECT {ENV_COLS}, acked FROM {o} WHERE session_id = ? ORDER BY id",
            outbox_pending=f"SELECT {ENV_COLS} FROM {o} WHERE acked = 0 ORDER BY id LIMIT ?",
            outbox_pending_to=f"SELECT {ENV_COLS} FROM {o} WHERE acked = 0 AND dst = ? ORDER BY id LIMIT ?",
            journal_load=f"SELECT {JOURNAL_COLS} FROM {j} WHERE session_id = ? ORDER BY step",
            txlog_load=f"SELECT {TX_COLS} FROM {t} WHERE session_id = ? ORDER BY step, key",
            prune_children=tuple(
                f"DELETE FROM {x} WHERE session_id IN (SELECT session_id FROM {s} WHERE {prunable})"
                for x in (i, o, j, t)
            ),
            prune_sessions=f"DELETE FROM {s} WHERE {prunable}",
            counts=(
                f"SELECT (SELECT count(*) FROM {s}), (SELECT count(*) FROM {i}), (SELECT count(*) FROM {o}), "
                f"(SELECT count(*) FROM {o} WHERE acked = 0), (SELECT count(*) FROM {j}), (SELECT count(*) FROM {t})"
            ),
        )
        fields = {name: _rewrite(getattr(raw, name), params) for name in raw.__dataclass_fields__}
        return cls(**fields)


def _rewrite(value: str | tuple[str, ...], params: Callable[[str], str]) -> Any:
    return tuple(params(x) for x in value) if isinstance(value, tuple) else params(value)
