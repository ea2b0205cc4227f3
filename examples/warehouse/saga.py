"""The warehouse order saga: reserve stock, charge, award points, ship.

Roles: ``warehouse`` (the initiator: a shop's order entry calls its sidecar), ``payment`` and
``loyalty``. Each role's sidecar calls its own service over HTTP (:mod:`.services`), found
through ``WAREHOUSE_SERVICE_URL``, ``PAYMENT_SERVICE_URL`` and ``LOYALTY_SERVICE_URL``.

Every service call is a saga transaction keyed by ``ctx.idempotency_key``, so a commit that
runs again after a crash has no second effect. A 4xx answer is the service declining for a
business reason: the commit raises :class:`accompanist.Abort` and the saga compensates
everywhere (release, refund, revoke, unship: each at the role that committed, last first).
A refused connection, a 5xx or a timeout is an infrastructure error: the runtime retries the
commit with backoff (:data:`RETRY` waits out a service that is restarting), and only when
the retries are used up does the saga fail and compensate.

An :class:`Order` may name a step in ``fail_at`` (``reserve``, ``charge``, ``award`` or
``ship``): that service is then asked to decline, which makes the failing step a property of
the order, the same on every retry and replay.
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp
import msgspec

import accompanist as ac

__all__ = ["STEPS", "Loyalty", "Order", "Payment", "Warehouse", "app", "order"]

Warehouse, Payment, Loyalty = ac.roles("warehouse", "payment", "loyalty")

STEPS = ("reserve", "charge", "award", "ship")
"""The saga's transactions in order; an order's ``fail_at`` names one of them."""


class Order(msgspec.Struct, frozen=True):
    """One order as the shop's order entry places it."""

    order_id: str
    item: str
    qty: int
    customer: str
    amount: int
    points: int
    fail_at: str | None = None


class ServiceError(Exception):
    """A service answered 5xx: an infrastructure error, retried."""


RETRY = ac.Retry(attempts=int(os.environ.get("WAREHOUSE_COMMIT_ATTEMPTS", "30")), initial=0.05, maximum=1.0)
"""Commits retry about 25 s of connection errors (30 tries; ``WAREHOUSE_COMMIT_ATTEMPTS``
changes it): a killed service restarts well within it."""

_URL_ENV = {"warehouse": "WAREHOUSE_SERVICE_URL", "payment": "PAYMENT_SERVICE_URL", "loyalty": "LOYALTY_SERVICE_URL"}
_DEFAULT_URL = {
    "warehouse": "http://127.0.0.1:8101",
    "payment": "http://127.0.0.1:8102",
    "loyalty": "http://127.0.0.1:8103",
}


class _Client:
    """The role's aiohttp session: opened by the app's startup hook, closed by its shutdown hook."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def open(self, role: str) -> None:
        """Startup hook: one HTTP session per sidecar, reused by every call of its role."""
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10, connect=2))

    async def close(self, role: str) -> None:
        """Shutdown hook: close the session (no "Unclosed client session" at exit)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            raise RuntimeError("the warehouse app's HTTP session is not open: run the app's startup hooks")
        return self._session

    async def post(self, service: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``service``; return its answer.

        Raises:
            accompanist.Abort: a 4xx business answer (with the service's reason).
            ServiceError: a 5xx answer (retried by the runtime, as are connection errors).
        """
        base = os.environ.get(_URL_ENV[service], _DEFAULT_URL[service]).rstrip("/")
        async with self.session().post(f"{base}{path}", json=body) as response:
            if response.status >= 500:
                raise ServiceError(f"{service}{path} answered {response.status}")
            answer = await response.json(content_type=None)
            if response.status >= 400:
                reason = answer.get("reason") if isinstance(answer, dict) else None
                raise ac.Abort(str(reason or f"{service}{path} answered {response.status}"))
            return dict(answer)


_client = _Client()


def _fails(order: Order, step: str) -> bool:
    return order.fail_at == step


# -- warehouse ------------------------------------------------------------------------------
async def release_stock(ctx: ac.TxContext, order: Order, reservation: dict[str, Any]) -> None:
    """Compensation: put the reserved stock back."""
    await _client.post("warehouse", "/release", {"key": ctx.idempotency_key})


@ac.transaction(compensate=release_stock, name="reserve", retry=RETRY)
async def reserve_stock(ctx: ac.TxContext, order: Order) -> dict[str, Any]:
    """Reserve ``qty`` of ``item``; the warehouse declines when it is out of stock."""
    body = {"key": ctx.idempotency_key, "order_id": order.order_id, "item": order.item, "qty": order.qty}
    return await _client.post("warehouse", "/reserve", {**body, "fail": _fails(order, "reserve")})


async def unship(ctx: ac.TxContext, order: Order, reservation: dict[str, Any], shipment: dict[str, Any]) -> None:
    """Compensation: call the parcel back."""
    await _client.post("warehouse", "/unship", {"key": ctx.idempotency_key})


@ac.transaction(compensate=unship, name="ship", retry=RETRY)
async def pack_and_ship(ctx: ac.TxContext, order: Order, reservation: dict[str, Any]) -> dict[str, Any]:
    """Pack the reserved goods and send them."""
    body = {"key": ctx.idempotency_key, "order_id": order.order_id, "reservation": reservation["key"]}
    return await _client.post("warehouse", "/ship", {**body, "fail": _fails(order, "ship")})


# -- payment ---------------------------------------------------------------------------------
async def refund(ctx: ac.TxContext, order: Order, charge: dict[str, Any]) -> None:
    """Compensation: give the money back."""
    await _client.post("payment", "/refund", {"key": ctx.idempotency_key})


@ac.transaction(compensate=refund, name="charge", retry=RETRY)
async def charge(ctx: ac.TxContext, order: Order) -> dict[str, Any]:
    """Take ``amount`` from the customer; payment declines on insufficient funds."""
    body = {"key": ctx.idempotency_key, "order_id": order.order_id, "customer": order.customer, "amount": order.amount}
    return await _client.post("payment", "/charge", {**body, "fail": _fails(order, "charge")})


# -- loyalty ---------------------------------------------------------------------------------
async def revoke_points(ctx: ac.TxContext, order: Order, award: dict[str, Any]) -> None:
    """Compensation: take the points away again."""
    await _client.post("loyalty", "/revoke", {"key": ctx.idempotency_key})


@ac.transaction(compensate=revoke_points, name="award", retry=RETRY)
async def award_points(ctx: ac.TxContext, order: Order) -> dict[str, Any]:
    """Award the order's loyalty points to the customer."""
    body = {"key": ctx.idempotency_key, "order_id": order.order_id, "customer": order.customer, "points": order.points}
    return await _client.post("loyalty", "/award", {**body, "fail": _fails(order, "award")})


def points_of(award: dict[str, Any]) -> int:
    """What loyalty tells the warehouse: the points awarded."""
    return int(award["amount"])


def shipped(order: Order, shipment: dict[str, Any]) -> str:
    """The session's result at the warehouse."""
    return f"shipped {order.order_id}"


@ac.choreography("order", roles=(Warehouse, Payment, Loyalty), types=[Order])
async def order(ch: ac.Choreo, o: ac.Located[Order]) -> ac.Located[str]:
    """Reserve stock, charge the customer, award points, then pack and ship.

    A decline at any step (or retries used up) compensates every step committed so far, at
    every role, last first; all three sidecars then agree on ``compensated``.
    """
    reservation = await ch.transaction(Warehouse, reserve_stock, o)
    at_payment = await ch.comm(Warehouse, Payment, o)
    await ch.transaction(Payment, charge, at_payment)
    at_loyalty = await ch.comm(Payment, Loyalty, at_payment)
    award = await ch.transaction(Loyalty, award_points, at_loyalty)
    await ch.comm(Loyalty, Warehouse, await ch.locally(Loyalty, points_of, award))
    shipment = await ch.transaction(Warehouse, pack_and_ship, o, reservation)
    return await ch.locally(Warehouse, shipped, o, shipment)


app = ac.App(order)
app.on_startup(_client.open)
app.on_shutdown(_client.close)
