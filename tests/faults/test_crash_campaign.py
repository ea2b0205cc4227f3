"""Crash campaigns: 300 sessions, 10+ SIGKILLs of random sidecars, SQLite and PostgreSQL; and
through a NATS JetStream broker, which is SIGKILLed too."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.campaign import run_campaign
from tests.support.nats_server import NatsServer

pytestmark = pytest.mark.slow


async def test_crash_campaign_sqlite(tmp_path: Path) -> None:
    report = await run_campaign(tmp_path, lambda role: f"sqlite:///{tmp_path}/{role}.db", sessions=300, kills=12)
    print(f"sqlite campaign: {report}")
    assert report.kills >= 10
    assert report.sessions >= 300
    assert report.problems == []


async def test_crash_campaign_postgres(tmp_path: Path, postgres_dsn: str) -> None:
    # One shared database: the stores keep apart by role namespace.
    report = await run_campaign(tmp_path, lambda role: postgres_dsn, sessions=300, kills=10, seed=2)
    print(f"postgres campaign: {report}")
    assert report.kills >= 10
    assert report.sessions >= 300
    assert report.problems == []


async def test_crash_campaign_jetstream(tmp_path: Path, own_nats: NatsServer) -> None:
    pytest.importorskip("nats", reason="the jetstream transport needs nats-py (pip install 'accompanist[nats]')")
    report = await run_campaign(
        tmp_path, lambda role: f"sqlite:///{tmp_path}/{role}.db", sessions=200, kills=8, seed=3, broker=own_nats
    )
    print(f"jetstream campaign: {report}")
    assert report.kills >= 8
    assert report.sessions >= 200
    assert report.problems == []
