"""The Online Boutique checkout as a choreography over seven roles.

Roles: ``frontend`` (the initiator: the shop's frontend starts a checkout at its sidecar),
``cart``, ``catalog``, ``currency``, ``payment``, ``shipping`` and ``email``. Each role's
sidecar calls its own service over gRPC (:mod:`.clients`); the frontend's calls none.

The story, once, from the global point of view:

1. The frontend draws the order id (``ch.uuid``, so a replay draws the same) and tells each
   role only its part (a fan-out): the cart whose cart, shipping the address, currency the
   user's currency, payment the card, email the address to write to.
2. The cart reads the cart and sends its lines to the catalog and to shipping at once, then
   empties it: a transaction compensated by restoring it, which runs while the rest goes on.
3. The catalog prices every line (its lookups run concurrently) while shipping quotes the
   delivery: two roles that do not depend on each other work at the same time, and their
   answers meet at currency (a fan-in), which converts everything to the user's currency.
4. Payment charges the card (a transaction compensated by a refund) and tells shipping and
   email; shipping then ships (compensated by cancelling the shipment) and tells email,
   which sends the confirmation and gives the placed order to the frontend.

A card payment declines (expired, not a VISA or MasterCard) or a shipment refused (no
carrier to that country) fails the saga: every role that committed undoes it, in reverse
causal order (cancel the shipment, refund the charge, restore the cart), and every sidecar
ends the session ``compensated``. A service that is down is waited for: reads are retried
(:func:`.clients.retrying`), commits by their :data:`RETRY` policy, both idempotent by the
runtime's step keys.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import grpc

import accompanist as ac
from accompanist.demo._proto import boutique_pb2 as pb
from accompanist.demo.clients import Clients, is_business, retrying
from accompanist.demo.model import (
    TYPES,
    CartPart,
    CheckoutRequest,
    EmailPart,
    Item,
    Money,
    Order,
    OrderResult,
    PaymentPart,
    PricedItem,
    Pricing,
    ShippingPart,
    price_order,
)
from accompanist.demo.wire import (
    address_to_pb,
    card_to_pb,
    item_from_pb,
    item_to_pb,
    money_from_pb,
    money_to_pb,
    order_result_to_pb,
)

__all__ = ["ROLES", "RETRY", "app", "make_app", "make_checkout"]

Frontend, Cart, Catalog, Currency, Payment, Shipping, Email = ac.roles(
    "frontend", "cart", "catalog", "currency", "payment", "shipping", "email"
)
ROLES = (Frontend, Cart, Catalog, Currency, Payment, Shipping, Email)

RETRY = ac.Retry(attempts=40, initial=0.05, maximum=1.0)
"""Commits wait out about 35 s of a service's absence (a killed service restarts within it)."""


def _request_id(key: object, order_id: str) -> str:
    """The services' request id of a step: the runtime's step key, which a replay repeats
    (and which names the session, so no other session has it), and the order id, which makes
    the services' own records readable by order."""
    return f"{key}/{order_id}"


def _abort_if_business(exc: grpc.aio.AioRpcError) -> None:
    if is_business(exc):
        raise ac.Abort(exc.details() or exc.code().name) from exc


def make_checkout(clients: Clients) -> ac.Choreography:
    """The checkout choreography, calling the services through ``clients``."""

    # -- the frontend: the order and each role's part of it --------------------------------
    def new_order(request: CheckoutRequest, order_id: uuid.UUID) -> Order:
        return Order(str(order_id), request)

    def part_for(role: ac.Role) -> Callable[[Order], object]:
        def part(order: Order) -> object:
            r = order.request
            return {
                "cart": CartPart(order.order_id, r.user_id),
                "shipping": ShippingPart(order.order_id, r.address),
                "currency": r.user_currency,
                "payment": PaymentPart(order.order_id, r.card),
                "email": EmailPart(order.order_id, r.email, r.address),
            }[role.name]

        part.__qualname__ = f"{role.name}_part"
        return part

    # -- cart ------------------------------------------------------------------------------
    async def get_cart(part: CartPart) -> list[Item]:
        cart = await retrying(lambda: clients.cart().GetCart(pb.GetCartRequest(user_id=part.user_id)))
        return [item_from_pb(i) for i in cart.items]

    async def restore_cart(ctx: ac.TxContext, part: CartPart, taken: list[Item] | None) -> None:
        request = pb.RestoreCartRequest(request_id=_request_id(ctx.idempotency_key, part.order_id))
        await retrying(lambda: clients.cart().RestoreCart(request))

    @ac.transaction(compensate=restore_cart, name="empty_cart", retry=RETRY)
    async def empty_cart(ctx: ac.TxContext, part: CartPart) -> list[Item]:
        request = pb.EmptyCartRequest(user_id=part.user_id, request_id=_request_id(ctx.idempotency_key, part.order_id))
        try:
            cart = await clients.cart().EmptyCart(request, timeout=10, wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            _abort_if_business(exc)
            raise
        return [item_from_pb(i) for i in cart.items]

    # -- catalog and shipping: pricing and quoting, side by side ---------------------------
    async def price_items(items: list[Item]) -> list[PricedItem]:
        async def one(item: Item) -> PricedItem:
            request = pb.GetProductRequest(id=item.product_id)
            product = await retrying(lambda: clients.catalog().GetProduct(request))
            return PricedItem(item, money_from_pb(product.price_usd))

        return list(await asyncio.gather(*(one(i) for i in items)))  # every lookup at once

    async def quote(part: ShippingPart, items: list[Item]) -> Money:
        request = pb.GetQuoteRequest(address=address_to_pb(part.address), items=[item_to_pb(i) for i in items])
        answer = await retrying(lambda: clients.shipping().GetQuote(request))
        return money_from_pb(answer.cost_usd)

    # -- currency ------------------------------------------------------------------------------
    async def convert_all(quotes: dict[str, object], to_code: str) -> Pricing:
        async def convert(m: Money) -> Money:
            request = pb.CurrencyConversionRequest(to_code=to_code, **{"from": money_to_pb(m)})
            return money_from_pb(await retrying(lambda: clients.currency().Convert(request)))

        lines: list[PricedItem] = quotes["catalog"]  # type: ignore[assignment]
        shipping: Money = quotes["shipping"]  # type: ignore[assignment]
        converted = await asyncio.gather(convert(shipping), *(convert(line.cost) for line in lines))
        priced = [PricedItem(line.item, cost) for line, cost in zip(lines, converted[1:], strict=True)]
        return price_order(priced, converted[0])

    # -- payment ---------------------------------------------------------------------------
    async def refund(ctx: ac.TxContext, part: PaymentPart, pricing: Pricing, transaction_id: str | None) -> None:
        request = pb.RefundRequest(request_id=_request_id(ctx.idempotency_key, part.order_id))
        await retrying(lambda: clients.payment().Refund(request))

    @ac.transaction(compensate=refund, name="charge", retry=RETRY)
    async def charge(ctx: ac.TxContext, part: PaymentPart, pricing: Pricing) -> str:
        request = pb.ChargeRequest(
            amount=money_to_pb(pricing.total),
            credit_card=card_to_pb(part.card),
            request_id=_request_id(ctx.idempotency_key, part.order_id),
            order_id=part.order_id,
        )
        try:
            answer = await clients.payment().Charge(request, timeout=10, wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            _abort_if_business(exc)
            raise
        return answer.transaction_id

    # -- shipping --------------------------------------------------------------------------
    async def cancel_shipment(
        ctx: ac.TxContext, part: ShippingPart, items: list[Item], paid: str, tracking: str | None
    ) -> None:
        request = pb.CancelShipmentRequest(request_id=_request_id(ctx.idempotency_key, part.order_id))
        await retrying(lambda: clients.shipping().CancelShipment(request))

    @ac.transaction(compensate=cancel_shipment, name="ship", retry=RETRY)
    async def ship(ctx: ac.TxContext, part: ShippingPart, items: list[Item], paid: str) -> str:
        request = pb.ShipOrderRequest(
            address=address_to_pb(part.address),
            items=[item_to_pb(i) for i in items],
            request_id=_request_id(ctx.idempotency_key, part.order_id),
            order_id=part.order_id,
        )
        try:
            answer = await clients.shipping().ShipOrder(request, timeout=10, wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            _abort_if_business(exc)
            raise
        return answer.tracking_id

    # -- email -----------------------------------------------------------------------------
    async def confirm(part: EmailPart, pricing: Pricing, transaction_id: str, tracking: str) -> OrderResult:
        result = OrderResult(
            order_id=part.order_id,
            shipping_tracking_id=tracking,
            shipping_cost=pricing.shipping,
            shipping_address=part.address,
            items=pricing.items,
            total=pricing.total,
            transaction_id=transaction_id,
        )
        request = pb.SendOrderConfirmationRequest(
            email=part.email, order=order_result_to_pb(result), request_id=_request_id(ac.current_step(), part.order_id)
        )
        await retrying(lambda: clients.email().SendOrderConfirmation(request))
        return result

    @ac.choreography("checkout", roles=ROLES, types=TYPES)
    async def checkout(ch: ac.Choreo, request: ac.Located[CheckoutRequest]) -> ac.Located[OrderResult]:
        """Place one order: see the module docstring for the story."""
        order = await ch.locally(Frontend, new_order, request, await ch.uuid(Frontend))
        # Every part first, then every send: sends in a row are made durable in one commit.
        told = [Cart, Shipping, Currency, Payment, Email]
        mine = {role: await ch.locally(Frontend, part_for(role), order) for role in told}

        async def tell(ch: ac.Choreo, role: ac.Role) -> ac.Located[object]:
            return await ch.comm(Frontend, role, mine[role])

        parts = await ch.fanout(told, tell)

        lines = await ch.locally(Cart, get_cart, parts[Cart])
        items = await ch.comm(Cart, [Catalog, Shipping], lines)
        await ch.transaction(Cart, empty_cart, parts[Cart])  # runs while catalog and shipping work

        async def price_or_quote(ch: ac.Choreo, role: ac.Role) -> ac.Located[object]:
            if role == Catalog:
                return await ch.comm(Catalog, Currency, await ch.locally(Catalog, price_items, items))
            return await ch.comm(Shipping, Currency, await ch.locally(Shipping, quote, parts[Shipping], items))

        quotes = await ch.fanin([Catalog, Shipping], Currency, price_or_quote)
        pricing = await ch.locally(Currency, convert_all, quotes, parts[Currency])
        priced = await ch.comm(Currency, [Payment, Email], pricing)

        transaction_id = await ch.transaction(Payment, charge, parts[Payment], priced)
        paid = await ch.comm(Payment, [Shipping, Email], transaction_id)
        tracking = await ch.transaction(Shipping, ship, parts[Shipping], items, paid)
        tracked = await ch.comm(Shipping, Email, tracking)
        result = await ch.locally(Email, confirm, parts[Email], priced, paid, tracked)
        return await ch.comm(Email, Frontend, result)

    return checkout


def make_app(clients: Clients) -> ac.App:
    """The app every sidecar of the demo serves: the checkout, and hooks that open each
    role's channel to its service once and close it at shutdown."""
    app = ac.App(make_checkout(clients))
    app.on_startup(clients.open_role)
    app.on_shutdown(clients.close_role)
    return app


app = make_app(Clients())
"""What ``accompanist sidecar --app accompanist.demo.checkout:app`` serves."""
