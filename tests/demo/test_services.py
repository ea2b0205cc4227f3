"""Each boutique service on its own: answers, business refusals, idempotency by request id, undo."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from accompanist.demo._proto import boutique_pb2 as pb
from accompanist.demo.clients import Clients
from accompanist.demo.services.payment import card_problem
from accompanist.demo.services.shipping import STOCK
from tests.demo.inproc import SIX, Boutique, boutique

GOOD = pb.CreditCardInfo(
    credit_card_number="4432-8015-6152-0454", credit_card_cvv=672, credit_card_expiration_year=2039,
    credit_card_expiration_month=1,
)  # fmt: skip
HOME = pb.Address(street_address="1 Main St", city="Springfield", state="IL", country="United States", zip_code=62701)


@pytest.fixture
async def shop(tmp_path: Path) -> AsyncIterator[tuple[Boutique, Clients]]:
    async with boutique(tmp_path) as b:
        clients = b.clients()
        await clients.open(*SIX)
        try:
            yield b, clients
        finally:
            await clients.close()


async def refused(call: object) -> grpc.aio.AioRpcError:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError("the call was not refused")


async def test_cart_empties_once_and_restores_exactly(shop: tuple[Boutique, Clients]) -> None:
    _, c = shop
    for product, quantity in (("OLJCESPC7Z", 2), ("6E92ZMYYFZ", 1), ("OLJCESPC7Z", 1)):
        await c.cart().AddItem(
            pb.AddItemRequest(user_id="ann", item=pb.CartItem(product_id=product, quantity=quantity))
        )
    cart = await c.cart().GetCart(pb.GetCartRequest(user_id="ann"))
    assert [(i.product_id, i.quantity) for i in cart.items] == [("6E92ZMYYFZ", 1), ("OLJCESPC7Z", 3)]
    first = await c.cart().EmptyCart(pb.EmptyCartRequest(user_id="ann", request_id="r1"))
    again = await c.cart().EmptyCart(pb.EmptyCartRequest(user_id="ann", request_id="r1"))
    assert first == again and len(first.items) == 2  # the repeat answers the first answer
    assert not (await c.cart().GetCart(pb.GetCartRequest(user_id="ann"))).items
    await c.cart().AddItem(pb.AddItemRequest(user_id="ann", item=pb.CartItem(product_id="9SIQT8TOJO", quantity=4)))
    await c.cart().RestoreCart(pb.RestoreCartRequest(request_id="r1"))
    await c.cart().RestoreCart(pb.RestoreCartRequest(request_id="r1"))  # once only
    cart = await c.cart().GetCart(pb.GetCartRequest(user_id="ann"))
    assert [(i.product_id, i.quantity) for i in cart.items] == [("6E92ZMYYFZ", 1), ("9SIQT8TOJO", 4), ("OLJCESPC7Z", 3)]


async def test_cart_restored_before_emptied_refuses_the_late_empty(shop: tuple[Boutique, Clients]) -> None:
    b, c = shop
    await c.cart().AddItem(pb.AddItemRequest(user_id="bob", item=pb.CartItem(product_id="OLJCESPC7Z", quantity=1)))
    await c.cart().RestoreCart(pb.RestoreCartRequest(request_id="late"))
    error = await refused(c.cart().EmptyCart(pb.EmptyCartRequest(user_id="bob", request_id="late")))
    assert error.code() == grpc.StatusCode.ABORTED and "restored before it was emptied" in (error.details() or "")
    assert len((await c.cart().GetCart(pb.GetCartRequest(user_id="bob"))).items) == 1
    rows = b.cart.db.conn.execute("SELECT status FROM emptied WHERE request_id = 'late'").fetchall()
    assert [r["status"] for r in rows] == ["restored-before-emptied"]


async def test_catalog_and_currency(shop: tuple[Boutique, Clients]) -> None:
    _, c = shop
    products = await c.catalog().ListProducts(pb.Empty())
    assert len(products.products) == 9
    mug = await c.catalog().GetProduct(pb.GetProductRequest(id="6E92ZMYYFZ"))
    assert (mug.name, mug.price_usd.units, mug.price_usd.nanos) == ("Mug", 8, 990_000_000)
    assert (await refused(c.catalog().GetProduct(pb.GetProductRequest(id="nope")))).code() == grpc.StatusCode.NOT_FOUND
    # 8.99 USD / 1.1305 USD per EUR * 126.40 JPY per EUR = 1005.16 JPY, to the cent.
    converted = await c.currency().Convert(pb.CurrencyConversionRequest(to_code="JPY", **{"from": mug.price_usd}))
    assert (converted.currency_code, converted.units, converted.nanos) == ("JPY", 1005, 160_000_000)
    unknown = pb.CurrencyConversionRequest(to_code="XXX", **{"from": mug.price_usd})
    assert (await refused(c.currency().Convert(unknown))).code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "EUR" in (await c.currency().GetSupportedCurrencies(pb.Empty())).currency_codes


async def test_payment_charges_once_declines_bad_cards_and_refunds(shop: tuple[Boutique, Clients]) -> None:
    b, c = shop
    amount = pb.Money(currency_code="EUR", units=12, nanos=500_000_000)
    charge = pb.ChargeRequest(amount=amount, credit_card=GOOD, request_id="c1", order_id="o1")
    first, again = await c.payment().Charge(charge), await c.payment().Charge(charge)
    assert first.transaction_id == again.transaction_id
    rows = b.payment.db.conn.execute("SELECT amount, currency, status FROM charges").fetchall()
    assert [tuple(r) for r in rows] == [("12.5", "EUR", "charged")]
    expired = pb.CreditCardInfo()
    expired.CopyFrom(GOOD)
    expired.credit_card_expiration_year = 2021
    error = await refused(
        c.payment().Charge(pb.ChargeRequest(amount=amount, credit_card=expired, request_id="c2", order_id="o2"))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Your credit card (ending 0454) expired on 1/2021"
    # The refusal is remembered: the same request id is refused the same way, nothing charged.
    again_error = await refused(
        c.payment().Charge(pb.ChargeRequest(amount=amount, credit_card=GOOD, request_id="c2", order_id="o2"))
    )
    assert again_error.details() == error.details()
    refund = await c.payment().Refund(pb.RefundRequest(request_id="c1"))
    assert refund.transaction_id == first.transaction_id
    await c.payment().Refund(pb.RefundRequest(request_id="c1"))
    await c.payment().Refund(pb.RefundRequest(request_id="c3"))  # before its charge...
    late = await refused(
        c.payment().Charge(pb.ChargeRequest(amount=amount, credit_card=GOOD, request_id="c3", order_id="o3"))
    )
    assert late.code() == grpc.StatusCode.ABORTED  # ...so the charge never happens
    statuses = dict(b.payment.db.conn.execute("SELECT request_id, status FROM charges").fetchall())
    assert statuses == {"c1": "refunded", "c3": "refunded-before-charged"}


def test_card_checks() -> None:
    today = dt.date(2026, 6, 1)
    assert card_problem(GOOD, today) is None
    amex = pb.CreditCardInfo(credit_card_number="378282246310005", credit_card_expiration_year=2039)
    assert "Only VISA or MasterCard" in (card_problem(amex, today) or "")
    typo = pb.CreditCardInfo(credit_card_number="4432-8015-6152-0455", credit_card_expiration_year=2039)
    assert card_problem(typo, today) == "Credit card info is invalid"
    this_month = pb.CreditCardInfo()
    this_month.CopyFrom(GOOD)
    this_month.credit_card_expiration_year, this_month.credit_card_expiration_month = 2026, 6
    assert card_problem(this_month, today) is None


async def test_shipping_quotes_ships_once_refuses_and_cancels(shop: tuple[Boutique, Clients]) -> None:
    b, c = shop
    items = [pb.CartItem(product_id="OLJCESPC7Z", quantity=3)]
    quote = await c.shipping().GetQuote(pb.GetQuoteRequest(address=HOME, items=items))
    assert (quote.cost_usd.units, quote.cost_usd.nanos) == (8, 990_000_000)
    assert (await c.shipping().GetQuote(pb.GetQuoteRequest(address=HOME))).cost_usd.units == 0

    def stock() -> int:
        row = b.shipping.db.conn.execute("SELECT quantity FROM stock WHERE product_id = 'OLJCESPC7Z'").fetchone()
        return int(row["quantity"])

    ship = pb.ShipOrderRequest(address=HOME, items=items, request_id="s1", order_id="o1")
    first, again = await c.shipping().ShipOrder(ship), await c.shipping().ShipOrder(ship)
    assert first.tracking_id == again.tracking_id and first.tracking_id.startswith("TRK-")
    assert stock() == STOCK - 3
    far = pb.Address()
    far.CopyFrom(HOME)
    far.country = "Antarctica"
    error = await refused(c.shipping().ShipOrder(pb.ShipOrderRequest(address=far, items=items, request_id="s2")))
    assert (
        error.code() == grpc.StatusCode.FAILED_PRECONDITION and error.details() == "no carrier delivers to Antarctica"
    )
    too_many = [pb.CartItem(product_id="OLJCESPC7Z", quantity=STOCK)]
    error = await refused(c.shipping().ShipOrder(pb.ShipOrderRequest(address=HOME, items=too_many, request_id="s3")))
    assert error.details() == "out of stock: OLJCESPC7Z" and stock() == STOCK - 3
    await c.shipping().CancelShipment(pb.CancelShipmentRequest(request_id="s1"))
    await c.shipping().CancelShipment(pb.CancelShipmentRequest(request_id="s1"))
    assert stock() == STOCK


async def test_email_sends_each_confirmation_once(shop: tuple[Boutique, Clients]) -> None:
    b, c = shop
    letter = pb.SendOrderConfirmationRequest(
        email="a@example.com", order=pb.OrderResult(order_id="o1"), request_id="e1"
    )
    await c.email().SendOrderConfirmation(letter)
    await c.email().SendOrderConfirmation(letter)
    rows = b.email.db.conn.execute("SELECT email, order_id FROM sent").fetchall()
    assert [tuple(r) for r in rows] == [("a@example.com", "o1")]
    no_id = pb.SendOrderConfirmationRequest(email="a@example.com", order=pb.OrderResult(order_id="o2"))
    assert (await refused(c.email().SendOrderConfirmation(no_id))).code() == grpc.StatusCode.INVALID_ARGUMENT
