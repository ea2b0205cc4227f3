"""The choreography of the rolling-upgrade test, in two versions: ``app_v1`` serves version 1,
``app_v2`` (the upgrade) serves versions 1 and 2. Version 2 changes one step (at b), so the
result tells which version a session ran."""

from __future__ import annotations

import asyncio

import accompanist as ac

__all__ = ["app_v1", "app_v2", "expected"]

A, B, C = ac.roles("a", "b", "c")


async def _add_one(x: int) -> int:
    await asyncio.sleep(0.05)  # a service call: keeps sessions in flight while sidecars stop
    return x + 1


async def _add_two(x: int) -> int:
    await asyncio.sleep(0.05)
    return x + 2


@ac.choreography("order", roles=(A, B, C), version=1)
async def order_v1(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
    at_b = await ch.comm(A, B, x)
    y = await ch.locally(B, _add_one, at_b)
    at_c = await ch.comm(B, C, y)
    z = await ch.locally(C, lambda v: v * 10, at_c)
    return await ch.comm(C, A, z)


@ac.choreography("order", roles=(A, B, C), version=2)
async def order_v2(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
    at_b = await ch.comm(A, B, x)
    y = await ch.locally(B, _add_two, at_b)  # the changed step
    at_c = await ch.comm(B, C, y)
    z = await ch.locally(C, lambda v: v * 10, at_c)
    return await ch.comm(C, A, z)


def expected(version: int, x: int) -> int:
    """The result of a session of ``version`` started with ``x``."""
    return (x + version) * 10


app_v1 = ac.App(order_v1)
app_v2 = ac.App(order_v1, order_v2)
