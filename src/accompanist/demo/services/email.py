"""The email service: sends each order's confirmation once (it records what it sent)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import grpc
from google.protobuf import json_format

from accompanist.demo._proto import boutique_pb2 as pb
from accompanist.demo._proto import boutique_pb2_grpc as pb_grpc
from accompanist.demo.services.base import Context, Database, answer

__all__ = ["EmailService"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS sent (
    request_id TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    order_id TEXT NOT NULL,
    body TEXT NOT NULL,          -- the order as JSON, as the letter shows it
    at REAL NOT NULL
);
"""


class EmailService(pb_grpc.EmailServiceServicer):
    """The email's gRPC API; its database is the outbox of letters sent."""

    def __init__(self, db_path: Path, seed: bool = False) -> None:
        self.db = Database(db_path, SCHEMA)

    def register(self, server: grpc.aio.Server) -> None:
        """Add this servicer to ``server``."""
        pb_grpc.add_EmailServiceServicer_to_server(self, server)

    async def SendOrderConfirmation(self, request: pb.SendOrderConfirmationRequest, context: Context) -> pb.Empty:  # noqa: N802
        """Send the confirmation of ``order`` to ``email`` (once per request id)."""

        def work(conn: sqlite3.Connection) -> pb.Empty:
            body = json_format.MessageToJson(request.order, sort_keys=True)
            conn.execute(
                "INSERT INTO sent (request_id, email, order_id, body, at) VALUES (?, ?, ?, ?, ?)",
                (request.request_id, request.email, request.order.order_id, body, time.time()),
            )
            return pb.Empty()

        return await answer(context, lambda: self.db.once(request.request_id, "SendOrderConfirmation", pb.Empty, work))
