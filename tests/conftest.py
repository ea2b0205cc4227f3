"""Fixtures shared by every test suite."""

from __future__ import annotations

import os
from collections.abc import Iterator

# The demo's tests start service processes (fork, then exec) while this process's own gRPC
# clients are live. With gRPC's fork support on, grpcio 1.80+ restarts its poller in the
# forked child, which can abort it before exec ("epoll_wait error: Bad file descriptor",
# grpc/grpc#43055). Off, as `accompanist demo` runs; read when grpc is first imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import pytest

from tests.support.nats_server import NatsServer, NatsUnavailableError
from tests.support.postgres import PostgresServer, PostgresUnavailableError


def _launched() -> Iterator[PostgresServer]:
    """A real PostgreSQL on 127.0.0.1, destroyed afterwards (the test skips when unavailable)."""
    try:
        server = PostgresServer.launch()
    except PostgresUnavailableError as exc:
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the test's own, so stopping or restarting it disturbs nobody else."""
    yield from _launched()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL on 127.0.0.1 for the whole test session (skips when unavailable)."""
    yield from _launched()


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> str:
    """The DSN of a fresh, empty database on the session's PostgreSQL server."""
    return postgres_server.create_database()


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """A NATS server with JetStream on 127.0.0.1 for the whole test session (skips when no
    binary is installed). Tests keep apart by using a stream of their own."""
    try:
        server = NatsServer.launch()
    except NatsUnavailableError as exc:
        pytest.skip(f"NATS JetStream unavailable: {exc}")
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def own_nats() -> Iterator[NatsServer]:
    """A NATS server of the test's own, so killing or restarting it disturbs nobody else."""
    try:
        server = NatsServer.launch()
    except NatsUnavailableError as exc:
        pytest.skip(f"NATS JetStream unavailable: {exc}")
    try:
        yield server
    finally:
        server.destroy()
