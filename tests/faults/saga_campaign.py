"""The saga fault campaign: the warehouse order saga under SIGKILLs of sidecars and services.

Six real processes (three services with their own SQLite databases, three fault-tolerant
sidecars with SQLite stores, see ``examples.warehouse.cluster``). Workers keep ``concurrency``
orders in flight through the warehouse sidecar's HTTP API; a fraction of the orders is made
to fail at a random step (``fail_at``). A killer SIGKILLs a random process (a quarter of the
time two at once) at evenly spread points of the run, keeps it down a random moment (one
time in five for seconds, so receives park and relays back off), and starts it again on the
same port, database and store. The driver survives the initiator's sidecar being down: it retries a
POST on connection errors, with the order id as the session id, so a POST whose answer was
lost in a kill does not start a second session for the same order (the audit would count it
as a duplicate), and reads the full list of sessions at the end.

At the end ``examples.warehouse.audit`` checks every session and the services' books, the
sidecars are stopped with SIGTERM once their outboxes are empty, and every store is opened to
check that no outbox row is unacknowledged and no session unfinished.
"""

from __future__ import annotations

import asyncio
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from examples.warehouse.audit import TERMINAL, audit, settle
from examples.warehouse.cluster import ROLES, Host, WarehouseCluster
from examples.warehouse.demo import CUSTOMERS, PRICES
from examples.warehouse.saga import STEPS, Order

from tests.faults.stores import store_problems

__all__ = ["SagaCampaignReport", "make_orders", "run_saga_campaign"]

_UNACKED = re.compile(rb"^accompanist_outbox_unacked (\S+)$", re.MULTILINE)


@dataclass
class SagaCampaignReport:
    """What a campaign did and found."""

    orders: int
    sessions: int = 0
    kills: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    completed: int = 0
    compensated: int = 0
    compensated_by_step: Counter[str] = field(default_factory=Counter)
    on_purpose: int = 0
    gave_up: int = 0
    duplicates: int = 0
    lost_answers: int = 0
    repeats: int = 0
    replays: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        steps = ", ".join(f"{s} {self.compensated_by_step[s]}" for s in STEPS)
        kills = ", ".join(f"{name} {n}" for name, n in sorted(self.kills.items()))
        return (
            f"saga campaign: {self.orders} orders, {self.sessions} sessions in {self.seconds:.1f} s; "
            f"{sum(self.kills.values())} SIGKILLs ({kills}); "
            f"{self.completed} completed, {self.compensated} compensated (by step: {steps}; "
            f"{self.on_purpose} ordered to fail, {self.gave_up} after retries ran out); "
            f"{self.duplicates} duplicate sessions from {self.lost_answers} POSTs whose answer was lost; "
            f"{self.repeats} repeated service calls absorbed by idempotency keys; "
            f"{len(self.problems)} problems"
        )


def make_orders(n: int, fail_ratio: float, rng: random.Random) -> list[Order]:
    """``n`` orders; ``fail_ratio`` of them fail on purpose at a random step."""
    orders = []
    for i in range(n):
        item = rng.choice(list(PRICES))
        qty = rng.randint(1, 3)
        amount = qty * PRICES[item]
        fail_at = rng.choice(STEPS) if rng.random() < fail_ratio else None
        orders.append(Order(f"o-{i:04d}", item, qty, rng.choice(CUSTOMERS), amount, amount // 10, fail_at))
    return orders


async def _until(condition: Callable[[], bool], poll: float = 0.02) -> None:
    while not condition():  # noqa: ASYNC110 - polls a counter that workers bump
        await asyncio.sleep(poll)


def _progress(text: str) -> None:
    print(f"\r[saga campaign] {text}   ", end="", file=sys.stderr, flush=True)


async def _unacked(cluster: WarehouseCluster, role: str) -> float | None:
    assert cluster.http is not None
    try:
        async with cluster.http.get(f"{cluster.api(role)}/metrics") as r:
            match = _UNACKED.search(await r.read())
    except (aiohttp.ClientError, TimeoutError):
        return None
    return float(match.group(1)) if match else None


async def _replays(cluster: WarehouseCluster, role: str) -> int:
    assert cluster.http is not None
    async with cluster.http.get(f"{cluster.api(role)}/metrics") as r:
        match = re.search(rb"^accompanist_replays_total (\S+)$", await r.read(), re.MULTILINE)
    return int(float(match.group(1))) if match else 0


async def run_saga_campaign(
    workdir: Path,
    *,
    orders: int = 500,
    fail_ratio: float = 0.2,
    kills: int = 15,
    concurrency: int = 24,
    seed: int = 1,
    max_down: float = 1.0,
    double_faults: float = 0.25,
    service_delay: float = 0.02,
    stuck_after: float = 120.0,
    hosts: Mapping[str, Host] | None = None,
    peer_route: Callable[[str, str], str] | None = None,
) -> SagaCampaignReport:
    """Run the campaign in ``workdir`` and return its report (``problems`` empty when all holds).

    ``hosts`` and ``peer_route`` place the roles on hosts apart (see ``WarehouseCluster``).
    """
    rng = random.Random(seed)
    plan = make_orders(orders, fail_ratio, rng)
    by_id = {o.order_id: o for o in plan}
    report = SagaCampaignReport(orders=orders, on_purpose=sum(o.fail_at is not None for o in plan))
    placed: dict[str, str] = {}
    done: Counter[str] = Counter()
    began = time.monotonic()
    cluster = WarehouseCluster(
        workdir, receive_timeout=1.5, service_delay=service_delay, hosts=hosts, peer_route=peer_route
    )
    await cluster.start()
    try:
        queue: asyncio.Queue[Order] = asyncio.Queue()
        for order in plan:
            queue.put_nowait(order)
        submitted = 0
        last_kill = "-"

        shown = 0.0

        def show(force: bool = False) -> None:
            nonlocal shown
            if not force and time.monotonic() - shown < 0.5:
                return
            shown = time.monotonic()
            _progress(
                f"{sum(done.values())}/{orders} orders done ({done['completed']} completed, "
                f"{done['compensated']} compensated), {submitted - sum(done.values())} in flight, "
                f"{sum(report.kills.values())}/{kills} kills (last: {last_kill})"
            )

        async def place(order: Order) -> str:
            nonlocal submitted
            while True:
                try:
                    status, answer = await cluster.place(order)
                except aiohttp.ClientConnectorError:
                    await asyncio.sleep(0.2)  # the sidecar is down: nothing was sent
                    continue
                except (aiohttp.ClientError, TimeoutError):
                    report.lost_answers += 1  # sent, answer lost: a session may exist
                    await asyncio.sleep(0.2)
                    continue
                if status == 202:
                    submitted += 1
                    placed[answer["session_id"]] = order.order_id
                    return str(answer["session_id"])
                await asyncio.sleep(0.2)  # 503 while the sidecar starts, 429 when overloaded

        async def follow(sid: str) -> str:
            deadline = time.monotonic() + stuck_after
            while time.monotonic() < deadline:
                try:
                    record = await cluster.session("warehouse", sid)
                except (aiohttp.ClientError, TimeoutError):
                    record = None
                if record is not None and record["status"] in TERMINAL:
                    return str(record["status"])
                await asyncio.sleep(0.25)
            report.problems.append(f"session {sid} not finished at the initiator after {stuck_after:g}s")
            return "stuck"

        async def worker() -> None:
            while not queue.empty():
                sid = await place(queue.get_nowait())
                done[await follow(sid)] += 1
                show()

        async def killer() -> None:
            nonlocal last_kill
            names = cluster.names
            victims = names * (kills // len(names)) + rng.sample(names, kills % len(names))
            rng.shuffle(victims)
            k = 0
            while k < len(victims):
                # Kill at evenly spread points of the run, so kills hit sessions in flight
                # however fast the orders go; now and then two processes go down together
                # (a host with a service and a sidecar), and now and then for long enough
                # that receives park and relays back off.
                threshold = orders * (k + rng.uniform(0.3, 1.0)) / (len(victims) + 1)

                def reached(t: float = threshold) -> bool:
                    return submitted >= t

                await _until(reached)
                group = [victims[k]]
                k += 1
                if k < len(victims) and victims[k] != group[0] and rng.random() < double_faults:
                    group.append(victims[k])
                    k += 1
                for victim in group:
                    cluster.kill(victim)
                    report.kills[victim] += 1
                last_kill = " + ".join(group)
                show(force=True)
                down = rng.uniform(2.0, 3 * max_down) if rng.random() < 0.2 else rng.uniform(0.0, max_down)
                await asyncio.sleep(down)
                await asyncio.gather(*(cluster.restart(victim) for victim in group))

        async def workers() -> None:
            await asyncio.gather(*(worker() for _ in range(concurrency)))

        await asyncio.gather(workers(), killer())
        _progress(f"{orders} orders done, {sum(report.kills.values())} kills; waiting for every sidecar to settle")
        snap = await settle(cluster, timeout=60 if report.problems else 180)
        verdict = audit(snap, by_id, placed)
        report.problems += verdict.problems
        report.sessions = verdict.sessions
        report.completed, report.compensated = verdict.completed, verdict.compensated
        report.compensated_by_step = verdict.compensated_by_step
        report.gave_up, report.duplicates, report.repeats = verdict.gave_up, verdict.duplicates, verdict.repeats
        report.replays = sum([await _replays(cluster, role) for role in ROLES])
        # Let the relays record the last acknowledgements before stopping.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if [await _unacked(cluster, role) for role in ROLES] == [0.0] * len(ROLES):
                break
            await asyncio.sleep(0.3)
    finally:
        codes = await cluster.stop()
    unclean = {name: code for name, code in codes.items() if code not in (0, None)}
    if unclean:
        report.problems.append(f"processes exited uncleanly on SIGTERM: {unclean}")
    report.problems += await store_problems({role: cluster.store_url(role) for role in ROLES})
    report.seconds = time.monotonic() - began
    print(file=sys.stderr)
    return report
