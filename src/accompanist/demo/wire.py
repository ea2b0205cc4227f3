"""Between the choreography's values (:mod:`.model`) and the services' protobuf messages."""

from __future__ import annotations

from accompanist.demo._proto import boutique_pb2 as pb
from accompanist.demo.model import Address, Card, CheckoutRequest, Item, Money, OrderResult, PricedItem

__all__ = [
    "address_from_pb",
    "address_to_pb",
    "card_from_pb",
    "card_to_pb",
    "item_from_pb",
    "item_to_pb",
    "money_from_pb",
    "money_to_pb",
    "order_result_from_pb",
    "order_result_to_pb",
    "request_from_pb",
    "request_to_pb",
]


def money_to_pb(m: Money) -> pb.Money:
    """The protobuf form of ``m``."""
    return pb.Money(currency_code=m.currency_code, units=m.units, nanos=m.nanos)


def money_from_pb(m: pb.Money) -> Money:
    """The choreography's form of ``m``."""
    return Money(m.currency_code, m.units, m.nanos)


def item_to_pb(i: Item) -> pb.CartItem:
    """The protobuf form of a cart line."""
    return pb.CartItem(product_id=i.product_id, quantity=i.quantity)


def item_from_pb(i: pb.CartItem) -> Item:
    """The choreography's form of a cart line."""
    return Item(i.product_id, i.quantity)


def address_to_pb(a: Address) -> pb.Address:
    """The protobuf form of an address."""
    return pb.Address(
        street_address=a.street_address, city=a.city, state=a.state, country=a.country, zip_code=a.zip_code
    )


def address_from_pb(a: pb.Address) -> Address:
    """The choreography's form of an address."""
    return Address(a.street_address, a.city, a.state, a.country, a.zip_code)


def card_to_pb(c: Card) -> pb.CreditCardInfo:
    """The protobuf form of a card."""
    return pb.CreditCardInfo(
        credit_card_number=c.number,
        credit_card_cvv=c.cvv,
        credit_card_expiration_year=c.expiration_year,
        credit_card_expiration_month=c.expiration_month,
    )


def card_from_pb(c: pb.CreditCardInfo) -> Card:
    """The choreography's form of a card."""
    return Card(c.credit_card_number, c.credit_card_cvv, c.credit_card_expiration_year, c.credit_card_expiration_month)


def request_to_pb(r: CheckoutRequest, request_id: str) -> pb.PlaceOrderRequest:
    """The Online Boutique's ``PlaceOrderRequest`` for a checkout."""
    return pb.PlaceOrderRequest(
        user_id=r.user_id,
        user_currency=r.user_currency,
        address=address_to_pb(r.address),
        email=r.email,
        credit_card=card_to_pb(r.card),
        request_id=request_id,
    )


def request_from_pb(r: pb.PlaceOrderRequest) -> CheckoutRequest:
    """The choreography's argument for a ``PlaceOrderRequest``."""
    return CheckoutRequest(r.user_id, r.user_currency, address_from_pb(r.address), r.email, card_from_pb(r.credit_card))


def order_result_to_pb(o: OrderResult) -> pb.OrderResult:
    """The protobuf form of a placed order."""
    return pb.OrderResult(
        order_id=o.order_id,
        shipping_tracking_id=o.shipping_tracking_id,
        shipping_cost=money_to_pb(o.shipping_cost),
        shipping_address=address_to_pb(o.shipping_address),
        items=[pb.OrderItem(item=item_to_pb(p.item), cost=money_to_pb(p.cost)) for p in o.items],
        total=money_to_pb(o.total),
        transaction_id=o.transaction_id,
    )


def order_result_from_pb(o: pb.OrderResult) -> OrderResult:
    """The choreography's form of a placed order."""
    return OrderResult(
        order_id=o.order_id,
        shipping_tracking_id=o.shipping_tracking_id,
        shipping_cost=money_from_pb(o.shipping_cost),
        shipping_address=address_from_pb(o.shipping_address),
        items=[PricedItem(item_from_pb(p.item), money_from_pb(p.cost)) for p in o.items],
        total=money_from_pb(o.total),
        transaction_id=o.transaction_id,
    )
