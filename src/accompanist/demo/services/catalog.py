"""The product catalog service: the shop's products and their prices in US dollars."""

from __future__ import annotations

import json
from pathlib import Path

import grpc

from accompanist.demo._proto import boutique_pb2 as pb
from accompanist.demo._proto import boutique_pb2_grpc as pb_grpc
from accompanist.demo.services.base import Context, Database, Declined, answer

__all__ = ["PRODUCTS", "CatalogService"]

PRODUCTS: tuple[tuple[str, str, str, str], ...] = (
    ("OLJCESPC7Z", "Sunglasses", "19.99", "accessories"),
    ("66VCHSJNUP", "Tank Top", "18.99", "clothing,tops"),
    ("1YMWWN1N4O", "Watch", "109.99", "accessories"),
    ("L9ECAV7KIM", "Loafers", "89.99", "footwear"),
    ("2ZYFJ3GM2N", "Hairdryer", "24.99", "hair,beauty"),
    ("0PUK6V6EV0", "Candle Holder", "18.99", "decor,home"),
    ("LS4PSXUNUM", "Salt & Pepper Shakers", "18.49", "kitchen"),
    ("9SIQT8TOJO", "Bamboo Glass Jar", "5.49", "kitchen"),
    ("6E92ZMYYFZ", "Mug", "8.99", "kitchen"),
)
"""The Online Boutique's nine products: id, name, price in USD, categories."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS products (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    price_usd TEXT NOT NULL,        -- exact decimal
    categories TEXT NOT NULL        -- JSON list
);
"""


def _money(text: str) -> pb.Money:
    units, _, frac = text.partition(".")
    return pb.Money(currency_code="USD", units=int(units), nanos=int((frac + "000000000")[:9]))


class CatalogService(pb_grpc.ProductCatalogServiceServicer):
    """The catalog's gRPC API over its SQLite database."""

    def __init__(self, db_path: Path, seed: bool = False) -> None:
        self.db = Database(db_path, SCHEMA)
        if seed and self.db.empty("products"):
            with self.db.transaction() as conn:
                conn.executemany(
                    "INSERT INTO products (id, name, description, price_usd, categories) VALUES (?, ?, ?, ?, ?)",
                    [(i, n, f"A fine {n.lower()}.", p, json.dumps(c.split(","))) for i, n, p, c in PRODUCTS],
                )

    def register(self, server: grpc.aio.Server) -> None:
        """Add this servicer to ``server``."""
        pb_grpc.add_ProductCatalogServiceServicer_to_server(self, server)

    def _product(self, row: dict[str, str]) -> pb.Product:
        return pb.Product(
            id=row["id"],
            name=row["name"],
            description=row["description"],
            price_usd=_money(row["price_usd"]),
            categories=json.loads(row["categories"]),
        )

    async def ListProducts(self, request: pb.Empty, context: Context) -> pb.ListProductsResponse:  # noqa: N802
        """Every product."""
        rows = self.db.conn.execute("SELECT * FROM products ORDER BY id").fetchall()
        return pb.ListProductsResponse(products=[self._product(dict(r)) for r in rows])

    async def GetProduct(self, request: pb.GetProductRequest, context: Context) -> pb.Product:  # noqa: N802
        """One product; NOT_FOUND for an unknown id."""

        def call() -> pb.Product:
            row = self.db.conn.execute("SELECT * FROM products WHERE id = ?", (request.id,)).fetchone()
            if row is None:
                raise Declined(grpc.StatusCode.NOT_FOUND, f"no product with id {request.id!r}")
            return self._product(dict(row))

        return await answer(context, call)
