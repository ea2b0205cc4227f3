"""The saga benchmark as an Accompanist choreography: ``shop`` (the client's sidecar, the
initiator) hands the order to ``inventory``, which reserves and passes it to ``payment``, which
charges and passes it to ``shipping``, which ships and tells ``shop``.

Each step is a saga transaction calling its service through :class:`sagaservices.ServiceClient`
(the same requests Temporal's activities and DBOS's steps make), keyed by
``ctx.idempotency_key``. A decline (4xx) raises :class:`accompanist.Abort` and every role
compensates what it committed; a 5xx or a refused connection is retried (``RETRY``).
The services' URLs come from ``SAGA_URLS`` (JSON ``{service: url}``).
"""

from __future__ import annotations

import json
import os
from typing import Any

from sagaservices import ServiceClient, ServiceDeclinedError

import accompanist as ac

__all__ = ["RETRY", "app", "order"]

Shop, Inventory, Payment, Shipping = ac.roles("shop", "inventory", "payment", "shipping")

RETRY = ac.Retry(attempts=int(os.environ.get("SAGA_COMMIT_ATTEMPTS", "120")), initial=0.05, maximum=0.5)
"""Infrastructure errors are retried for about a minute (a restarting service)."""


class _Client:
    """This sidecar's client, made on first use (the URLs are read from the environment)."""

    client: ServiceClient | None = None

    @classmethod
    async def post(cls, step: str, order: dict[str, Any], key: str, *, undo: bool = False) -> dict[str, Any]:
        if cls.client is None:
            cls.client = ServiceClient(json.loads(os.environ["SAGA_URLS"]))
        try:
            return await cls.client.post(step, order, key, undo=undo)
        except ServiceDeclinedError as exc:
            raise ac.Abort(str(exc)) from exc


# A compensation gets the commit's arguments and what the commit returned.
async def release(ctx: ac.TxContext, order: dict[str, Any], committed: dict[str, Any]) -> None:
    await _Client.post("reserve", order, ctx.idempotency_key, undo=True)


@ac.transaction(compensate=release, name="reserve", retry=RETRY)
async def reserve(ctx: ac.TxContext, order: dict[str, Any]) -> dict[str, Any]:
    return await _Client.post("reserve", order, ctx.idempotency_key)


async def refund(ctx: ac.TxContext, order: dict[str, Any], committed: dict[str, Any]) -> None:
    await _Client.post("charge", order, ctx.idempotency_key, undo=True)


@ac.transaction(compensate=refund, name="charge", retry=RETRY)
async def charge(ctx: ac.TxContext, order: dict[str, Any]) -> dict[str, Any]:
    return await _Client.post("charge", order, ctx.idempotency_key)


async def unship(ctx: ac.TxContext, order: dict[str, Any], committed: dict[str, Any]) -> None:
    await _Client.post("ship", order, ctx.idempotency_key, undo=True)


@ac.transaction(compensate=unship, name="ship", retry=RETRY)
async def ship(ctx: ac.TxContext, order: dict[str, Any]) -> dict[str, Any]:
    return await _Client.post("ship", order, ctx.idempotency_key)


def _label(order: dict[str, Any]) -> str:
    return f"shipped {order['order_id']}"


@ac.choreography("order", roles=(Shop, Inventory, Payment, Shipping))
async def order(ch: ac.Choreo, o: ac.Located[dict[str, Any]]) -> ac.Located[str]:
    """Reserve, charge, ship; a decline anywhere compensates everywhere."""
    at_inventory = await ch.comm(Shop, Inventory, o)
    await ch.transaction(Inventory, reserve, at_inventory)
    at_payment = await ch.comm(Inventory, Payment, at_inventory)
    await ch.transaction(Payment, charge, at_payment)
    at_shipping = await ch.comm(Payment, Shipping, at_payment)
    await ch.transaction(Shipping, ship, at_shipping)
    return await ch.comm(Shipping, Shop, await ch.locally(Shipping, _label, at_shipping))


app = ac.App(order)
