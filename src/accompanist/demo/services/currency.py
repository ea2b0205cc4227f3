"""The currency service: converts money between currencies at fixed rates (euro based).

A conversion is rounded to the cent, half to even; the rates are the Online Boutique's.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import grpc

from accompanist.demo._proto import boutique_pb2 as pb
from accompanist.demo._proto import boutique_pb2_grpc as pb_grpc
from accompanist.demo.model import Money, cents
from accompanist.demo.services.base import Context, Database, Declined, answer
from accompanist.demo.wire import money_from_pb, money_to_pb

__all__ = ["RATES", "CurrencyService", "convert"]

RATES: dict[str, str] = {
    "EUR": "1.0",
    "USD": "1.1305",
    "JPY": "126.40",
    "GBP": "0.85970",
    "CAD": "1.5128",
    "CHF": "1.1360",
    "AUD": "1.6155",
    "SEK": "10.6005",
    "TRY": "6.4720",
}
"""Units of each currency per euro."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS rates (code TEXT PRIMARY KEY, per_eur TEXT NOT NULL);
"""


def convert(money: Money, to_code: str, rates: dict[str, Decimal]) -> Money:
    """``money`` in ``to_code`` at ``rates`` (per euro), to the cent.

    Raises:
        KeyError: an unknown currency.
    """
    in_eur = money.amount / rates[money.currency_code]
    return Money.of(cents(in_eur * rates[to_code]), to_code)


class CurrencyService(pb_grpc.CurrencyServiceServicer):
    """The currency's gRPC API over its SQLite database of rates."""

    def __init__(self, db_path: Path, seed: bool = False) -> None:
        self.db = Database(db_path, SCHEMA)
        if seed and self.db.empty("rates"):
            with self.db.transaction() as conn:
                conn.executemany("INSERT INTO rates (code, per_eur) VALUES (?, ?)", list(RATES.items()))
        self.rates = {r["code"]: Decimal(r["per_eur"]) for r in self.db.conn.execute("SELECT * FROM rates")}

    def register(self, server: grpc.aio.Server) -> None:
        """Add this servicer to ``server``."""
        pb_grpc.add_CurrencyServiceServicer_to_server(self, server)

    async def GetSupportedCurrencies(self, request: pb.Empty, context: Context) -> pb.GetSupportedCurrenciesResponse:  # noqa: N802
        """Every currency code it converts."""
        return pb.GetSupportedCurrenciesResponse(currency_codes=sorted(self.rates))

    async def Convert(self, request: pb.CurrencyConversionRequest, context: Context) -> pb.Money:  # noqa: N802
        """``from`` in ``to_code``; INVALID_ARGUMENT for an unknown currency."""

        def call() -> pb.Money:
            source = getattr(request, "from")
            for code in (source.currency_code, request.to_code):
                if code not in self.rates:
                    raise Declined(grpc.StatusCode.INVALID_ARGUMENT, f"unsupported currency {code!r}")
            return money_to_pb(convert(money_from_pb(source), request.to_code, self.rates))

        return await answer(context, call)
