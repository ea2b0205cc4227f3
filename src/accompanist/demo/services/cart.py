"""The cart service: what each user is about to buy.

``EmptyCart`` remembers what it took out under its ``request_id``, so ``RestoreCart`` (the
saga's compensation) can put exactly that back. A ``RestoreCart`` that arrives for a request
id that never emptied anything (the compensation overtook its commit) is recorded, and the
late ``EmptyCart`` is then refused, so the cart is never emptied after it was "restored".
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import grpc

from accompanist.demo._proto import boutique_pb2 as pb
from accompanist.demo._proto import boutique_pb2_grpc as pb_grpc
from accompanist.demo.services.base import Context, Database, Declined, answer

__all__ = ["CartService"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    user_id TEXT NOT NULL,
    product_id TEXT NOT NULL,
    quantity INTEGER NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (user_id, product_id)
);
CREATE TABLE IF NOT EXISTS emptied (
    request_id TEXT PRIMARY KEY,    -- the EmptyCart's request id
    user_id TEXT NOT NULL,
    items TEXT NOT NULL,            -- JSON [[product_id, quantity], ...] taken out
    status TEXT NOT NULL,           -- emptied | restored | restored-before-emptied
    at REAL NOT NULL
);
"""


def _items(conn: sqlite3.Connection, user_id: str) -> list[pb.CartItem]:
    rows = conn.execute("SELECT product_id, quantity FROM items WHERE user_id = ? ORDER BY product_id", (user_id,))
    return [pb.CartItem(product_id=r["product_id"], quantity=r["quantity"]) for r in rows]


def _add(conn: sqlite3.Connection, user_id: str, product_id: str, quantity: int) -> None:
    conn.execute(
        "INSERT INTO items (user_id, product_id, quantity) VALUES (?, ?, ?) "
        "ON CONFLICT (user_id, product_id) DO UPDATE SET quantity = quantity + excluded.quantity",
        (user_id, product_id, quantity),
    )


class CartService(pb_grpc.CartServiceServicer):
    """The cart's gRPC API over its SQLite database."""

    def __init__(self, db_path: Path, seed: bool = False) -> None:
        self.db = Database(db_path, SCHEMA)

    def register(self, server: grpc.aio.Server) -> None:
        """Add this servicer to ``server``."""
        pb_grpc.add_CartServiceServicer_to_server(self, server)

    async def AddItem(self, request: pb.AddItemRequest, context: Context) -> pb.Empty:  # noqa: N802
        """Put ``quantity`` of a product in the user's cart."""

        def call() -> pb.Empty:
            if request.item.quantity <= 0 or not request.user_id or not request.item.product_id:
                raise Declined(grpc.StatusCode.INVALID_ARGUMENT, "AddItem needs a user, a product and a quantity > 0")
            with self.db.transaction() as conn:
                _add(conn, request.user_id, request.item.product_id, request.item.quantity)
            return pb.Empty()

        return await answer(context, call)

    async def GetCart(self, request: pb.GetCartRequest, context: Context) -> pb.Cart:  # noqa: N802
        """The user's cart (empty when there is none)."""
        return pb.Cart(user_id=request.user_id, items=_items(self.db.conn, request.user_id))

    async def EmptyCart(self, request: pb.EmptyCartRequest, context: Context) -> pb.Cart:  # noqa: N802
        """Empty the user's cart; answer what was taken out (the same on every repeat)."""

        def work(conn: sqlite3.Connection) -> pb.Cart:
            seen = conn.execute("SELECT status FROM emptied WHERE request_id = ?", (request.request_id,)).fetchone()
            if seen is not None:  # only a restore can have come first: the request table holds repeats
                raise Declined(grpc.StatusCode.ABORTED, f"cart {request.request_id} was restored before it was emptied")
            items = _items(conn, request.user_id)
            conn.execute("DELETE FROM items WHERE user_id = ?", (request.user_id,))
            taken = json.dumps([[i.product_id, i.quantity] for i in items])
            conn.execute(
                "INSERT INTO emptied (request_id, user_id, items, status, at) VALUES (?, ?, ?, 'emptied', ?)",
                (request.request_id, request.user_id, taken, time.time()),
            )
            return pb.Cart(user_id=request.user_id, items=items)

        return await answer(context, lambda: self.db.once(request.request_id, "EmptyCart", pb.Cart, work))

    async def RestoreCart(self, request: pb.RestoreCartRequest, context: Context) -> pb.Cart:  # noqa: N802
        """Put back what the ``EmptyCart`` with this request id took out (once)."""

        def work(conn: sqlite3.Connection) -> pb.Cart:
            row = conn.execute("SELECT * FROM emptied WHERE request_id = ?", (request.request_id,)).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO emptied (request_id, user_id, items, status, at) "
                    "VALUES (?, '', '[]', 'restored-before-emptied', ?)",
                    (request.request_id, time.time()),
                )
                return pb.Cart()
            items = [pb.CartItem(product_id=p, quantity=q) for p, q in json.loads(row["items"])]
            for item in items:
                _add(conn, row["user_id"], item.product_id, item.quantity)
            conn.execute("UPDATE emptied SET status = 'restored' WHERE request_id = ?", (request.request_id,))
            return pb.Cart(user_id=row["user_id"], items=items)

        return await answer(context, lambda: self.db.once(request.request_id, "RestoreCart", pb.Cart, work))
