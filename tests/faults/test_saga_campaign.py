"""The saga fault campaign: 500 warehouse orders, 20% failing on purpose, 24 SIGKILLs of
sidecars and services; every saga invariant checked at the end (see ``saga_campaign``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.faults.saga_campaign import run_saga_campaign

pytestmark = pytest.mark.slow


async def test_saga_campaign_sqlite(tmp_path: Path) -> None:
    seed = int(os.environ.get("SAGA_CAMPAIGN_SEED", "1"))
    report = await run_saga_campaign(tmp_path, orders=500, fail_ratio=0.2, kills=24, concurrency=24, seed=seed)
    print(report.summary())
    assert report.problems == [], "\n".join(report.problems[:40])
    assert sum(report.kills.values()) >= 10
    assert set(report.kills) >= {"warehouse", "payment", "loyalty"}, "every sidecar was killed"
    assert {"warehouse-service", "payment-service", "loyalty-service"} <= set(report.kills), "and every service"
    assert report.sessions >= 500
    assert report.duplicates == 0, "a retried POST must not start a second saga for an order"
    assert report.completed + report.compensated == report.sessions
    assert report.compensated >= report.on_purpose
