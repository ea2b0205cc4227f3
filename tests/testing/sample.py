"""A small shop saga for the tests of ``ac.testing``: reserve at the shop, charge at the bank.

``make_shop(ledger, idempotent=False)`` plants the bug ``explore`` must find: the shop's
compensation records its effect on every call, so a crash right after it ran (before the
runtime recorded it) applies it twice. ``shop_v2`` changes a step (what the replay tests use
as "the code changed").
"""

from __future__ import annotations

import accompanist as ac
from accompanist.testing import Ledger

__all__ = ["Bank", "Shop", "app", "app_v2", "make_shop"]

Shop, Bank = ac.roles("shop", "bank")


def make_shop(ledger: Ledger, *, idempotent: bool = True, declined: bool = False, v2: bool = False) -> ac.Choreography:
    """The shop saga acting on ``ledger`` (see the module docstring)."""

    async def unreserve(ctx: ac.TxContext, item: str, reserved: str) -> None:
        if idempotent:
            ledger.once(ctx, "unreserve")
        else:
            ledger.record(ctx, "unreserve")  # the planted bug: not idempotent by key

    @ac.transaction(compensate=unreserve, name="reserve")
    async def reserve(ctx: ac.TxContext, item: str) -> str:
        ledger.once(ctx, "reserve")
        return f"reserved {item}"

    async def refund(ctx: ac.TxContext, amount: int, paid: int) -> None:
        ledger.once(ctx, "refund")

    @ac.transaction(compensate=refund, name="charge")
    async def charge(ctx: ac.TxContext, amount: int) -> int:
        if declined:
            raise ac.Abort("card declined")
        ledger.once(ctx, "charge")
        return amount

    def price(item: str) -> int:
        return 10 * len(item)

    def receipt(reserved: str, paid: int) -> str:
        return f"{reserved}, paid {paid}"

    @ac.choreography("shop", roles=(Shop, Bank))
    async def shop(ch: ac.Choreo, item: ac.Located[str]) -> ac.Located[str]:
        reserved = await ch.transaction(Shop, reserve, item)
        amount = await ch.locally(Shop, price, item)
        if v2:  # the changed code: the bank is told twice
            await ch.comm(Shop, Bank, amount)
        at_bank = await ch.comm(Shop, Bank, amount)
        paid = await ch.transaction(Bank, charge, at_bank)
        back = await ch.comm(Bank, Shop, paid)
        return await ch.locally(Shop, receipt, reserved, back)

    return shop


app = ac.App(make_shop(Ledger()))
app_v2 = ac.App(make_shop(Ledger(), v2=True))
