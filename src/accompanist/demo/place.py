"""``python -m accompanist.demo.place``: place a few checkouts on a boutique that runs elsewhere.

Why apart from ``accompanist demo``: the demo starts its own processes on one machine; a
boutique deployed on Kubernetes (``deploy/k8s``) or on hosts of its own is already running,
and its operator wants to see orders go through it. This fills each order's cart at the cart
service, checks it out at the frontend (through the choreography, or the orchestrated
checkout) and prints each outcome. Where the two services listen comes from
``BOUTIQUE_CART_ADDR`` and ``BOUTIQUE_FRONTEND_ADDR`` (``HOST:PORT``), as for every process
of the demo. The exit status is 0 only if every order ended as its data calls for (every
tenth pays with an expired card or ships where no carrier goes, and is compensated).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid

import grpc

from accompanist.demo._proto import boutique_pb2 as pb
from accompanist.demo._proto import boutique_pb2_grpc as pb_grpc
from accompanist.demo.clients import address_env
from accompanist.demo.orders import DemoOrder, make_orders
from accompanist.demo.wire import item_to_pb, request_to_pb

__all__ = ["main", "place_orders"]


async def place_orders(
    orders: list[DemoOrder], *, cart: str, frontend: str, via: int = pb.CHOREOGRAPHY, timeout: float = 300
) -> dict[str, str]:
    """Fill each order's cart at ``cart``, check it out at ``frontend``; ``{request_id: status}``.

    Orders are placed one at a time, so the output reads as a log of the saga's outcomes.
    """
    outcomes: dict[str, str] = {}
    async with grpc.aio.insecure_channel(cart) as cart_channel, grpc.aio.insecure_channel(frontend) as front_channel:
        carts = pb_grpc.CartServiceStub(cart_channel)
        shop = pb_grpc.FrontendServiceStub(front_channel)
        for order in orders:
            for item in order.items:
                add = pb.AddItemRequest(user_id=order.user_id, item=item_to_pb(item))
                await carts.AddItem(add, timeout=timeout, wait_for_ready=True)
            request = pb.CheckoutRequest(order=request_to_pb(order.request, order.request_id), via=via)  # type: ignore[arg-type]
            began = time.perf_counter()
            answer = await shop.Checkout(request, timeout=timeout, wait_for_ready=True)
            took = (time.perf_counter() - began) * 1000
            expected = _expected(order, via)
            outcomes[order.request_id] = answer.status
            mark = "ok" if answer.status in expected else f"UNEXPECTED (expected {' or '.join(expected)})"
            detail = answer.order.order_id or answer.error
            print(f"{order.request_id}: {answer.status} in {took:.0f} ms, {detail} [{mark}]", flush=True)
    return outcomes


def _expected(order: DemoOrder, via: int) -> tuple[str, ...]:
    if order.fails_at is None:
        return ("completed",)
    # The orchestrated checkout keeps nothing durable: a declined card there ends "failed".
    return ("compensated",) if via == pb.CHOREOGRAPHY else ("compensated", "failed")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, place the orders, say whether each ended as expected."""
    parser = argparse.ArgumentParser(prog="python -m accompanist.demo.place", description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=10, help="how many orders (default 10)")
    parser.add_argument("--via", choices=("choreography", "orchestrator"), default="choreography")
    parser.add_argument("--prefix", default=None, help="request id prefix (default: a fresh one per run)")
    args = parser.parse_args(argv)
    addresses = {s: os.environ.get(address_env(s), "") for s in ("cart", "frontend")}
    missing = [address_env(s) for s, a in addresses.items() if not a]
    if missing:
        print(f"error: set {' and '.join(missing)} to HOST:PORT", file=sys.stderr)
        return 2
    prefix = args.prefix or f"k-{uuid.uuid4().hex[:8]}"  # a rerun must not reuse request ids
    orders = make_orders(args.orders, prefix=prefix)
    via = pb.CHOREOGRAPHY if args.via == "choreography" else pb.ORCHESTRATOR
    outcomes = asyncio.run(place_orders(orders, cart=addresses["cart"], frontend=addresses["frontend"], via=via))
    wrong = [o.request_id for o in orders if outcomes[o.request_id] not in _expected(o, via)]
    print(f"{len(orders) - len(wrong)} of {len(orders)} orders ended as expected", flush=True)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
