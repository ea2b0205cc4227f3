"""The three HTTP services of the saga benchmark (inventory, payment, shipping), the one HTTP
client every system calls them with, and the check of every order's effects.

Why one module for all three systems: Accompanist, Temporal and DBOS must do exactly the same
work per order (the same requests, the same SQLite commits in the services), so the only
difference measured is the runtime around it. The services reuse the warehouse example's
:class:`~examples.warehouse.services.Ledger` (SQLite WAL, ``synchronous=FULL``, commits keyed
by an idempotency key, compensations by the commit's key).

Run one with ``python benchmarks/sagaservices.py {inventory|payment|shipping} PORT DB``.

- inventory: ``POST /reserve {key, order_id, item, qty, fail}``, ``POST /release {key}``;
- payment: ``POST /charge {key, order_id, customer, amount, fail}``, ``POST /refund {key}``;
- shipping: ``POST /ship {key, order_id, fail}``, ``POST /unship {key}``.

A decline (``fail: true``, out of stock, insufficient funds) is a 4xx with a ``reason``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.warehouse.services import Declined, Ledger

__all__ = [
    "COMMITS",
    "SERVICES",
    "ServiceClient",
    "ServiceDeclinedError",
    "ServiceDownError",
    "build_app",
    "check_orders",
    "undo_of",
]

SERVICES = ("inventory", "payment", "shipping")
STEPS = ("reserve", "charge", "ship")
COMMITS = {"reserve": "inventory", "charge": "payment", "ship": "shipping"}
"""Each saga step and the service that commits it, in saga order."""
_UNDO = {"reserve": "release", "charge": "refund", "ship": "unship"}
_KIND = {"reserve": "reservation", "charge": "charge", "ship": "shipment"}
_SEED = {
    "inventory": {"widget": 10**9, "gadget": 10**9, "gizmo": 10**9},
    "payment": {"alice": 10**12, "bob": 10**12, "carol": 10**12},
    "shipping": {"parcels": 10**9},
}


def undo_of(step: str) -> str:
    """The compensation endpoint of ``step`` (``reserve`` -> ``release``)."""
    return _UNDO[step]


def build_app(service: str, ledger: Ledger) -> web.Application:
    """The aiohttp application of one service over its ledger."""

    def body_str(body: dict[str, Any], name: str) -> str:
        value = body.get(name)
        if not isinstance(value, str):
            raise web.HTTPBadRequest(reason=f"field {name!r} must be a string")
        return value

    def commit(step: str, body: dict[str, Any]) -> dict[str, Any]:
        key, order_id, fail = body_str(body, "key"), body_str(body, "order_id"), body.get("fail") is True
        if step == "reserve":
            qty = int(body.get("qty", 1))
            return ledger.commit("reservation", key, order_id, body_str(body, "item"), qty, -qty, fail=fail)
        if step == "charge":
            amount = int(body.get("amount", 0))
            return ledger.commit("charge", key, order_id, body_str(body, "customer"), amount, -amount, fail=fail)
        return ledger.commit("shipment", key, order_id, "parcels", 1, -1, fail=fail)

    def handler(step: str, undo: bool) -> Any:
        async def handle(request: web.Request) -> web.Response:
            body = await request.json()
            try:
                # Every commit took from a balance (stock, money, parcels): undo gives it back.
                answer = ledger.undo(_UNDO[step], body_str(body, "key"), +1) if undo else commit(step, body)
            except Declined as exc:
                return web.json_response({"reason": exc.reason}, status=exc.status)
            return web.json_response(answer)

        return handle

    app = web.Application()
    for step, owner in COMMITS.items():
        if owner == service:
            app.router.add_post(f"/{step}", handler(step, undo=False))
            app.router.add_post(f"/{_UNDO[step]}", handler(step, undo=True))

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "service": service})

    app.router.add_get("/healthz", healthz)
    return app


class ServiceDeclinedError(Exception):
    """The service declined for a business reason (a 4xx): the saga compensates."""


class ServiceDownError(Exception):
    """The service answered 5xx or could not be reached: retried by every system."""


class ServiceClient:
    """One keep-alive aiohttp session per process and event loop, made on first use."""

    def __init__(self, urls: dict[str, str]) -> None:
        self.urls = urls
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _http(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10, connect=2))
            self._loop = loop
        return self._session

    async def post(self, step: str, order: dict[str, Any], key: str, *, undo: bool = False) -> dict[str, Any]:
        """Commit ``step`` of ``order`` under ``key`` (or compensate it, ``undo=True``).

        Raises:
            ServiceDeclinedError: a 4xx (a business decline).
            ServiceDownError: a 5xx, a refused connection or a timeout.
        """
        service = COMMITS[step]
        path = _UNDO[step] if undo else step
        body: dict[str, Any] = {"key": key}
        if not undo:
            body |= {
                "order_id": order["order_id"],
                "item": order["item"],
                "qty": order["qty"],
                "customer": order["customer"],
                "amount": order["amount"],
                "fail": order.get("fail_at") == step,
            }
        try:
            async with self._http().post(f"{self.urls[service]}/{path}", json=body) as r:
                answer = await r.json(content_type=None)
                status = r.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ServiceDownError(f"{service}/{path}: {type(exc).__name__}: {exc}") from exc
        if status >= 500:
            raise ServiceDownError(f"{service}/{path} answered {status}")
        if status >= 400:
            raise ServiceDeclinedError(str(answer.get("reason") if isinstance(answer, dict) else answer))
        return dict(answer)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def check_orders(dbs: dict[str, Path], outcomes: dict[str, str], orders: list[dict[str, Any]]) -> dict[str, Any]:
    """Check every order's effects in the services' databases against what its system said.

    A completed order has exactly one live reservation, charge and shipment; a compensated
    one has none live (what it committed was undone); an order must end as its ``fail_at``
    says (completed without one, compensated with one). ``duplicates`` counts (order, step)
    pairs with more than one row (an effect applied twice); ``repeats`` counts requests the
    services saw again under a key they had (harmless retries).

    Returns ``{"verified": bool, "problems": [...first few...], "duplicates": int, "repeats": int}``.
    """
    rows: dict[tuple[str, str], list[sqlite3.Row]] = {}
    repeats = 0
    for path in dbs.values():
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        db.row_factory = sqlite3.Row
        try:
            for row in db.execute("SELECT * FROM rows"):
                rows.setdefault((row["order_id"], row["kind"]), []).append(row)
                repeats += int(row["repeats"])
        finally:
            db.close()
    problems: list[str] = []
    duplicates = sum(1 for found in rows.values() if len(found) > 1)
    for order in orders:
        oid = order["order_id"]
        got = outcomes.get(oid)
        expected = "compensated" if order.get("fail_at") else "completed"
        if got != expected:
            problems.append(f"{oid}: ended {got!r}, expected {expected}")
            continue
        for step in STEPS:
            live = [r for r in rows.get((oid, _KIND[step]), []) if r["status"] == "live"]
            want = 1 if expected == "completed" else 0
            if len(live) != want:
                problems.append(f"{oid}: {len(live)} live {_KIND[step]} rows, expected {want}")
    return {"verified": not problems, "problems": problems[:5], "duplicates": duplicates, "repeats": repeats}


def main(argv: list[str]) -> None:
    service, port, db = argv[0], int(argv[1]), argv[2]
    if service not in SERVICES:
        raise SystemExit(f"unknown service {service!r}; one of {', '.join(SERVICES)}")
    ledger = Ledger(db, service)
    ledger.seed(_SEED[service])
    web.run_app(build_app(service, ledger), host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main(sys.argv[1:])
