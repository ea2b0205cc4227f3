"""The bookseller: the "hello world" of choreographic programming.

A buyer asks a seller for the price of a book. The seller looks the title up and quotes a
price; the buyer alone decides whether it fits the budget, and ``ch.cond`` shares that
decision with the seller so both take the same branch. The whole conversation is written
once; each role runs only its part of it.

    >>> import accompanist as ac
    >>> ac.run_central(bookseller, "SICP")
    'bought at 30'
    >>> ac.run_central(bookseller, "TAPL")
    'too expensive'
"""

from __future__ import annotations

import accompanist as ac

__all__ = ["BUDGET", "PRICES", "Buyer", "Seller", "bookseller"]

Buyer, Seller = ac.roles("buyer", "seller")

PRICES = {"SICP": 30, "HtDP": 60, "TAPL": 80}
"""The seller's catalogue; a title not in it must be special-ordered."""
SPECIAL_ORDER_PRICE = 120
BUDGET = 50
"""What the buyer is willing to pay; only the buyer's code reads it."""


def price_of(title: str) -> int:
    """The seller's quote: the catalogue price, or the special-order price."""
    return PRICES.get(title, SPECIAL_ORDER_PRICE)


def within_budget(price: int) -> bool:
    """The buyer's private decision."""
    return price <= BUDGET


def ship(title: str) -> str:
    """The seller's side of a sale (a real seller would call its warehouse here)."""
    return f"shipping {title}"


def receipt(price: int) -> str:
    """What the buyer reports after buying."""
    return f"bought at {price}"


def decline(price: int) -> str:
    """What the buyer reports when the price is over budget."""
    return "too expensive"


@ac.choreography("bookseller", roles=(Buyer, Seller))
async def bookseller(ch: ac.Choreo, title: ac.Located[str]) -> ac.Located[str]:
    """Buy ``title`` if the seller's price is within the buyer's budget."""
    title_at_seller = await ch.comm(Buyer, Seller, title)
    quote = await ch.locally(Seller, price_of, title_at_seller)
    price = await ch.comm(Seller, Buyer, quote)
    decision = await ch.locally(Buyer, within_budget, price)

    async def settle(ch: ac.Choreo, buy: bool) -> ac.Located[str]:
        # Both roles run this with the same `buy`: the seller learned it from cond.
        if buy:
            await ch.locally(Seller, ship, title_at_seller)
            return await ch.locally(Buyer, receipt, price)
        return await ch.locally(Buyer, decline, price)

    return await ch.cond(Buyer, decision, settle)
