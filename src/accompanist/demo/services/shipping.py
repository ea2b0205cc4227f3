"""The shipping service: quotes, ships from its stock, and calls a shipment back.

A quote is the Online Boutique's flat 8.99 USD for any non-empty order. Shipping takes the
items from the warehouse's stock and is refused (FAILED_PRECONDITION) when no carrier serves
the address's country or the stock is short; cancelling puts the stock back. A cancel for
a request id that never shipped is recorded, and the late shipment is then refused.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

import grpc

from accompanist.demo._proto import boutique_pb2 as pb
from accompanist.demo._proto import boutique_pb2_grpc as pb_grpc
from accompanist.demo.model import Money
from accompanist.demo.services.base import Context, Database, Declined, answer
from accompanist.demo.services.catalog import PRODUCTS
from accompanist.demo.wire import money_to_pb

__all__ = ["COUNTRIES", "QUOTE_USD", "STOCK", "ShippingService"]

COUNTRIES = frozenset({"United States", "Canada", "United Kingdom", "France", "Germany", "Japan", "Switzerland"})
"""Where a carrier delivers; anywhere else the shipment is refused."""

QUOTE_USD = "8.99"
"""The flat shipping cost of a non-empty order, in US dollars."""

STOCK = 100_000
"""What ``--seed`` puts in stock of each product."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS stock (product_id TEXT PRIMARY KEY, quantity INTEGER NOT NULL CHECK (quantity >= 0));
CREATE TABLE IF NOT EXISTS initial_stock (product_id TEXT PRIMARY KEY, quantity INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS shipments (
    request_id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    tracking_id TEXT NOT NULL,
    country TEXT NOT NULL,
    items TEXT NOT NULL,            -- JSON [[product_id, quantity], ...]
    status TEXT NOT NULL,           -- shipped | cancelled | cancelled-before-shipped
    at REAL NOT NULL,
    cancelled_at REAL
);
"""


class ShippingService(pb_grpc.ShippingServiceServicer):
    """The shipping's gRPC API over its SQLite stock and shipments."""

    def __init__(self, db_path: Path, seed: bool = False) -> None:
        self.db = Database(db_path, SCHEMA)
        if seed and self.db.empty("stock"):
            with self.db.transaction() as conn:
                rows = [(p[0], STOCK) for p in PRODUCTS]
                conn.executemany("INSERT INTO stock (product_id, quantity) VALUES (?, ?)", rows)
                conn.executemany("INSERT INTO initial_stock (product_id, quantity) VALUES (?, ?)", rows)

    def register(self, server: grpc.aio.Server) -> None:
        """Add this servicer to ``server``."""
        pb_grpc.add_ShippingServiceServicer_to_server(self, server)

    async def GetQuote(self, request: pb.GetQuoteRequest, context: Context) -> pb.GetQuoteResponse:  # noqa: N802
        """The cost of shipping ``items`` (flat, whatever the address)."""
        cost = Money.of(QUOTE_USD if sum(i.quantity for i in request.items) > 0 else 0, "USD")
        return pb.GetQuoteResponse(cost_usd=money_to_pb(cost))

    async def ShipOrder(self, request: pb.ShipOrderRequest, context: Context) -> pb.ShipOrderResponse:  # noqa: N802
        """Take the items from stock and send them; answer the tracking id."""

        def work(conn: sqlite3.Connection) -> pb.ShipOrderResponse:
            if conn.execute("SELECT 1 FROM shipments WHERE request_id = ?", (request.request_id,)).fetchone():
                raise Declined(
                    grpc.StatusCode.ABORTED, f"shipment {request.request_id} was cancelled before it was made"
                )
            country = request.address.country
            if country not in COUNTRIES:
                raise Declined(grpc.StatusCode.FAILED_PRECONDITION, f"no carrier delivers to {country or 'nowhere'}")
            for item in request.items:
                row = conn.execute("SELECT quantity FROM stock WHERE product_id = ?", (item.product_id,)).fetchone()
                if row is None or row["quantity"] < item.quantity:
                    raise Declined(grpc.StatusCode.FAILED_PRECONDITION, f"out of stock: {item.product_id}")
                conn.execute(
                    "UPDATE stock SET quantity = quantity - ? WHERE product_id = ?", (item.quantity, item.product_id)
                )
            tracking = "TRK-" + hashlib.sha256(request.request_id.encode()).hexdigest()[:12].upper()
            items = json.dumps([[i.product_id, i.quantity] for i in request.items])
            conn.execute(
                "INSERT INTO shipments (request_id, order_id, tracking_id, country, items, status, at) "
                "VALUES (?, ?, ?, ?, ?, 'shipped', ?)",
                (request.request_id, request.order_id, tracking, country, items, time.time()),
            )
            return pb.ShipOrderResponse(tracking_id=tracking)

        return await answer(context, lambda: self.db.once(request.request_id, "ShipOrder", pb.ShipOrderResponse, work))

    async def CancelShipment(self, request: pb.CancelShipmentRequest, context: Context) -> pb.Empty:  # noqa: N802
        """Call the shipment back and put its items back in stock (once)."""

        def work(conn: sqlite3.Connection) -> pb.Empty:
            row = conn.execute("SELECT * FROM shipments WHERE request_id = ?", (request.request_id,)).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO shipments (request_id, order_id, tracking_id, country, items, status, at) "
                    "VALUES (?, '', '', '', '[]', 'cancelled-before-shipped', ?)",
                    (request.request_id, time.time()),
                )
                return pb.Empty()
            for product_id, quantity in json.loads(row["items"]):
                conn.execute("UPDATE stock SET quantity = quantity + ? WHERE product_id = ?", (quantity, product_id))
            conn.execute(
                "UPDATE shipments SET status = 'cancelled', cancelled_at = ? WHERE request_id = ?",
                (time.time(), request.request_id),
            )
            return pb.Empty()

        return await answer(context, lambda: self.db.once(request.request_id, "CancelShipment", pb.Empty, work))
