"""What every demo service shares: its SQLite database, idempotent requests, the gRPC server.

The services stand for ones a team already runs, so they know nothing of Accompanist. What
they do have is what any service a saga calls must have: a call that changes something
carries a ``request_id``, and the same id never takes effect twice. :meth:`Database.once`
stores each such call's answer (or its refusal) in the same SQLite transaction as its
writes, so a retry after a lost answer, a crash or a replay gets the first answer back.

Each request runs as one SQLite transaction (WAL, ``synchronous=FULL``) on the service's
event loop, one at a time, so a SIGKILL leaves all of a request's writes or none.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.message import Message

__all__ = ["Context", "Database", "Declined", "Service", "answer", "arguments", "serve"]

M = TypeVar("M", bound=Message)

_REQUESTS = """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT NOT NULL,
    method TEXT NOT NULL,
    answer BLOB,                 -- the serialized response, or NULL when refused
    code TEXT,                   -- the gRPC status of a refusal
    detail TEXT,
    at REAL NOT NULL,
    PRIMARY KEY (request_id, method)
);
"""


class Declined(Exception):  # noqa: N818 - a service's answer, not a bug
    """A business refusal: answered with ``code`` and ``detail``, and remembered as such."""

    def __init__(self, code: grpc.StatusCode, detail: str) -> None:
        self.code = code
        self.detail = detail
        super().__init__(detail)


class Database:
    """One SQLite database in WAL mode with ``synchronous=FULL``: a commit survives a crash."""

    def __init__(self, path: Path, schema: str) -> None:
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA busy_timeout=5000")
        self.conn.executescript(_REQUESTS + schema)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` when the body raises."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def empty(self, table: str) -> bool:
        """Whether ``table`` has no rows (a fresh database, to be seeded)."""
        return self.conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is None

    def once(self, request_id: str, method: str, kind: type[M], work: Callable[[sqlite3.Connection], M]) -> M:
        """Run ``work`` once per ``(request_id, method)``; a repeat gets the first answer.

        Raises:
            Declined: ``work`` refused, now or the first time (or there is no request id).
        """
        if not request_id:
            raise Declined(grpc.StatusCode.INVALID_ARGUMENT, f"{method}: a request_id is required")
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT answer, code, detail FROM requests WHERE request_id = ? AND method = ?", (request_id, method)
            ).fetchone()
            if row is not None:
                if row["answer"] is None:
                    raise Declined(grpc.StatusCode[row["code"]], row["detail"])
                return kind.FromString(row["answer"])
            conn.execute("SAVEPOINT work")
            try:
                answer = work(conn)
            except Declined as refusal:
                # Nothing of the refused work stays, but the refusal does: the same request
                # id is refused the same way, as a payment API answers a repeated decline.
                conn.execute("ROLLBACK TO work")
                conn.execute(
                    "INSERT INTO requests (request_id, method, code, detail, at) VALUES (?, ?, ?, ?, ?)",
                    (request_id, method, refusal.code.name, refusal.detail, time.time()),
                )
                refused = refusal
            else:
                conn.execute(
                    "INSERT INTO requests (request_id, method, answer, at) VALUES (?, ?, ?, ?)",
                    (request_id, method, answer.SerializeToString(), time.time()),
                )
                return answer
        raise refused


class Service(Protocol):
    """A demo service: registers its servicer on a gRPC server."""

    def register(self, server: grpc.aio.Server) -> None:
        """Add this service's servicer to ``server``."""


Context = grpc.aio.ServicerContext[Any, Any]
"""What a servicer method is given besides its request."""


async def answer(context: Context, call: Callable[[], M]) -> M:
    """Run ``call``; turn a :class:`Declined` into the gRPC status it names."""
    try:
        return call()
    except Declined as refusal:
        await context.abort(refusal.code, refusal.detail)
        raise  # pragma: no cover - abort raises


async def serve(name: str, service: Service, port: int, host: str = "127.0.0.1") -> None:
    """Serve ``service`` on ``host``:``port`` until SIGTERM or SIGINT.

    Loopback by default (the demo runs on one machine); a pod or a host of its own passes
    ``--host 0.0.0.0`` (or its address) so the orchestrated checkout can reach it.
    Prints one ``ready`` line on stdout once it listens, for scripts and logs.
    """
    server = grpc.aio.server()
    service.register(server)
    where = f"[{host}]" if ":" in host else host
    bound = server.add_insecure_port(f"{where}:{port}")
    if bound == 0:
        raise SystemExit(f"boutique {name}: cannot listen on {where}:{port}")
    await server.start()
    print(f"boutique {name} ready on {where}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=2)


def arguments(name: str) -> argparse.ArgumentParser:
    """The command line every service takes: ``--port``, ``--host``, ``--db``, ``--seed``."""
    parser = argparse.ArgumentParser(prog=f"python -m accompanist.demo.services {name}")
    parser.add_argument("--port", type=int, required=True, help="gRPC port")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--db", type=Path, required=True, help="the service's SQLite database")
    parser.add_argument("--seed", action="store_true", help="fill a new database with the demo's data")
    return parser
