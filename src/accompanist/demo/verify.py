"""Check every order against the services' own databases and the sidecars' records.

For each order, whichever checkout placed it:

- the outcome is the one its data calls for: ``completed``, or ``compensated`` when it pays
  with an expired card or ships where no carrier goes (an orchestrated order declined at
  payment had nothing to undo: ``failed``; so has a choreographed one whose cart was not
  emptied yet when the card was declined);
- a choreographed session ended the same way at every sidecar that took part, and the
  frontend was told that outcome;
- **money**: a completed order has exactly one live charge, of the total recomputed here from
  the catalog's prices, the currency rates and the shipping quote; any other has none;
- **shipments and stock**: a completed order has exactly one live shipment of its cart's
  lines, any other none; per product, the stock that left equals what the live shipments hold;
- **cart**: a completed order's cart is empty (emptied once, never restored); any other's
  holds exactly what the shopper put in;
- **email**: a completed order's confirmation was sent once, naming its order id; no other
  order's was;
- no compensation ran for a step that never committed (the services record such orphans).
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from accompanist.demo.model import Item, Money, PricedItem, Pricing, price_order
from accompanist.demo.orders import DemoOrder
from accompanist.demo.services.catalog import PRODUCTS
from accompanist.demo.services.currency import RATES, convert
from accompanist.demo.services.shipping import QUOTE_USD

__all__ = ["Outcome", "Verdict", "expected_pricing", "verify"]

_RATES = {code: Decimal(rate) for code, rate in RATES.items()}
_PRICES = {p[0]: p[2] for p in PRODUCTS}


def expected_pricing(order: DemoOrder) -> Pricing:
    """What ``order`` should cost, computed here, without asking any service."""
    code = order.request.user_currency
    lines = [PricedItem(i, convert(Money.of(_PRICES[i.product_id], "USD"), code, _RATES)) for i in order.items]
    return price_order(lines, convert(Money.of(QUOTE_USD, "USD"), code, _RATES))


@dataclass(frozen=True)
class Outcome:
    """What the frontend answered for one order."""

    via: str  # choreography | orchestrator
    status: str
    order_id: str
    session_id: str
    error: str


@dataclass
class Verdict:
    """Counts for the summary, and every problem found (none: all holds)."""

    orders: int = 0
    checked: int = 0
    by_status: Counter[tuple[str, str]] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every check held."""
        return not self.problems


def _rows(db: Path, sql: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql)]
    finally:
        conn.close()


def _items(text: str) -> list[Item]:
    return sorted((Item(p, q) for p, q in json.loads(text)), key=lambda i: i.product_id)


class _Books:
    """The services' tables, read once, grouped by the checkout their request ids belong to."""

    def __init__(self, dbs: dict[str, Path]) -> None:
        self.charges = _rows(dbs["payment"], "SELECT * FROM charges")
        self.shipments = _rows(dbs["shipping"], "SELECT * FROM shipments")
        self.stock = {r["product_id"]: r["quantity"] for r in _rows(dbs["shipping"], "SELECT * FROM stock")}
        self.initial = {r["product_id"]: r["quantity"] for r in _rows(dbs["shipping"], "SELECT * FROM initial_stock")}
        self.emptied = _rows(dbs["cart"], "SELECT * FROM emptied")
        self.carts: dict[str, list[Item]] = {}
        for r in _rows(dbs["cart"], "SELECT * FROM items ORDER BY product_id"):
            self.carts.setdefault(r["user_id"], []).append(Item(r["product_id"], r["quantity"]))
        self.sent = _rows(dbs["email"], "SELECT * FROM sent")

    @staticmethod
    def of(rows: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
        return [r for r in rows if str(r["request_id"]).startswith(prefix)]


def verify(
    orders: list[DemoOrder],
    outcomes: dict[str, Outcome],
    sessions: dict[str, dict[str, dict[str, Any]]],
    dbs: dict[str, Path],
) -> Verdict:
    """Check every order (see the module docstring).

    Args:
        orders: every order placed, both checkouts'.
        outcomes: the frontend's answer per request id.
        sessions: each sidecar's sessions by id (``GET /sessions``), by role.
        dbs: each service's database.
    """
    verdict = Verdict(orders=len(orders))
    books = _Books(dbs)
    problems = verdict.problems
    for row in books.charges + books.shipments + books.emptied:
        if "before" in str(row["status"]):
            problems.append(f"an undo with nothing to undo: {row['request_id']} is {row['status']}")
    for order in orders:
        outcome = outcomes.get(order.request_id)
        if outcome is None:
            problems.append(f"{order.request_id}: the frontend never answered")
            continue
        verdict.by_status[(outcome.via, outcome.status)] += 1
        _check_order(verdict, books, order, outcome, sessions)
        verdict.checked += 1
    _check_totals(verdict, books, orders, outcomes)
    return verdict


def _check_order(
    verdict: Verdict,
    books: _Books,
    order: DemoOrder,
    outcome: Outcome,
    sessions: dict[str, dict[str, dict[str, Any]]],
) -> None:
    problems = verdict.problems
    rid, status = order.request_id, outcome.status
    allowed = {"completed"} if order.fails_at is None else {"compensated"}
    if order.fails_at == "payment":
        allowed.add("failed")  # nothing had been committed yet: nothing to undo
    if status not in allowed:
        problems.append(f"{rid} ({outcome.via}): {status}, expected {' or '.join(sorted(allowed))}: {outcome.error}")
    prefix = f"{rid}/"  # the session id (choreography) or request id (orchestrator) starts every request id
    if outcome.via == "choreography":
        statuses = {role: by_id[rid]["status"] for role, by_id in sessions.items() if rid in by_id}
        if statuses.get("frontend") != status or len(set(statuses.values())) != 1:
            problems.append(f"{rid}: the sidecars do not agree with the frontend's {status}: {statuses}")
    completed = status == "completed"
    want = expected_pricing(order)

    charges = books.of(books.charges, prefix)
    live = [c for c in charges if c["status"] == "charged"]
    if completed:
        total = want.total
        if len(live) != 1 or Decimal(live[0]["amount"]) != total.amount or live[0]["currency"] != total.currency_code:
            found = [(c["amount"], c["currency"], c["status"]) for c in charges]
            problems.append(f"{rid}: completed, so one charge of {total} was due; the payment service has {found}")
        elif live[0]["order_id"] != outcome.order_id:
            problems.append(f"{rid}: charged for order {live[0]['order_id']}, but the order is {outcome.order_id}")
    elif live:
        problems.append(f"{rid}: {status}, yet {len(live)} charge(s) stand: {[c['amount'] for c in live]}")

    shipped = [s for s in books.of(books.shipments, prefix) if s["status"] == "shipped"]
    if completed:
        if len(shipped) != 1 or _items(shipped[0]["items"]) != list(order.items):
            problems.append(f"{rid}: completed, so one shipment of {list(order.items)} was due; found {shipped}")
    elif shipped:
        problems.append(f"{rid}: {status}, yet shipment(s) stand: {[s['tracking_id'] for s in shipped]}")

    emptied = [e for e in books.of(books.emptied, prefix) if e["status"] == "emptied"]
    cart = books.carts.get(order.user_id, [])
    if completed:
        if cart or len(emptied) != 1 or _items(emptied[0]["items"]) != list(order.items):
            problems.append(f"{rid}: completed, so the cart was to be emptied once; cart {cart}, emptied {emptied}")
    elif emptied or cart != list(order.items):
        problems.append(f"{rid}: {status}, so the cart was to hold {list(order.items)}; it holds {cart}")

    sent = books.of(books.sent, prefix)
    if completed:
        if len(sent) != 1 or sent[0]["order_id"] != outcome.order_id:
            problems.append(f"{rid}: completed, so one confirmation was due; sent {[s['order_id'] for s in sent]}")
    elif sent:
        problems.append(f"{rid}: {status}, yet {len(sent)} confirmation(s) were sent")


def _check_totals(verdict: Verdict, books: _Books, orders: list[DemoOrder], outcomes: dict[str, Outcome]) -> None:
    shipped: Counter[str] = Counter()
    for s in books.shipments:
        if s["status"] == "shipped":
            for item in _items(s["items"]):
                shipped[item.product_id] += item.quantity
    for product, initial in sorted(books.initial.items()):
        gone = initial - books.stock.get(product, 0)
        if gone != shipped[product]:
            verdict.problems.append(
                f"stock of {product}: {gone} left the shelf, but live shipments hold {shipped[product]}"
            )
    taken: Counter[str] = Counter()
    for c in books.charges:
        if c["status"] == "charged":
            taken[c["currency"]] += Decimal(c["amount"])  # type: ignore[assignment]
    due: Counter[str] = Counter()
    for order in orders:
        outcome = outcomes.get(order.request_id)
        if outcome is not None and outcome.status == "completed":
            total = expected_pricing(order).total
            due[total.currency_code] += total.amount  # type: ignore[assignment]
    if +taken != +due:
        verdict.problems.append(f"money: the charges add up to {dict(taken)}, the completed orders to {dict(due)}")
