"""The payment service: charges credit cards, and refunds a charge by its request id.

It checks cards as the Online Boutique's does: the number must pass the Luhn check, be a VISA
or a MasterCard, and the card must not have expired. A refund for a request id that was
never charged (the compensation overtook its commit) is recorded, and the late charge is
then refused, so no money is taken for an order that was already undone.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import sqlite3
import time
from pathlib import Path

import grpc

from accompanist.demo._proto import boutique_pb2 as pb
from accompanist.demo._proto import boutique_pb2_grpc as pb_grpc
from accompanist.demo.services.base import Context, Database, Declined, answer
from accompanist.demo.wire import money_from_pb

__all__ = ["PaymentService", "card_problem"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    request_id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    transaction_id TEXT NOT NULL,
    card_last4 TEXT NOT NULL,
    currency TEXT NOT NULL,
    amount TEXT NOT NULL,           -- exact decimal
    status TEXT NOT NULL,           -- charged | refunded | refunded-before-charged
    at REAL NOT NULL,
    refunded_at REAL
);
"""


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_problem(card: pb.CreditCardInfo, today: dt.date) -> str | None:
    """Why ``card`` cannot be charged on ``today``, or None when it can."""
    number = card.credit_card_number.replace("-", "").replace(" ", "")
    if not number.isdigit() or not 12 <= len(number) <= 19 or not _luhn(number):
        return "Credit card info is invalid"
    kind = "visa" if number.startswith("4") else "mastercard" if 51 <= int(number[:2]) <= 55 else "other"
    if kind == "other":
        return "Sorry, we cannot process this credit card. Only VISA or MasterCard is accepted."
    year, month = card.credit_card_expiration_year, card.credit_card_expiration_month
    if (year, month) < (today.year, today.month):
        return f"Your credit card (ending {number[-4:]}) expired on {month}/{year}"
    return None


class PaymentService(pb_grpc.PaymentServiceServicer):
    """The payment's gRPC API over its SQLite ledger of charges."""

    def __init__(self, db_path: Path, seed: bool = False) -> None:
        self.db = Database(db_path, SCHEMA)

    def register(self, server: grpc.aio.Server) -> None:
        """Add this servicer to ``server``."""
        pb_grpc.add_PaymentServiceServicer_to_server(self, server)

    async def Charge(self, request: pb.ChargeRequest, context: Context) -> pb.ChargeResponse:  # noqa: N802
        """Take ``amount`` from the card; INVALID_ARGUMENT when the card is declined."""

        def work(conn: sqlite3.Connection) -> pb.ChargeResponse:
            if conn.execute("SELECT 1 FROM charges WHERE request_id = ?", (request.request_id,)).fetchone():
                raise Declined(grpc.StatusCode.ABORTED, f"charge {request.request_id} was refunded before it was made")
            problem = card_problem(request.credit_card, dt.date.today())
            if problem:
                raise Declined(grpc.StatusCode.INVALID_ARGUMENT, problem)
            amount = money_from_pb(request.amount)
            if amount.amount <= 0:
                raise Declined(grpc.StatusCode.INVALID_ARGUMENT, f"cannot charge {amount}")
            transaction_id = "tx-" + hashlib.sha256(request.request_id.encode()).hexdigest()[:16]
            conn.execute(
                "INSERT INTO charges (request_id, order_id, transaction_id, card_last4, currency, amount, status, at) "
                "VALUES (?, ?, ?, ?, ?, ?, 'charged', ?)",
                (
                    request.request_id,
                    request.order_id,
                    transaction_id,
                    request.credit_card.credit_card_number[-4:],
                    amount.currency_code,
                    str(amount.amount),
                    time.time(),
                ),
            )
            return pb.ChargeResponse(transaction_id=transaction_id)

        return await answer(context, lambda: self.db.once(request.request_id, "Charge", pb.ChargeResponse, work))

    async def Refund(self, request: pb.RefundRequest, context: Context) -> pb.RefundResponse:  # noqa: N802
        """Give back what the charge with this request id took (once)."""

        def work(conn: sqlite3.Connection) -> pb.RefundResponse:
            row = conn.execute("SELECT * FROM charges WHERE request_id = ?", (request.request_id,)).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO charges (request_id, order_id, transaction_id, card_last4, currency, amount, status, "
                    "at) VALUES (?, '', '', '', '', '0', 'refunded-before-charged', ?)",
                    (request.request_id, time.time()),
                )
                return pb.RefundResponse()
            conn.execute(
                "UPDATE charges SET status = 'refunded', refunded_at = ? WHERE request_id = ?",
                (time.time(), request.request_id),
            )
            return pb.RefundResponse(transaction_id=row["transaction_id"])

        return await answer(context, lambda: self.db.once(request.request_id, "Refund", pb.RefundResponse, work))
