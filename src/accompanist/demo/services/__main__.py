"""``python -m accompanist.demo.services NAME --port P --db PATH [--seed]``: run one service."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from accompanist.demo.services import SERVICES
from accompanist.demo.services.base import arguments, serve

__all__ = ["main"]


def _make(name: str, db: Any, seed: bool) -> Any:
    if name == "cart":
        from accompanist.demo.services.cart import CartService

        return CartService(db, seed)
    if name == "catalog":
        from accompanist.demo.services.catalog import CatalogService

        return CatalogService(db, seed)
    if name == "currency":
        from accompanist.demo.services.currency import CurrencyService

        return CurrencyService(db, seed)
    if name == "payment":
        from accompanist.demo.services.payment import PaymentService

        return PaymentService(db, seed)
    if name == "shipping":
        from accompanist.demo.services.shipping import ShippingService

        return ShippingService(db, seed)
    if name == "email":
        from accompanist.demo.services.email import EmailService

        return EmailService(db, seed)
    if name == "checkout":
        from accompanist.demo.services.checkout import CheckoutService

        return CheckoutService(db, seed)
    from accompanist.demo.services.frontend import FrontendService

    return FrontendService(db, seed)


async def _run(name: str, db: Any, seed: bool, port: int, host: str) -> None:
    service = _make(name, db, seed)
    opener = getattr(service, "open", None)
    if opener is not None:
        await opener()
    try:
        await serve(name, service, port, host)
    finally:
        closer = getattr(service, "close", None)
        if closer is not None:
            await closer()
        else:
            clients = getattr(service, "clients", None)
            if clients is not None:
                await clients.close()


def main(argv: list[str] | None = None) -> int:
    """Run the service named by the first argument until SIGTERM."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SERVICES:
        print(
            f"usage: python -m accompanist.demo.services {{{'|'.join(SERVICES)}}} --port P [--host H] --db PATH",
            file=sys.stderr,
        )
        return 2
    name = argv.pop(0)
    args = arguments(name).parse_args(argv)
    asyncio.run(_run(name, args.db, args.seed, args.port, args.host))
    return 0


if __name__ == "__main__":
    sys.exit(main())
