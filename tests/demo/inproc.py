"""The boutique's six services in the test's own process: one gRPC server hosting them all.

Fast enough to run the checkout choreography under both interpreters in every test; the
services are the real ones, with real SQLite databases in the test's directory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from accompanist.demo.clients import Clients, address_env
from accompanist.demo.services.cart import CartService
from accompanist.demo.services.catalog import CatalogService
from accompanist.demo.services.currency import CurrencyService
from accompanist.demo.services.email import EmailService
from accompanist.demo.services.payment import PaymentService
from accompanist.demo.services.shipping import ShippingService

SIX = ("cart", "catalog", "currency", "payment", "shipping", "email")


@dataclass
class Boutique:
    """The running services, their databases, and the environment that finds them."""

    address: str
    env: dict[str, str]
    cart: CartService
    payment: PaymentService
    shipping: ShippingService
    email: EmailService

    def clients(self) -> Clients:
        return Clients(self.env)


@asynccontextmanager
async def boutique(workdir: Path) -> AsyncIterator[Boutique]:
    server = grpc.aio.server()
    services = {
        "cart": CartService(workdir / "cart.db"),
        "catalog": CatalogService(workdir / "catalog.db", seed=True),
        "currency": CurrencyService(workdir / "currency.db", seed=True),
        "payment": PaymentService(workdir / "payment.db"),
        "shipping": ShippingService(workdir / "shipping.db", seed=True),
        "email": EmailService(workdir / "email.db"),
    }
    for service in services.values():
        service.register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    address = f"127.0.0.1:{port}"
    try:
        yield Boutique(
            address,
            {address_env(s): address for s in SIX},
            services["cart"],  # type: ignore[arg-type]
            services["payment"],  # type: ignore[arg-type]
            services["shipping"],  # type: ignore[arg-type]
            services["email"],  # type: ignore[arg-type]
        )
    finally:
        await server.stop(grace=None)
