"""A saga whose compensation at b hangs after its effect, the first time, so a test
can SIGKILL b between the compensation and its record."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import accompanist as ac
from tests.faults.timerapp import _count

A, B = ac.roles("a", "b")


async def unbook(ctx: ac.TxContext, x: int, _result: object = None) -> None:
    _count(ctx, "compensate")
    flag = Path(os.environ["TIMER_EFFECTS_DIR"]) / f"hung-{ctx.role}"
    if ctx.role == "b" and not flag.exists():
        flag.write_text("1")
        await asyncio.sleep(60)  # done at the service; the sidecar is killed before it records it


@ac.transaction(compensate=unbook)
async def book(ctx: ac.TxContext, x: int) -> int:
    _count(ctx, "commit")
    return x + 1


@ac.choreography("late", roles=(A, B))
async def late(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
    await ch.cancel_after(1.0, reason="too late")
    await ch.transaction(A, book, x)
    at_b = await ch.comm(A, B, x)
    await ch.transaction(B, book, at_b)
    await ch.sleep(B, 600)
    return await ch.comm(B, A, at_b)


app = ac.App(late)
