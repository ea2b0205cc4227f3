"""gRPC clients of the demo's services: one channel per service, opened once, closed cleanly.

The sidecars open the channel of their own role's service in the app's startup hook and
close it in its shutdown hook; the orchestrated checkout and the frontend open theirs when
they start. Where each service listens comes from the environment (``BOUTIQUE_CART_ADDR``
and so on), which :mod:`accompanist.demo.cluster` sets for every process it starts.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import grpc

from accompanist.demo._proto import boutique_pb2_grpc as pb_grpc

__all__ = ["BUSINESS_CODES", "SERVICE_OF_ROLE", "Clients", "address_env", "is_business", "retrying"]

T = TypeVar("T")

SERVICE_OF_ROLE = {
    "cart": "cart",
    "catalog": "catalog",
    "currency": "currency",
    "payment": "payment",
    "shipping": "shipping",
    "email": "email",
}
"""The service each role of the checkout choreography calls (the frontend's calls none)."""

BUSINESS_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)
"""Statuses by which a service declines for a business reason; any other is infrastructure."""

CALL_TIMEOUT = 10.0
"""Seconds one call may take (waiting for a restarting service included)."""


def address_env(service: str) -> str:
    """The environment variable holding ``service``'s ``HOST:PORT``."""
    return f"BOUTIQUE_{service.upper()}_ADDR"


def is_business(error: BaseException) -> bool:
    """Whether ``error`` is a service declining (not a failure of the network or a process)."""
    return isinstance(error, grpc.aio.AioRpcError) and error.code() in BUSINESS_CODES


async def retrying(call: Callable[[], Awaitable[T]], *, deadline: float = 60.0) -> T:
    """Run an idempotent ``call`` until it answers, through a service's restart.

    Business refusals are raised at once; ``UNAVAILABLE`` and timeouts are retried with a
    growing pause for up to ``deadline`` seconds.
    """
    end = time.monotonic() + deadline
    pause = 0.05
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            if is_business(exc) or time.monotonic() + pause > end:
                raise
        await asyncio.sleep(pause)
        pause = min(pause * 2, 1.0)


class Clients:
    """Channels to the services, by service name, and a typed stub for each.

    Args:
        env: where the addresses are read (``BOUTIQUE_<SERVICE>_ADDR``).
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = env
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _address(self, service: str) -> str:
        env = os.environ if self._env is None else self._env
        address = env.get(address_env(service))
        if not address:
            raise RuntimeError(f"where the {service} service listens is not set: {address_env(service)}=HOST:PORT")
        return address

    async def open(self, *services: str) -> None:
        """Open a channel to each of ``services`` (no connection is made until the first call)."""
        for service in services:
            if service not in self._channels:
                self._channels[service] = grpc.aio.insecure_channel(self._address(service))

    async def close(self) -> None:
        """Close every channel."""
        channels, self._channels = list(self._channels.values()), {}
        await asyncio.gather(*(c.close() for c in channels))

    async def open_role(self, role: str) -> None:
        """Startup hook of the checkout app: open the channel of ``role``'s own service."""
        service = SERVICE_OF_ROLE.get(role)
        if service is not None:
            await self.open(service)

    async def close_role(self, role: str) -> None:
        """Shutdown hook of the checkout app: close ``role``'s channel."""
        channel = self._channels.pop(SERVICE_OF_ROLE.get(role, ""), None)
        if channel is not None:
            await channel.close()

    def _channel(self, service: str) -> grpc.aio.Channel:
        channel = self._channels.get(service)
        if channel is None:
            raise RuntimeError(f"no channel to the {service} service is open here: run the app's startup hooks")
        return channel

    def cart(self) -> pb_grpc.CartServiceAsyncStub:
        """The cart service."""
        return pb_grpc.CartServiceStub(self._channel("cart"))

    def catalog(self) -> pb_grpc.ProductCatalogServiceAsyncStub:
        """The product catalog service."""
        return pb_grpc.ProductCatalogServiceStub(self._channel("catalog"))

    def currency(self) -> pb_grpc.CurrencyServiceAsyncStub:
        """The currency service."""
        return pb_grpc.CurrencyServiceStub(self._channel("currency"))

    def payment(self) -> pb_grpc.PaymentServiceAsyncStub:
        """The payment service."""
        return pb_grpc.PaymentServiceStub(self._channel("payment"))

    def shipping(self) -> pb_grpc.ShippingServiceAsyncStub:
        """The shipping service."""
        return pb_grpc.ShippingServiceStub(self._channel("shipping"))

    def email(self) -> pb_grpc.EmailServiceAsyncStub:
        """The email service."""
        return pb_grpc.EmailServiceStub(self._channel("email"))

    def checkout(self) -> pb_grpc.CheckoutServiceAsyncStub:
        """The orchestrated checkout service."""
        return pb_grpc.CheckoutServiceStub(self._channel("checkout"))
