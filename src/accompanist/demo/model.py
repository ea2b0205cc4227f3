"""The values the checkout choreography sends between roles, and money arithmetic.

They are msgspec Structs registered with the choreography (``types=``), so they cross the
wire through the payload codec: never protobuf objects, never pickle. Amounts are exact
:class:`~decimal.Decimal` values; :class:`Money` carries them as the Online Boutique does
(whole ``units`` and billionths in ``nanos``, with the sign of ``units``).
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

import msgspec

__all__ = [
    "Address",
    "Card",
    "CartPart",
    "CheckoutRequest",
    "EmailPart",
    "Item",
    "Money",
    "Order",
    "OrderResult",
    "PaymentPart",
    "PricedItem",
    "Pricing",
    "ShippingPart",
    "TYPES",
    "cents",
    "price_order",
]

_NANO = Decimal(1_000_000_000)
_CENT = Decimal("0.01")


def cents(amount: Decimal) -> Decimal:
    """``amount`` rounded to a hundredth, half to even (what a shop charges)."""
    return amount.quantize(_CENT, rounding=ROUND_HALF_EVEN)


class Money(msgspec.Struct, frozen=True):
    """An amount of one currency, as the Online Boutique's ``Money`` message."""

    currency_code: str
    units: int
    nanos: int = 0

    @classmethod
    def of(cls, amount: Decimal | str | int, currency_code: str) -> Money:
        """``amount`` (exact, at most nine decimals) in ``currency_code``."""
        value = Decimal(amount)
        units = int(value)  # truncates toward zero, so nanos share the sign of units
        nanos = int((value - units) * _NANO)
        return cls(currency_code, units, nanos)

    @property
    def amount(self) -> Decimal:
        """The exact amount."""
        return Decimal(self.units) + Decimal(self.nanos) / _NANO

    def __str__(self) -> str:
        return f"{self.amount:.2f} {self.currency_code}"


class Item(msgspec.Struct, frozen=True):
    """A line of a cart: a product and how many."""

    product_id: str
    quantity: int


class Address(msgspec.Struct, frozen=True):
    """Where an order is shipped."""

    street_address: str
    city: str
    state: str
    country: str
    zip_code: int


class Card(msgspec.Struct, frozen=True):
    """A credit card, as the payment service takes it."""

    number: str
    cvv: int
    expiration_year: int
    expiration_month: int


class CheckoutRequest(msgspec.Struct, frozen=True):
    """What the frontend starts a checkout with (the session's argument)."""

    user_id: str
    user_currency: str
    address: Address
    email: str
    card: Card


class Order(msgspec.Struct, frozen=True):
    """The request with the order id the frontend drew for it (with ``ch.uuid``)."""

    order_id: str
    request: CheckoutRequest


class CartPart(msgspec.Struct, frozen=True):
    """What the cart is told: whose cart, for which order."""

    order_id: str
    user_id: str


class ShippingPart(msgspec.Struct, frozen=True):
    """What shipping is told: where the order goes."""

    order_id: str
    address: Address


class PaymentPart(msgspec.Struct, frozen=True):
    """What payment is told: the card (and no other role ever sees it)."""

    order_id: str
    card: Card


class EmailPart(msgspec.Struct, frozen=True):
    """What email is told: whom to write to, and the address to put in the letter."""

    order_id: str
    email: str
    address: Address


class PricedItem(msgspec.Struct, frozen=True):
    """A cart line with its unit price in the user's currency."""

    item: Item
    cost: Money


class Pricing(msgspec.Struct, frozen=True):
    """An order priced in the user's currency: lines, shipping and the total to charge."""

    items: list[PricedItem]
    shipping: Money
    total: Money


class OrderResult(msgspec.Struct, frozen=True):
    """A placed order, as the confirmation email and the frontend see it."""

    order_id: str
    shipping_tracking_id: str
    shipping_cost: Money
    shipping_address: Address
    items: list[PricedItem]
    total: Money
    transaction_id: str


def price_order(items: list[PricedItem], shipping: Money) -> Pricing:
    """The order's total: shipping plus each line's unit cost times its quantity.

    Both checkouts (the choreography and the orchestrator) and the demo's verification
    compute it with this one function, so they cannot disagree on a cent.
    """
    code = shipping.currency_code
    total = shipping.amount + sum((line.cost.amount * line.item.quantity for line in items), Decimal(0))
    return Pricing(items=list(items), shipping=shipping, total=Money.of(cents(total), code))


TYPES: tuple[type, ...] = (
    Address,
    Card,
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
)
"""Every type the checkout choreography's messages carry."""
