"""The choreography the fault campaigns run, with a service that records its effects.

Every local step calls :func:`effect`, which stands for a call to an existing service: it
writes to that role's own SQLite database, keyed by the step key the runtime hands it, and
counts every call. The campaign then checks that each session produced exactly the effects
it should, with the right values, however often a step was re-run after a crash.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import accompanist as ac
from accompanist.engine.stepkey import current_step

__all__ = ["A", "B", "C", "app", "effect", "read_effects", "read_ledger", "read_tx"]

A, B, C = ac.roles("a", "b", "c")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tx (key TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS ledger (key TEXT PRIMARY KEY, session_id TEXT NOT NULL, what TEXT NOT NULL,
    name TEXT NOT NULL, n INTEGER NOT NULL);
"""


def _db(role: str) -> sqlite3.Connection:
    path = Path(os.environ.get("FAULT_EFFECTS_DIR", ".")) / f"effects-{role}.db"
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(_SCHEMA)
    return db


def effect(value: int) -> int:
    """The service call: idempotent by step key, so a re-run changes nothing."""
    key = current_step()
    if key is None:
        raise RuntimeError("effect() must run inside a sidecar's local step")
    db = _db(key.role)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO calls(key, n) VALUES (?, 1) ON CONFLICT(key) DO UPDATE SET n = n + 1", (str(key),))
        db.execute("INSERT INTO effects(key, value) VALUES (?, ?) ON CONFLICT(key) DO NOTHING", (str(key), value + 1))
        db.execute("COMMIT")
    finally:
        db.close()
    return value + 1


def read_effects(directory: Path, role: str) -> tuple[dict[str, int], dict[str, int]]:
    """``(effects, calls)`` recorded by ``role``'s service, by step key."""
    path = directory / f"effects-{role}.db"
    if not path.exists():
        return {}, {}
    db = sqlite3.connect(path)
    try:
        effects = dict(db.execute("SELECT key, value FROM effects").fetchall())
        calls = dict(db.execute("SELECT key, n FROM calls").fetchall())
    finally:
        db.close()
    return effects, calls


@ac.choreography("chain", roles=(A, B, C))
async def chain(ch: ac.Choreo, n: ac.Located[int]) -> ac.Located[int]:
    """a -> b -> c -> a, one service effect at each hop: the result is n + 4."""
    x = await ch.locally(A, effect, n)  # a/0
    y = await ch.locally(B, effect, await ch.comm(A, B, x))  # b/1
    z = await ch.locally(C, effect, await ch.comm(B, C, y))  # c/1
    return await ch.locally(A, effect, await ch.comm(C, A, z))  # a/3


EXPECTED_EFFECTS = {"a/0": 1, "b/1": 2, "c/1": 3, "a/3": 4}
"""Step key suffix -> offset from the session's input of the value that step records."""


async def pause(value: int) -> int:
    """A slow step at ``a``: the moment a test kills ``a`` while ``b`` waits."""
    await asyncio.sleep(float(os.environ.get("FAULT_PAUSE", "3")))
    return value


@ac.choreography("pingpong", roles=(A, B, C))
async def pingpong(ch: ac.Choreo, n: ac.Located[int]) -> ac.Located[int]:
    """a and b take turns; with FAULT_CHANGED=1 in b's environment, b's code has one more
    step (a deployment that changed the choreography under running sessions)."""
    at_b = await ch.locally(B, effect, await ch.comm(A, B, n))
    if os.environ.get("FAULT_CHANGED") == "1":
        at_b = await ch.locally(B, lambda v: v * 2, at_b)
    at_a = await ch.locally(A, pause, await ch.comm(B, A, at_b))
    again = await ch.locally(B, effect, await ch.comm(A, B, at_a))
    return await ch.comm(B, A, again)


# -- for the edge cases across processes (tests/faults/test_edges_*.py) -----------------------
def read_tx(directory: Path, role: str) -> dict[str, int]:
    """``"commit:<idempotency key>"`` / ``"undo:<key>"`` -> how often ``role`` ran it."""
    path = directory / f"effects-{role}.db"
    if not path.exists():
        return {}
    db = sqlite3.connect(path)
    try:
        return dict(db.execute("SELECT key, n FROM tx").fetchall())
    finally:
        db.close()


def _count_tx(ctx: ac.TxContext, what: str) -> None:
    db = _db(ctx.role)
    try:
        key = f"{what}:{ctx.idempotency_key}"
        db.execute("INSERT INTO tx(key, n) VALUES (?, 1) ON CONFLICT(key) DO UPDATE SET n = n + 1", (key,))
    finally:
        db.close()


async def _undo(ctx: ac.TxContext, *args: object) -> None:
    _count_tx(ctx, "undo")


async def _commit(ctx: ac.TxContext, value: int) -> int:
    _count_tx(ctx, "commit")
    return value


hold = ac.Transaction("hold", _commit, _undo)
"""A saga step that only records its commit and its compensation (table ``tx``)."""


@ac.choreography("echo-b", roles=(B, A))
async def echo_b(ch: ac.Choreo, n: ac.Located[int]) -> ac.Located[int]:
    """Initiated at b: b -> a, an effect at a, a -> b."""
    return await ch.comm(A, B, await ch.locally(A, effect, await ch.comm(B, A, n)))


@ac.choreography("big", roles=(A, B))
async def big(ch: ac.Choreo, n: ac.Located[int]) -> ac.Located[int]:
    """b commits ``hold``, then sends a of ``n`` bytes back: over the frame limit for a large n."""
    at_b = await ch.comm(A, B, n)
    await ch.transaction(B, hold, at_b)
    blob = await ch.locally(B, lambda k: "x" * k, at_b)
    return await ch.locally(A, len, await ch.comm(B, A, blob))


@ac.choreography("first", roles=(A, B, C))
async def first(ch: ac.Choreo, n: ac.Located[int]) -> ac.Located[int]:
    """b's part begins with local steps and a send; c only has a local step and a transaction.
    The result is n + 7."""
    offer = await ch.locally(B, effect, await ch.locally(B, lambda: 6))  # b/1 records 7
    at_a = await ch.comm(B, A, offer)
    await ch.transaction(C, hold, await ch.locally(C, lambda: 1))
    return await ch.locally(A, lambda o, v: o + v, at_a, n)


@ac.choreography("loop", roles=(A, B))
async def loop(ch: ac.Choreo, n: ac.Located[int]) -> ac.Located[int]:
    """n round trips a -> b -> a, then a slow step at b (after an effect the test waits for):
    the result is sum(range(n)) + 1."""
    count = await ch.broadcast(A, n)
    total = await ch.locally(B, lambda: 0)
    for i in range(count):  # one at a time: never more than one envelope arrives early
        v = await ch.comm(A, B, await ch.locally(A, lambda i=i: i))
        total = await ch.locally(B, lambda t, x: t + x, total, v)
        await ch.comm(B, A, v)
    marker = await ch.locally(B, effect, total)
    return await ch.comm(B, A, await ch.locally(B, pause, marker))


def _slow_b(version: int) -> ac.Choreography:
    @ac.choreography("slow-b", roles=(A, B), version=version)
    async def slow_b(ch: ac.Choreo, n: ac.Located[int]) -> ac.Located[int]:
        """a -> b, ``hold`` and an effect and a slow step at b, b -> a: the result is n + 1."""
        at_b = await ch.comm(A, B, n)
        await ch.transaction(B, hold, at_b)
        at_b = await ch.locally(B, effect, at_b)
        return await ch.comm(B, A, await ch.locally(B, pause, at_b))

    return slow_b


# -- sagas: transactions whose commits and compensations are recorded by idempotency key ------
def _book(ctx: ac.TxContext, what: str) -> None:
    """Record ``what`` (commit or undo) of ``ctx``'s transaction once; count every call."""
    db = _db(ctx.role)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "INSERT INTO ledger(key, session_id, what, name, n) VALUES (?, ?, ?, ?, 1) "
            "ON CONFLICT(key) DO UPDATE SET n = n + 1",
            (f"{what}:{ctx.idempotency_key}", ctx.session_id, what, ctx.name),
        )
        db.execute("COMMIT")
    finally:
        db.close()


def read_ledger(directory: Path, role: str) -> list[tuple[str, str, str, int]]:
    """``(session_id, what, name, calls)`` rows of ``role``'s saga ledger."""
    path = directory / f"effects-{role}.db"
    if not path.exists():
        return []
    db = sqlite3.connect(path)
    try:
        return [tuple(r) for r in db.execute("SELECT session_id, what, name, n FROM ledger").fetchall()]
    finally:
        db.close()


def _saga_tx(name: str, fails: Callable[[int], bool]) -> ac.Transaction:
    async def commit(ctx: ac.TxContext, value: int) -> int:
        if fails(value):
            raise ac.Abort(f"{name} refuses {value}")
        await asyncio.to_thread(_book, ctx, "commit")
        return value

    async def undo(ctx: ac.TxContext, value: int, result: int) -> None:
        await asyncio.to_thread(_book, ctx, "undo")

    return ac.Transaction(name, commit, undo)


reserve = _saga_tx("reserve", lambda v: False)
charge = _saga_tx("charge", lambda v: v % 5 == 0)
ship = _saga_tx("ship", lambda v: v % 7 == 0)


@ac.choreography("saga", roles=(A, B, C))
async def saga(ch: ac.Choreo, n: ac.Located[int]) -> ac.Located[int]:
    """b reserves, c charges (refuses multiples of 5), a ships (refuses multiples of 7)."""
    at_b = await ch.comm(A, B, n)
    await ch.transaction(B, reserve, at_b)
    at_c = await ch.comm(B, C, at_b)
    await ch.transaction(C, charge, at_c)
    at_a = await ch.comm(C, A, at_c)
    await ch.transaction(A, ship, at_a)
    return at_a


def saga_outcome(n: int) -> tuple[str, dict[str, list[str]]]:
    """The outcome of ``saga(n)`` and the ledger entries (``what:name``) each role ends with."""
    if n % 5 == 0:
        return "compensated", {"a": [], "b": ["commit:reserve", "undo:reserve"], "c": []}
    if n % 7 == 0:
        return "compensated", {"a": [], "b": ["commit:reserve", "undo:reserve"], "c": ["commit:charge", "undo:charge"]}
    return "completed", {"a": ["commit:ship"], "b": ["commit:reserve"], "c": ["commit:charge"]}


async def gate(value: int) -> int:
    """Wait until the file ``gate`` exists in FAULT_EFFECTS_DIR (the test opens it)."""
    path = Path(os.environ.get("FAULT_EFFECTS_DIR", ".")) / "gate"
    while not path.exists():  # noqa: ASYNC110 - waits for a file another process creates
        await asyncio.sleep(0.05)
    return value


late_hold = _saga_tx("hold", lambda v: False)
risky = _saga_tx("risky", lambda v: v < 0)


@ac.choreography("late", roles=(A, B, C))
async def late(ch: ac.Choreo, n: ac.Located[int]) -> ac.Located[int]:
    """c commits ``hold`` and its part ends; b then waits at the gate and commits ``risky``,
    which refuses negative numbers: a failure long after c finished."""
    await ch.transaction(C, late_hold, await ch.comm(A, C, n))
    at_b = await ch.locally(B, gate, await ch.comm(A, B, n))
    await ch.transaction(B, risky, at_b)
    return await ch.comm(B, A, at_b)


_EXTRA = [echo_b, big, first, loop, _slow_b(2)]
if os.environ.get("FAULT_WITHOUT_V1") != "1":  # a deployment that dropped version 1 of slow-b
    _EXTRA.append(_slow_b(1))

app = ac.App(chain, pingpong, saga, late, *_EXTRA)
