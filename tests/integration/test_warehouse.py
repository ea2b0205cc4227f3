"""The warehouse saga as six real processes: outcomes at every sidecar and in every service.

Three services (each with its own SQLite database) and three fault-tolerant sidecars, as the
demo starts them (``examples.warehouse.cluster``). Orders succeed, fail on purpose at each
step, are declined by a service for its own reason, wait out a restarting service, and give
up on a service that stays down; every outcome is checked at the three sidecars and in the
three services' books.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from examples.warehouse.audit import audit, settle
from examples.warehouse.cluster import ROLES, ROOT, WarehouseCluster
from examples.warehouse.saga import STEPS, Order

KEY_PARTS = {
    "reserve": "warehouse/reserve",
    "charge": "payment/charge",
    "award": "loyalty/award",
    "ship": "warehouse/ship",
}


def order(n: int, fail_at: str | None = None, **kw: Any) -> Order:
    fields: dict[str, Any] = {"item": "widget", "qty": 2, "customer": "alice", "amount": 50, "points": 5}
    fields.update(kw)
    return Order(order_id=f"o-{n}", fail_at=fail_at, **fields)


def rows_of(state: dict[str, Any], sid: str) -> dict[str, str]:
    """``"warehouse/reserve" -> status`` of the session's rows in one service."""
    return {r["key"].split("/", 1)[1].rsplit("/", 1)[0]: r["status"] for r in state["rows"] if r["key"].startswith(sid)}


async def test_each_outcome_at_every_sidecar_and_service(tmp_path: Path) -> None:
    orders = [
        order(0),
        *(order(i + 1, step) for i, step in enumerate(STEPS)),
        order(5, customer="zoe", amount=100),  # payment declines: zoe has 5
        order(6, qty=5000),  # warehouse declines: out of stock
        order(7, item="gizmo", qty=1, customer="bob", amount=15, points=1),
    ]
    async with WarehouseCluster(tmp_path) as cluster:
        answers = await asyncio.gather(*(cluster.place(o, wait=True, timeout=30) for o in orders))
        placed: dict[str, str] = {}
        for o, (status, answer) in zip(orders, answers, strict=True):
            assert status == 200, answer
            placed[answer["session_id"]] = o.order_id
            ok = o.fail_at is None and o.order_id not in ("o-5", "o-6")
            assert answer["status"] == ("completed" if ok else "compensated"), (o, answer)
            assert answer["result"] == (f"shipped {o.order_id}" if ok else None)
        by_order = {o: s for s, o in placed.items()}
        snap = await settle(cluster, timeout=30)

        # Every sidecar ended every session the same way, with the same reason.
        for sid in placed:
            records = [snap.sessions[role][sid] for role in ROLES]
            assert len({r["status"] for r in records}) == 1, records
            assert len({r["error"] for r in records}) == 1, records
        for step in STEPS:
            error = snap.sessions["payment"][by_order[f"o-{STEPS.index(step) + 1}"]]["error"]
            assert f"(transaction {step})" in error and "declines" in error and "(fail_at)" in error
        assert "insufficient funds" in snap.sessions["loyalty"][by_order["o-5"]]["error"]
        assert "out of stock" in snap.sessions["warehouse"][by_order["o-6"]]["error"]

        # The services' rows: everything live for a completed order; the steps before the
        # failing one committed and were undone; the failing step and those after never ran.
        wh, pay, loy = snap.services["warehouse"], snap.services["payment"], snap.services["loyalty"]
        for o in orders:
            sid = by_order[o.order_id]
            rows = {**rows_of(wh, sid), **rows_of(pay, sid), **rows_of(loy, sid)}
            if o.order_id in ("o-0", "o-7"):
                assert rows == {part: "live" for part in KEY_PARTS.values()}
            else:
                fail_at = o.fail_at or ("charge" if o.order_id == "o-5" else "reserve")
                before = STEPS[: STEPS.index(fail_at)]
                assert rows == {KEY_PARTS[s]: "undone" for s in before}, (o, rows)
        assert wh["stock"]["widget"] == 998 and wh["stock"]["gizmo"] == 999
        assert pay["balances"]["alice"] == 100_000 - 50 and pay["balances"]["bob"] == 100_000 - 15
        assert pay["balances"]["zoe"] == 5
        assert loy["points"]["alice"] == 5 and loy["points"]["bob"] == 1
        verdict = audit(snap, {o.order_id: o for o in orders}, placed)
        assert verdict.problems == []
        assert (verdict.completed, verdict.compensated, verdict.declined, verdict.orphans) == (2, 6, 2, 0)
        codes = await cluster.stop()
    assert set(codes.values()) == {0}, codes
    # The app's shutdown hook closed each sidecar's HTTP session: aiohttp has nothing to warn of.
    for role in ROLES:
        log = cluster.procs[role].log_tail(1_000_000)
        assert "--- start #1 ---" in log and "Unclosed" not in log, log[-2000:]


async def test_a_commit_waits_for_a_restarting_service_and_a_sidecar_replays(tmp_path: Path) -> None:
    async with WarehouseCluster(tmp_path) as cluster:
        cluster.kill("loyalty-service")
        status, answer = await cluster.place(order(1))
        assert status == 202
        sid = answer["session_id"]
        await asyncio.sleep(1.0)  # loyalty's commit is retrying against a dead service
        assert (await cluster.session("warehouse", sid) or {})["status"] in ("running", "finished", "parked")
        cluster.kill("payment")  # and payment's sidecar dies with its part done
        await cluster.restart("loyalty-service")
        await cluster.restart("payment")
        snap = await settle(cluster, timeout=30)
        assert {snap.sessions[r][sid]["status"] for r in ROLES} == {"completed"}
        verdict = audit(snap, {"o-1": order(1)}, {sid: "o-1"})
        assert verdict.problems == [] and verdict.completed == 1


async def test_a_service_down_longer_than_the_retries_compensates(tmp_path: Path) -> None:
    env = {"WAREHOUSE_COMMIT_ATTEMPTS": "3"}
    async with WarehouseCluster(tmp_path, sidecar_env=env) as cluster:
        cluster.kill("loyalty-service")
        status, answer = await cluster.place(order(1))
        sid = answer["session_id"]
        for _ in range(300):  # the award gives up; the saga is compensating...
            seen = await cluster.session("warehouse", sid) or {}
            if seen.get("status") == "compensating":
                break
            await asyncio.sleep(0.1)
        assert seen["status"] == "compensating"
        assert "transaction award" in seen["error"] and "gave up after 3 attempts" in seen["error"]
        # ...but not 'compensated' while loyalty cannot undo its possibly applied award.
        await asyncio.sleep(1.0)
        assert (await cluster.session("warehouse", sid) or {})["status"] == "compensating"
        await cluster.restart("loyalty-service")
        snap = await settle(cluster, timeout=30)
        assert {snap.sessions[r][sid]["status"] for r in ROLES} == {"compensated"}
        assert rows_of(snap.services["warehouse"], sid) == {"warehouse/reserve": "undone"}
        assert rows_of(snap.services["payment"], sid) == {"payment/charge": "undone"}
        assert rows_of(snap.services["loyalty"], sid) == {}
        verdict = audit(snap, {"o-1": order(1)}, {sid: "o-1"})
        assert verdict.problems == [] and verdict.gave_up == 1


def test_the_demo_command(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    done = subprocess.run(
        [sys.executable, "-m", "examples.warehouse.demo", "--orders", "12", "--workdir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "all invariants hold" in out and "Traceback" not in out
    assert "12 orders in" in out and "failed at reserve" in out


@pytest.mark.parametrize("service", ["warehouse", "payment", "loyalty"])
async def test_services_are_idempotent_and_record_orphan_compensations(tmp_path: Path, service: str) -> None:
    async with WarehouseCluster(tmp_path) as cluster:
        assert cluster.http is not None
        base = cluster.service_url(service)
        commit, undo, body = {
            "warehouse": ("reserve", "release", {"item": "widget", "qty": 3}),
            "payment": ("charge", "refund", {"customer": "bob", "amount": 70}),
            "loyalty": ("award", "revoke", {"customer": "bob", "points": 7}),
        }[service]

        async def post(path: str, payload: dict[str, Any]) -> tuple[int, Any]:
            assert cluster.http is not None
            async with cluster.http.post(f"{base}/{path}", json=payload) as r:
                return r.status, await r.json()

        first = await post(commit, {"key": "k1", "order_id": "o-1", **body})
        again = await post(commit, {"key": "k1", "order_id": "o-1", **body})
        assert first[0] == again[0] == 200
        assert {**first[1], "repeats": 0} == {**again[1], "repeats": 0}
        assert (await post(undo, {"key": "k1"}))[0] == 200
        assert (await post(undo, {"key": "k1"}))[0] == 200
        state = await cluster.state(service)
        assert state["orphans"] == []
        balances = state[{"warehouse": "stock", "payment": "balances", "loyalty": "points"}[service]]
        assert balances == state["initial"]
        # A compensation for a commit that never happened is answered, and recorded.
        assert (await post(undo, {"key": "never"}))[0] == 200
        declined = await post(commit, {"key": "never", "order_id": "o-2", **body})
        assert declined[0] == 409 and "compensated before it committed" in declined[1]["reason"]
        failing = await post(commit, {"key": "k2", "order_id": "o-3", "fail": True, **body})
        assert failing[0] in (402, 409) and "(fail_at)" in failing[1]["reason"]
        assert [o["key"] for o in (await cluster.state(service))["orphans"]] == ["never"]
