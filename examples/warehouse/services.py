"""Three small HTTP services of the warehouse saga, each with its own SQLite database.

Run one with::

    python -m examples.warehouse.services {warehouse|payment|loyalty} --port P --db PATH [--seed] [--delay S]

These stand for the existing services a team already runs; the sidecars call them through
their ordinary HTTP APIs. Every commit and compensation carries a ``key`` (the runtime's
``ctx.idempotency_key``), which makes it idempotent:

- the same commit key returns the same row and never changes anything twice;
- a compensation for a key without a commit answers 200 but is recorded in ``orphans`` (a
  compensation for a step that never committed: the fault campaign checks there are none),
  and a commit that arrives after its compensation is refused.

Business declines are 4xx answers with a ``reason``: 409 (out of stock, unknown item), 402
(insufficient funds). A request may carry ``"fail": true`` to be declined on purpose; the
demo and the fault campaign use it to choose the step at which an order fails.

warehouse
    ``POST /reserve {key, order_id, item, qty}``, ``POST /release {key}``,
    ``POST /ship {key, order_id, reservation}``, ``POST /unship {key}``.
payment
    ``POST /charge {key, order_id, customer, amount}``, ``POST /refund {key}``.
loyalty
    ``POST /award {key, order_id, customer, points}``, ``POST /revoke {key}``.

Each also serves ``GET /state`` (balances, initial balances, every row, orphans) and
``GET /healthz``. Requests run one at a time, each as one SQLite transaction (WAL,
``synchronous=FULL``), so a SIGKILL leaves either all of a request's writes or none.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

__all__ = ["SEED", "SERVICES", "build_app", "main"]

SEED: dict[str, dict[str, int]] = {
    "warehouse": {"widget": 1000, "gadget": 1000, "gizmo": 1000, "doohickey": 1000},
    "payment": {"alice": 100_000, "bob": 100_000, "carol": 100_000, "dave": 100_000, "zoe": 5},
    "loyalty": {"alice": 0, "bob": 0, "carol": 0, "dave": 0, "zoe": 0},
}
"""What ``--seed`` puts in an empty database: stock per item, balance and points per customer."""

SERVICES = ("warehouse", "payment", "loyalty")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS balances (name TEXT PRIMARY KEY, amount INTEGER NOT NULL CHECK (amount >= 0));
CREATE TABLE IF NOT EXISTS initial (name TEXT PRIMARY KEY, amount INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rows (
    key TEXT PRIMARY KEY,           -- the idempotency key of the commit
    kind TEXT NOT NULL,             -- reservation | shipment | charge | award
    order_id TEXT NOT NULL,
    name TEXT NOT NULL,             -- item or customer
    amount INTEGER NOT NULL,        -- quantity, money or points
    status TEXT NOT NULL,           -- live | undone
    ref TEXT,                       -- a shipment's reservation key
    repeats INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    undone_at REAL
);
CREATE TABLE IF NOT EXISTS orphans (key TEXT NOT NULL, op TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (key, op));
"""

# What each balance is called in answers and in /state, per service.
_BALANCE = {"warehouse": "stock", "payment": "balances", "loyalty": "points"}


class Declined(Exception):  # noqa: N818 - a business answer, not a bug
    """A business decline: answered with ``status`` and a reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Ledger:
    """One service's SQLite database: balances plus keyed commit rows."""

    def __init__(self, path: str | Path, service: str) -> None:
        self.service = service
        self.db = sqlite3.connect(str(path), isolation_level=None, timeout=30)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)

    @contextmanager
    def tx(self) -> Any:
        """One write transaction (all of it or nothing survives a crash)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def seed(self, values: dict[str, int]) -> None:
        """Put ``values`` in an empty database (a restart with ``--seed`` changes nothing)."""
        with self.tx() as db:
            if db.execute("SELECT COUNT(*) FROM initial").fetchone()[0]:
                return
            for name, amount in values.items():
                db.execute("INSERT INTO balances(name, amount) VALUES (?, ?)", (name, amount))
                db.execute("INSERT INTO initial(name, amount) VALUES (?, ?)", (name, amount))

    def commit(
        self,
        kind: str,
        key: str,
        order_id: str,
        name: str,
        amount: int,
        delta: int,
        *,
        fail: bool,
        check: Callable[[sqlite3.Connection], None] | None = None,
        ref: str | None = None,
    ) -> dict[str, Any]:
        """Commit once per ``key``: change ``name``'s balance by ``delta`` and record the row.

        Raises:
            Declined: ``fail`` was asked, the key was compensated already, ``name`` is unknown,
                the balance would go negative, or ``check`` declined.
        """
        with self.tx() as db:
            row = db.execute("SELECT * FROM rows WHERE key = ?", (key,)).fetchone()
            if row is not None:  # a retry or a replay: the same answer, no second effect
                db.execute("UPDATE rows SET repeats = repeats + 1 WHERE key = ?", (key,))
                return _row(row)
            if db.execute("SELECT 1 FROM orphans WHERE key = ?", (key,)).fetchone():
                raise Declined(409, f"{kind} {key} was compensated before it committed")
            if fail:
                raise Declined(_DECLINE_STATUS[kind], f"order {order_id}: {self.service} declines the {kind} (fail_at)")
            balance = db.execute("SELECT amount FROM balances WHERE name = ?", (name,)).fetchone()
            if balance is None:
                raise Declined(409, f"order {order_id}: unknown {_NAME[kind]} {name!r}")
            if balance[0] + delta < 0:
                what = "out of stock" if kind == "reservation" else "insufficient funds"
                raise Declined(_DECLINE_STATUS[kind], f"order {order_id}: {what} ({name} has {balance[0]})")
            if check is not None:
                check(db)
            db.execute("UPDATE balances SET amount = amount + ? WHERE name = ?", (delta, name))
            db.execute(
                "INSERT INTO rows(key, kind, order_id, name, amount, status, ref, created_at) "
                "VALUES (?, ?, ?, ?, ?, 'live', ?, ?)",
                (key, kind, order_id, name, amount, ref, time.time()),
            )
            return _row(db.execute("SELECT * FROM rows WHERE key = ?", (key,)).fetchone())

    def undo(self, op: str, key: str, sign: int) -> dict[str, Any]:
        """Compensate the commit ``key``: give back its amount (``sign`` says which way).
        Idempotent; a key that never committed is recorded as an orphan compensation."""
        with self.tx() as db:
            row = db.execute("SELECT * FROM rows WHERE key = ?", (key,)).fetchone()
            if row is None:
                db.execute("INSERT OR IGNORE INTO orphans(key, op, at) VALUES (?, ?, ?)", (key, op, time.time()))
                return {"key": key, "undone": False, "orphan": True}
            if row["status"] == "live":
                db.execute(
                    "UPDATE balances SET amount = amount + ? WHERE name = ?", (sign * row["amount"], row["name"])
                )
                db.execute("UPDATE rows SET status = 'undone', undone_at = ? WHERE key = ?", (time.time(), key))
            else:
                db.execute("UPDATE rows SET repeats = repeats + 1 WHERE key = ?", (key,))
            return {"key": key, "undone": True, "orphan": False}

    def state(self) -> dict[str, Any]:
        """Everything, for ``GET /state``."""
        db = self.db
        rows = [_row(r) for r in db.execute("SELECT * FROM rows ORDER BY created_at")]
        return {
            "service": self.service,
            _BALANCE[self.service]: dict(db.execute("SELECT name, amount FROM balances ORDER BY name").fetchall()),
            "initial": dict(db.execute("SELECT name, amount FROM initial ORDER BY name").fetchall()),
            "rows": rows,
            "orphans": [dict(r) for r in db.execute("SELECT key, op, at FROM orphans ORDER BY at")],
        }

    def close(self) -> None:
        self.db.close()


_DECLINE_STATUS = {"reservation": 409, "shipment": 409, "charge": 402, "award": 409}
_NAME = {"reservation": "item", "shipment": "item", "charge": "customer", "award": "customer"}


def _row(row: sqlite3.Row) -> dict[str, Any]:
    return {k: row[k] for k in row.keys()}  # noqa: SIM118 - sqlite3.Row iterates values


Handler = Callable[[dict[str, Any]], dict[str, Any]]


def _field(body: dict[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise web.HTTPBadRequest(
            text=json.dumps({"reason": f"field {name!r} must be a {kind.__name__}"}), content_type="application/json"
        )
    return value


def _endpoint(fn: Handler, delay: float) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"reason": "the body must be a JSON object"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"reason": "the body must be a JSON object"}, status=400)
        try:
            answer = web.json_response(fn(body))
        except Declined as exc:
            answer = web.json_response({"reason": exc.reason}, status=exc.status)
        if delay:  # committed, not yet answered: a crash now loses the answer, not the write
            await asyncio.sleep(random.uniform(0, delay))
        return answer

    return handle


def build_app(service: str, ledger: Ledger, *, delay: float = 0.0) -> web.Application:
    """The aiohttp application of ``service`` over ``ledger``; ``delay`` is the most seconds
    it waits between committing a request and answering it (network and service latency)."""
    app = web.Application()

    def fail(body: dict[str, Any]) -> bool:
        return body.get("fail") is True

    if service == "warehouse":

        def reserve(body: dict[str, Any]) -> dict[str, Any]:
            qty = _field(body, "qty", int)
            if qty <= 0:
                raise Declined(409, f"order {body.get('order_id')}: quantity must be positive")
            return ledger.commit(
                "reservation",
                _field(body, "key", str),
                _field(body, "order_id", str),
                _field(body, "item", str),
                qty,
                -qty,
                fail=fail(body),
            )

        def ship(body: dict[str, Any]) -> dict[str, Any]:
            reservation = _field(body, "reservation", str)
            order_id = _field(body, "order_id", str)
            held = ledger.db.execute("SELECT * FROM rows WHERE key = ? AND kind = 'reservation'", (reservation,))
            found = held.fetchone()

            def check(db: sqlite3.Connection) -> None:
                if found is None or found["status"] != "live" or found["order_id"] != order_id:
                    raise Declined(409, f"order {order_id}: nothing reserved to ship ({reservation})")

            # Shipping moves no stock (the reservation took it); it records the parcel.
            return ledger.commit(
                "shipment",
                _field(body, "key", str),
                order_id,
                found["name"] if found is not None else "?",
                found["amount"] if found is not None else 0,
                0,
                fail=fail(body),
                check=check,
                ref=reservation,
            )

        routes = {
            "reserve": reserve,
            "release": lambda b: ledger.undo("release", _field(b, "key", str), +1),
            "ship": ship,
            "unship": lambda b: ledger.undo("unship", _field(b, "key", str), 0),
        }
    elif service == "payment":
        routes = {
            "charge": lambda b: ledger.commit(
                "charge",
                _field(b, "key", str),
                _field(b, "order_id", str),
                _field(b, "customer", str),
                _field(b, "amount", int),
                -_field(b, "amount", int),
                fail=fail(b),
            ),
            "refund": lambda b: ledger.undo("refund", _field(b, "key", str), +1),
        }
    elif service == "loyalty":
        routes = {
            "award": lambda b: ledger.commit(
                "award",
                _field(b, "key", str),
                _field(b, "order_id", str),
                _field(b, "customer", str),
                _field(b, "points", int),
                +_field(b, "points", int),
                fail=fail(b),
            ),
            "revoke": lambda b: ledger.undo("revoke", _field(b, "key", str), -1),
        }
    else:
        raise ValueError(f"unknown service {service!r}; one of {', '.join(SERVICES)}")
    for path, fn in routes.items():
        app.router.add_post(f"/{path}", _endpoint(fn, delay))

    async def state(request: web.Request) -> web.Response:
        return web.json_response(ledger.state())

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "service": service})

    async def close(app: web.Application) -> None:
        ledger.close()

    app.router.add_get("/state", state)
    app.router.add_get("/healthz", healthz)
    app.on_cleanup.append(close)
    return app


def main(argv: list[str] | None = None) -> None:
    """The command line: serve one service until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m examples.warehouse.services", description=__doc__.split("\n")[0])
    parser.add_argument("service", choices=SERVICES)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--db", required=True, help="the service's own SQLite database file")
    parser.add_argument("--seed", action="store_true", help="fill an empty database with SEED")
    parser.add_argument("--delay", type=float, default=0.0, help="answer up to this many seconds after committing")
    args = parser.parse_args(argv)
    ledger = Ledger(args.db, args.service)
    if args.seed:
        ledger.seed(SEED[args.service])
    print(f"{args.service} service on http://{args.host}:{args.port} db={args.db}", flush=True)
    web.run_app(
        build_app(args.service, ledger, delay=args.delay), host=args.host, port=args.port, print=None, access_log=None
    )


if __name__ == "__main__":
    main(sys.argv[1:])
