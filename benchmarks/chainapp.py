"""The chain benchmark's choreographies: a token from ``start`` through ``s1 .. sN`` and back.

Each ``s<i>`` calls its local service (``chainparts.py service``, at ``CHAIN_SERVICE_PORT``)
once, over one loopback RPC, exactly as each node of the raw-socket floor does; ``start`` is
the client's own sidecar. ``chain<N>`` needs N+1 one-way hops between sidecars.
"""

from __future__ import annotations

import asyncio
import os

from chainparts import RpcClient

import accompanist as ac

__all__ = ["MAX_N", "app", "call_service", "gate", "held"]

MAX_N = 5
START, *SERVICES = ac.roles("start", *(f"s{i}" for i in range(1, MAX_N + 1)))


class _Service:
    """This sidecar's connection pool to its local service, made on first use."""

    client: RpcClient | None = None


async def call_service(value: int) -> int:
    if _Service.client is None:
        _Service.client = RpcClient("127.0.0.1", int(os.environ["CHAIN_SERVICE_PORT"]))
    return await _Service.client.call(value)


def _chain(n: int) -> ac.Choreography:
    @ac.choreography(f"chain{n}", roles=(START, *SERVICES[:n]))
    async def chain(ch: ac.Choreo, token: ac.Located[int]) -> ac.Located[int]:
        at, value = START, token
        for role in SERVICES[:n]:
            value = await ch.locally(role, call_service, await ch.comm(at, role, value))
            at = role
        return await ch.comm(at, START, value)

    return chain


async def gate(value: int) -> int:
    """Wait until the file ``CHAIN_GATE`` exists (the recovery benchmark opens it)."""
    path = os.environ["CHAIN_GATE"]
    while not os.path.exists(path):  # noqa: ASYNC110 - waits for a file another process creates
        await asyncio.sleep(0.05)
    return value


def _add(a: int, b: int) -> int:
    return a + b


@ac.choreography("held", roles=(START, SERVICES[0]))
async def held(ch: ac.Choreo, token: ac.Located[int]) -> ac.Located[int]:
    """``s1`` calls its service, then waits for ``start``, which waits at the gate: a session
    that stays unfinished at ``s1`` until the gate opens (the recovery benchmark's load)."""
    at_s1 = await ch.locally(SERVICES[0], call_service, await ch.comm(START, SERVICES[0], token))
    later = await ch.locally(START, gate, token)
    again = await ch.locally(SERVICES[0], call_service, await ch.comm(START, SERVICES[0], later))
    total = await ch.locally(SERVICES[0], _add, at_s1, again)
    return await ch.comm(SERVICES[0], START, total)


app = ac.App(*(_chain(n) for n in range(1, MAX_N + 1)), held)
