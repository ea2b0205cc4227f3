"""What an engine does besides running sessions: hello to peers, asking for late outcomes,
picking up sessions left without a task, and retention."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

from accompanist.engine.session import SessionRun
from accompanist.envelope import Envelope
from accompanist.errors import AccompanistError
from accompanist.store.base import SessionStatus
from accompanist.store.memory import MemoryStore

if TYPE_CHECKING:
    from accompanist.engine.runs import Runs

__all__ = ["announce", "answer_hello", "heard_back", "nudge_loop", "prune_loop"]

S = SessionStatus
_PER_PASS = 500


async def announce(engine: Runs, took: dict[str, bool] | None = None) -> None:
    """Tell every peer this sidecar (re)started, so their relays retry at once, and which
    versions it serves (see :mod:`accompanist.engine.versions`); ``took[peer]`` says whether
    each peer acknowledged the hello."""
    peers = sorted({r.name for c in engine.app for r in c.roles if r.name != engine.role})

    async def one(peer: str) -> None:
        ok = await _send_quietly(engine, engine.versions.hello(peer))
        if took is not None:
            took[peer] = ok

    await asyncio.gather(*(one(p) for p in peers))


async def heard_back(engine: Runs, took: dict[str, bool], limit: float) -> None:
    """Wait, at most ``limit`` seconds, until every peer either refused the hello (it is down:
    its versions stay unknown) or took it and answered with its versions; so an initiator that
    just started knows what its peers serve before it starts sessions."""
    peers = {r.name for c in engine.app for r in c.roles if r.name != engine.role}
    loop = asyncio.get_running_loop()  # its clock: a test's virtual clock skips the wait
    deadline = loop.time() + limit
    while loop.time() < deadline:
        if all(p in took and (not took[p] or engine.versions.peer(p) is not None) for p in peers):
            return
        await asyncio.sleep(0.01)


async def answer_hello(engine: Runs, peer: str) -> None:
    """Answer a peer's announcement with this sidecar's versions (a reply: not answered)."""
    await _send_quietly(engine, engine.versions.hello(peer, reply=True))


async def _send_quietly(engine: Runs, envelope: Envelope) -> bool:
    with contextlib.suppress(AccompanistError, OSError, TimeoutError):
        await engine.transport.send(envelope, wait=True, timeout=engine.config.deliver_timeout)
        return True
    return False


async def nudge_loop(engine: Runs) -> None:
    """Sessions that wait without a task are looked after.

    A role that finished its part (or compensated it, or never took part but was told of the
    failure) and waited longer than ``outcome_query_after`` asks the initiator for the outcome
    instead of only waiting to be told. In fault-tolerant mode a session left ``running``
    without a task (its task died on a bug), or an initiator waiting without one, is resumed.
    """
    interval = max(engine.config.outcome_query_after, 0.05)
    backoff: dict[str, tuple[float, float]] = {}  # session -> (next try, delay)
    while True:
        await asyncio.sleep(interval)
        now = time.time()
        for status in (S.FINISHED, S.COMPENSATING, S.RUNNING) if engine.durable else (S.FINISHED, S.COMPENSATING):
            try:
                records = await engine.store.list_sessions(status, _PER_PASS)
            except AccompanistError:
                continue
            for record in records:
                sid = record.session_id
                if sid in engine.live or sid in engine.blocked or now - record.updated_at < interval:
                    continue
                due, delay = backoff.get(sid, (0.0, interval))
                if due > now:
                    continue
                backoff[sid] = (now + delay, min(delay * 2, 60.0))
                try:
                    choreography = engine.app.get(record.choreography, record.version)
                except AccompanistError:
                    continue
                initiator = choreography.initiator.name == engine.role
                if initiator and not engine.durable:
                    continue
                if status == S.RUNNING or initiator:
                    with contextlib.suppress(AccompanistError):
                        async with engine.session_lock(sid):
                            await engine.activate(record, choreography)
                else:
                    await engine.query(SessionRun(engine, record, choreography))
        for sid in [s for s, (due, _) in backoff.items() if due < now - 600]:
            del backoff[sid]


async def prune_loop(engine: Runs) -> None:
    """Retention: rows of sessions that ended long ago (and owe nothing to a peer) go. In
    default mode, ended sessions live in memory: they are kept ``memory_retention`` seconds
    and ``memory_keep`` at most, so a busy sidecar's memory stays bounded."""
    config = engine.config
    store = engine.store
    interval = config.prune_interval if engine.durable else min(config.prune_interval, 5.0)
    while True:
        await asyncio.sleep(interval)
        now = time.time()
        retention, tombstones = config.retention, config.tombstone_retention
        if not engine.durable:
            retention, tombstones = min(retention, config.memory_retention), min(tombstones, config.memory_retention)
        try:
            removed = await store.prune(now - retention, now - tombstones)
            if isinstance(store, MemoryStore) and not engine.durable:
                removed += await store.trim(config.memory_keep)
                engine.metrics.sessions_kept.set(store.session_count())
        except AccompanistError as exc:
            engine.log.warning("retention pruning failed: %s", exc)
            continue
        if removed:
            engine.log.info("pruned %d rows of ended sessions", removed)
