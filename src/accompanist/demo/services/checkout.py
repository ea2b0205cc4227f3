"""The orchestrated checkout: one process calling the services in turn, as the Online Boutique does.

It is kept beside the choreography for comparison (``accompanist demo`` measures both on the
same orders). As in the original, every step waits for the previous one: the cart, then
each product's price and its conversion one after the other, the quote and its conversion,
the charge, the shipment, emptying the cart, the email. Unlike the original it undoes the
charge when the shipment is refused, so the books of both checkouts can be checked alike;
but it keeps nothing durable: a crash of this process between the charge and the refund
leaves the money taken, which is what the choreography's saga is for.

Its request ids are derived from the frontend's request id, so a retried ``PlaceOrder`` has
no second effect. A refusal is answered with the service's status, and trailing metadata
``outcome`` says ``compensated`` (something was undone) or ``failed`` (nothing had happened).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc

from accompanist.demo._proto import boutique_pb2 as pb
from accompanist.demo._proto import boutique_pb2_grpc as pb_grpc
from accompanist.demo.clients import CALL_TIMEOUT as T
from accompanist.demo.clients import Clients, is_business
from accompanist.demo.model import OrderResult, PricedItem, price_order
from accompanist.demo.services.base import Context
from accompanist.demo.wire import address_from_pb, item_from_pb, money_from_pb, money_to_pb, order_result_to_pb

__all__ = ["CheckoutService", "ORDER_NAMESPACE"]

ORDER_NAMESPACE = uuid.UUID("5f6c7e1a-0b7d-4c59-9a39-6f1f3c2d8e41")
"""Order ids are ``uuid5(ORDER_NAMESPACE, request_id)``: the same request, the same order."""

SERVICES = ("cart", "catalog", "currency", "payment", "shipping", "email")


class CheckoutService(pb_grpc.CheckoutServiceServicer):
    """``PlaceOrder``, calling the other services through ``clients``."""

    def __init__(self, db_path: Path | None = None, seed: bool = False, clients: Clients | None = None) -> None:
        self.clients = clients or Clients()

    def register(self, server: grpc.aio.Server) -> None:
        """Add this servicer to ``server``."""
        pb_grpc.add_CheckoutServiceServicer_to_server(self, server)

    async def open(self) -> None:
        """Open the channels to every service."""
        await self.clients.open(*SERVICES)

    async def PlaceOrder(self, request: pb.PlaceOrderRequest, context: Context) -> pb.PlaceOrderResponse:  # noqa: N802
        """Check out the user's cart; see the module docstring."""
        c = self.clients
        rid = request.request_id
        if not rid:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "PlaceOrder needs a request_id")
        order_id = str(uuid.uuid5(ORDER_NAMESPACE, rid))

        charged = False
        try:
            cart = await c.cart().GetCart(pb.GetCartRequest(user_id=request.user_id), timeout=T, wait_for_ready=True)
            lines: list[PricedItem] = []
            for item in cart.items:  # one after the other, as the Online Boutique does
                product = await c.catalog().GetProduct(
                    pb.GetProductRequest(id=item.product_id), timeout=T, wait_for_ready=True
                )
                conversion = pb.CurrencyConversionRequest(to_code=request.user_currency, **{"from": product.price_usd})
                price = await c.currency().Convert(conversion, timeout=T, wait_for_ready=True)
                lines.append(PricedItem(item_from_pb(item), money_from_pb(price)))
            quote = await c.shipping().GetQuote(
                pb.GetQuoteRequest(address=request.address, items=cart.items), timeout=T, wait_for_ready=True
            )
            conversion = pb.CurrencyConversionRequest(to_code=request.user_currency, **{"from": quote.cost_usd})
            shipping_cost = money_from_pb(await c.currency().Convert(conversion, timeout=T, wait_for_ready=True))
            pricing = price_order(lines, shipping_cost)
            charge = pb.ChargeRequest(
                amount=money_to_pb(pricing.total),
                credit_card=request.credit_card,
                request_id=f"{rid}/charge",
                order_id=order_id,
            )
            paid = await c.payment().Charge(charge, timeout=T, wait_for_ready=True)
            charged = True
            shipment = pb.ShipOrderRequest(
                address=request.address, items=cart.items, request_id=f"{rid}/ship", order_id=order_id
            )
            shipped = await c.shipping().ShipOrder(shipment, timeout=T, wait_for_ready=True)
            await c.cart().EmptyCart(
                pb.EmptyCartRequest(user_id=request.user_id, request_id=f"{rid}/empty"), timeout=T, wait_for_ready=True
            )
            result = OrderResult(
                order_id=order_id,
                shipping_tracking_id=shipped.tracking_id,
                shipping_cost=shipping_cost,
                shipping_address=address_from_pb(request.address),
                items=pricing.items,
                total=pricing.total,
                transaction_id=paid.transaction_id,
            )
            confirmation = pb.SendOrderConfirmationRequest(
                email=request.email, order=order_result_to_pb(result), request_id=f"{rid}/email"
            )
            await c.email().SendOrderConfirmation(confirmation, timeout=T, wait_for_ready=True)
            return pb.PlaceOrderResponse(order=order_result_to_pb(result))
        except grpc.aio.AioRpcError as exc:
            if charged and is_business(exc):  # the shipment was refused: give the money back
                await c.payment().Refund(pb.RefundRequest(request_id=f"{rid}/charge"), timeout=T, wait_for_ready=True)
            context.set_trailing_metadata((("outcome", "compensated" if charged else "failed"),))
            await context.abort(exc.code(), exc.details() or exc.code().name)
            raise  # pragma: no cover - abort raises
