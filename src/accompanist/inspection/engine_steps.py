"""A running engine's answer to ``GET /sessions/{id}/steps``: memory first, then its store.

Why here and not in the engine: reading steps is for people, never on the session's path; it
costs store reads only when asked, and nothing of it is computed while sessions run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from accompanist.errors import UnknownChoreographyError
from accompanist.inspection.steps import StoreRows, role_steps

if TYPE_CHECKING:
    from accompanist.engine.engine import Engine

__all__ = ["steps_of"]


async def steps_of(engine: Engine, session_id: str) -> dict[str, Any] | None:
    """The session's steps at this engine's role, or None if it does not know the session.

    In default mode they come from memory while the session is kept; in fault-tolerant mode
    from memory and the store (the journal, transaction log, inbox and outbox), so a session
    that ran before a restart, or whose live steps were evicted from memory, still shows.

    Raises:
        StoreError: the store fails (the API answers 503).
    """
    run = engine.live_run(session_id)
    record = msgspec.structs.replace(run.record) if run is not None else await engine.stored(session_id, retry=False)
    if record is None:
        return None
    rows = StoreRows()
    if engine.durable:
        store = engine.store
        journal = await engine.guard.once(lambda: store.journal_load(session_id))
        txlog = await engine.guard.once(lambda: store.txlog_load(session_id))
        inbox = await engine.guard.once(lambda: store.inbox_load(session_id))
        outbox = await engine.guard.once(lambda: store.outbox_load(session_id))
        if run is not None:  # what the run holds but has not made durable yet counts too
            journal = [*journal, *run.journal, *run.pending]
            txlog = [*txlog, *run.txlog.values()]
        rows = StoreRows(journal, txlog, inbox, outbox)
    try:
        choreography = engine.app.get(record.choreography, record.version)
        codec, roles, initiator = choreography.codec, [r.name for r in choreography.roles], choreography.initiator.name
    except UnknownChoreographyError:
        codec, roles, initiator = None, None, None
    status = "blocked" if session_id in engine.blocked else record.status
    return role_steps(
        record,
        status=status,
        trail=engine.trails.get(session_id),
        doing=(run.doing, run.doing_since) if run is not None and run.doing is not None else None,
        rows=rows,
        codec=codec,
        roles=roles,
        initiator=initiator,
    )
