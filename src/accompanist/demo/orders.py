"""The orders ``accompanist demo`` places: shoppers, their carts, and which ones fail on purpose.

Order ``i`` belongs to its own shopper, whose cart holds one to three products; its currency
rotates through five. Every tenth order from the fourth on pays with an expired card (the
payment service declines it) and every tenth from the eighth on ships to a country no
carrier serves (the shipping service refuses it, after the charge): both are compensated.
The orchestrated checkout gets the same orders for shoppers of its own.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from accompanist.demo.model import Address, Card, CheckoutRequest, Item
from accompanist.demo.services.catalog import PRODUCTS

__all__ = ["CURRENCIES", "DemoOrder", "make_orders"]

CURRENCIES = ("EUR", "USD", "JPY", "GBP", "CAD")
HOME = Address("1600 Amphitheatre Parkway", "Mountain View", "CA", "United States", 94043)
NOWHERE = Address("Research Station", "McMurdo", "Ross Island", "Antarctica", 9999)
GOOD_CARD = Card("4432-8015-6152-0454", 672, 2039, 1)
EXPIRED_CARD = Card("4432-8015-6152-0454", 672, 2021, 1)


@dataclass(frozen=True)
class DemoOrder:
    """One order: its request id, the cart to fill, the checkout request, what should happen."""

    request_id: str
    items: tuple[Item, ...]
    request: CheckoutRequest
    fails_at: str | None  # "payment" or "shipping" when it fails on purpose

    @property
    def user_id(self) -> str:
        """Whose cart it is."""
        return self.request.user_id


def make_orders(n: int, *, prefix: str = "order", seed: int = 12) -> list[DemoOrder]:
    """``n`` orders; the same ``seed`` gives the same carts whatever the ``prefix``."""
    rng = random.Random(seed)
    ids = [p[0] for p in PRODUCTS]
    orders = []
    for i in range(n):
        lines = rng.sample(ids, rng.randint(1, 3))
        items = tuple(sorted((Item(p, rng.randint(1, 3)) for p in lines), key=lambda it: it.product_id))
        fails_at = "payment" if i % 10 == 3 else "shipping" if i % 10 == 7 else None
        request_id = f"{prefix}-{i + 1:04d}"
        request = CheckoutRequest(
            user_id=f"shopper-{request_id}",
            user_currency=CURRENCIES[i % len(CURRENCIES)],
            address=NOWHERE if fails_at == "shipping" else HOME,
            email=f"shopper-{i + 1}@example.com",
            card=EXPIRED_CARD if fails_at == "payment" else GOOD_CARD,
        )
        orders.append(DemoOrder(request_id, items, request, fails_at))
    return orders
