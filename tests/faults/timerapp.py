"""Choreographies with durable timers for the real-process fault tests, and a service ledger.

Every transaction writes to its role's own SQLite ledger, keyed by the idempotency key the
runtime hands it, counting every call of its commit and of its compensation: the tests check
that a SIGKILL while a session sleeps (or while a saga deadline runs) makes no effect twice.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import accompanist as ac

__all__ = ["A", "B", "app", "read_ledger"]

A, B = ac.roles("a", "b")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS ledger (key TEXT NOT NULL, what TEXT NOT NULL, n INTEGER NOT NULL, "
    "PRIMARY KEY (key, what))"
)


def _count(ctx: ac.TxContext, what: str) -> None:
    path = Path(os.environ.get("TIMER_EFFECTS_DIR", ".")) / f"ledger-{ctx.role}.db"
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(_SCHEMA)
        db.execute(
            "INSERT INTO ledger(key, what, n) VALUES (?, ?, 1) ON CONFLICT(key, what) DO UPDATE SET n = n + 1",
            (ctx.idempotency_key, what),
        )
    finally:
        db.close()


def read_ledger(directory: Path, role: str) -> dict[tuple[str, str], int]:
    """``{(idempotency key, commit|compensate): calls}`` of ``role``'s service."""
    path = directory / f"ledger-{role}.db"
    if not path.exists():
        return {}
    db = sqlite3.connect(path)
    try:
        return {(k, w): n for k, w, n in db.execute("SELECT key, what, n FROM ledger")}
    finally:
        db.close()


async def unbook(ctx: ac.TxContext, x: int, _result: object = None) -> None:
    _count(ctx, "compensate")


@ac.transaction(compensate=unbook)
async def book(ctx: ac.TxContext, x: int) -> int:
    _count(ctx, "commit")
    return x + 1


@ac.choreography("nap", roles=(A, B))
async def nap(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
    """b books, sleeps ``TIMER_SLEEP`` seconds, books again; a books the answer."""
    at_b = await ch.comm(A, B, x)
    await ch.transaction(B, book, at_b)
    await ch.sleep(B, float(os.environ.get("TIMER_SLEEP", "3")))
    after = await ch.transaction(B, book, at_b)
    back = await ch.comm(B, A, after)
    await ch.transaction(A, book, back)
    return back


@ac.choreography("late_payment", roles=(A, B))
async def late_payment(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
    """Cancel the order if payment has not completed in ``TIMER_DEADLINE`` seconds: here the
    payment (b) never answers in time (it sleeps ten minutes)."""
    await ch.cancel_after(float(os.environ.get("TIMER_DEADLINE", "2")), reason="payment did not complete in time")
    await ch.transaction(A, book, x)
    at_b = await ch.comm(A, B, x)
    await ch.transaction(B, book, at_b)
    await ch.sleep(B, 600)
    return await ch.comm(B, A, at_b)


app = ac.App(nap, late_payment)
