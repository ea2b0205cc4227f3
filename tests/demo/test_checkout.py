"""The checkout choreography gives the same result under both interpreters, on sidecars, and
as the orchestrated checkout: the same outcome, the same failure, the same books."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import accompanist as ac
from accompanist.demo._proto import boutique_pb2 as pb
from accompanist.demo.checkout import ROLES, make_app
from accompanist.demo.clients import Clients
from accompanist.demo.cluster import free_ports
from accompanist.demo.model import OrderResult
from accompanist.demo.orders import DemoOrder, make_orders
from accompanist.demo.services.checkout import CheckoutService
from accompanist.demo.verify import expected_pricing
from accompanist.demo.wire import item_to_pb, order_result_from_pb, request_to_pb
from tests.demo.inproc import Boutique, boutique

ORDERS = make_orders(10)
CASES = {"completes": ORDERS[0], "card expired": ORDERS[3], "no carrier": ORDERS[7]}

Runner = Callable[[Boutique, DemoOrder, Path], Awaitable[Any]]


async def fill(b: Boutique, order: DemoOrder) -> None:
    clients = b.clients()
    await clients.open("cart")
    for item in order.items:
        await clients.cart().AddItem(pb.AddItemRequest(user_id=order.user_id, item=item_to_pb(item)))
    await clients.close()


def books(b: Boutique, order: DemoOrder) -> dict[str, Any]:
    """Everything the services hold about the one order placed, ids left out."""

    def rows(db: Any, sql: str) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in db.conn.execute(sql).fetchall()]

    return {
        "charges": rows(b.payment.db, "SELECT currency, amount, status FROM charges"),
        "shipments": rows(b.shipping.db, "SELECT country, items, status FROM shipments"),
        "stock": rows(b.shipping.db, "SELECT * FROM stock EXCEPT SELECT * FROM initial_stock"),
        "emptied": rows(b.cart.db, "SELECT user_id, items, status FROM emptied"),
        "cart": rows(b.cart.db, "SELECT product_id, quantity FROM items"),
        "emails": rows(b.email.db, "SELECT email FROM sent"),
    }


def outcome(result: Any = None, error: ac.SessionFailedError | None = None) -> dict[str, Any]:
    if error is not None:
        f = error.failure
        return {"status": error.status, "role": f.role, "transaction": f.transaction, "message": f.message}
    assert isinstance(result, OrderResult)
    return {"status": "completed", "items": result.items, "shipping": result.shipping_cost, "total": result.total}


async def central(b: Boutique, order: DemoOrder, tmp: Path) -> Any:
    app = make_app(b.clients())
    return await ac.run_central(app.get("checkout"), order.request, app=app)


async def projected(b: Boutique, order: DemoOrder, tmp: Path) -> Any:
    app = make_app(b.clients())
    return await ac.testing.run_projected(app.get("checkout"), order.request, app=app)


async def sidecars(b: Boutique, order: DemoOrder, tmp: Path) -> Any:
    """Seven fault-tolerant sidecars (SQLite stores, TCP with HMAC) embedded in this process."""
    app = make_app(b.clients())
    names = [r.name for r in ROLES]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    key = secrets.token_hex(16)
    async with contextlib.AsyncExitStack() as stack:
        running = {}
        for role in names:
            config = ac.SidecarConfig(
                role=role,
                listen=("127.0.0.1", ports[role]),
                peers={p: ("127.0.0.1", port) for p, port in ports.items() if p != role},
                store=f"sqlite:///{tmp / role}-sidecar.db",
                hmac_key=key,
                engine=ac.EngineConfig(mode=ac.Mode.FAULT_TOLERANT, receive_timeout=20),
            )
            running[role] = await stack.enter_async_context(ac.Sidecar(config, app))
        return await running["frontend"].run("checkout", order.request, timeout=60)


async def orchestrated(b: Boutique, order: DemoOrder, tmp: Path) -> Any:
    """The checkout service calling the same services in turn (its undo differs: see below)."""
    service = CheckoutService(clients=b.clients())
    await service.open()

    class Context:
        def __init__(self) -> None:
            self.metadata: tuple[tuple[str, str], ...] = ()

        def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
            self.metadata = metadata

        async def abort(self, code: Any, detail: str) -> None:
            raise ac.SessionFailedError("orchestrated", "?", detail, dict(self.metadata)["outcome"])

    try:
        placed = await service.PlaceOrder(request_to_pb(order.request, order.request_id), Context())  # type: ignore[arg-type]
    finally:
        await service.clients.close()
    return order_result_from_pb(placed.order)


RUNNERS: dict[str, Runner] = {"central": central, "projected": projected, "sidecars": sidecars}


async def run_case(runner: Runner, order: DemoOrder, tmp: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    tmp.mkdir()
    async with boutique(tmp) as b:
        await fill(b, order)
        try:
            found = outcome(await runner(b, order, tmp))
        except ac.SessionFailedError as exc:
            found = outcome(error=exc) if exc.failure is not None else {"status": exc.status, "message": exc.reason}
        return found, books(b, order)


@pytest.mark.parametrize("case", list(CASES))
async def test_the_same_result_everywhere(tmp_path: Path, case: str) -> None:
    order = CASES[case]
    results = {name: await run_case(runner, order, tmp_path / name) for name, runner in RUNNERS.items()}
    first_outcome, first_books = results["central"]
    for name, (found, held) in results.items():
        assert found == first_outcome, name
        assert held == first_books, name
    pricing = expected_pricing(order)
    lines = [(i.product_id, i.quantity) for i in order.items]
    if case == "completes":
        assert first_outcome["total"] == pricing.total and first_outcome["items"] == pricing.items
        assert first_books["charges"] == [(pricing.total.currency_code, str(pricing.total.amount), "charged")]
        assert [s[2] for s in first_books["shipments"]] == ["shipped"] and first_books["stock"]
        assert first_books["cart"] == [] and [e[2] for e in first_books["emptied"]] == ["emptied"]
        assert first_books["emails"] == [(order.request.email,)]
        return
    # A decline compensates: the charge (if any) refunded, the shipment (if any) cancelled, the
    # cart restored; no email.
    assert first_outcome["status"] == "compensated"
    assert sorted(first_books["cart"]) == sorted(lines)
    assert first_books["emails"] == [] and first_books["stock"] == []
    assert [e[2] for e in first_books["emptied"]] == ["restored"]
    if case == "card expired":
        assert (first_outcome["role"], first_outcome["transaction"]) == ("payment", "charge")
        assert first_outcome["message"] == "Your credit card (ending 0454) expired on 1/2021"
        assert first_books["charges"] == [] and first_books["shipments"] == []
    else:
        assert (first_outcome["role"], first_outcome["transaction"]) == ("shipping", "ship")
        assert first_outcome["message"] == "no carrier delivers to Antarctica"
        assert [c[2] for c in first_books["charges"]] == ["refunded"] and first_books["shipments"] == []


@pytest.mark.parametrize("case", list(CASES))
async def test_the_orchestrated_checkout_prices_and_undoes_alike(tmp_path: Path, case: str) -> None:
    order = CASES[case]
    chosen, chosen_books = await run_case(central, order, tmp_path / "central")
    found, held = await run_case(orchestrated, order, tmp_path / "orchestrated")
    if case == "completes":
        assert found == chosen and held == chosen_books
    elif case == "no carrier":  # refunded; its cart was never emptied (that comes after the shipment)
        assert found["status"] == "compensated" and found["message"] == "no carrier delivers to Antarctica"
        assert (
            held["charges"] == chosen_books["charges"]
            and held["emptied"] == []
            and held["cart"] == chosen_books["cart"]
        )
    else:  # declined before anything happened: nothing to undo
        assert found["status"] == "failed" and held["charges"] == [] and held["emptied"] == []
        assert held["cart"] == chosen_books["cart"]


def test_the_choreography_is_declared_as_the_issue_says() -> None:
    checkout = make_app(Clients({})).get("checkout")
    assert [r.name for r in checkout.roles] == [
        "frontend",
        "cart",
        "catalog",
        "currency",
        "payment",
        "shipping",
        "email",
    ]
    assert {t.name for t in checkout.transactions} == {"empty_cart", "charge", "ship"}
    assert checkout.saga


async def test_a_role_without_its_service_address_fails_to_start() -> None:
    app = make_app(Clients({}))
    with pytest.raises(ac.LifecycleError, match="BOUTIQUE_CART_ADDR=HOST:PORT"):
        async with app.lifecycle.running(["frontend", "cart"]):
            pass
