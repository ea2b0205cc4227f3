"""Check the warehouse saga's invariants over everything the sidecars and services recorded.

:func:`collect` reads every session at the three sidecars and the state of the three
services; :func:`audit` checks, for every session:

- every sidecar that took part ended it in the same terminal status (``completed`` everywhere
  or ``compensated`` everywhere), and none is left unfinished;
- a completed session holds exactly one live reservation, charge, points award and shipment,
  each with the order's quantity, amount and points;
- a compensated session left nothing live (every row it committed was undone) and never
  committed the step its order failed at;
- an order that names ``fail_at`` was compensated at that step; one that does not completed,
  unless a service declined it for its own reason (out of stock, insufficient funds) or stayed
  down longer than the commit's retries (both counted apart);
- a session an operator cancelled (its failure is a ``SessionCancelledError``) was
  compensated, committed the saga's first steps in order and nothing else, and left nothing
  live; or it ``failed`` everywhere with nothing committed (the cancel came first; both
  counted apart);

and over the whole run: no compensation arrived for a step that never committed (orphans;
a commit whose retries ran out is undone anyway, since it may have taken effect),
no service row belongs to an unknown session, and per item and per customer the change of
stock, balance and points equals the sum of the live rows.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from examples.warehouse.cluster import ROLES, WarehouseCluster
from examples.warehouse.saga import STEPS, Order

__all__ = ["Audit", "Snapshot", "audit", "collect", "settle"]

TERMINAL = {"completed", "compensated", "failed", "diverged", "cancelled"}
_STEP_OF_ROW = {"reservation": "reserve", "shipment": "ship", "charge": "charge", "award": "award"}
_ORDER_IN_REASON = re.compile(r"order (\S+?):")
_OWN_REASONS = ("out of stock", "insufficient funds", "unknown item", "unknown customer")
_STEP_IN_REASON = re.compile(r"\(transaction (\w+)\)")
_CANCELLED = "SessionCancelledError"  # the failure of a session an operator cancelled


def _gave_up(failure: dict[str, Any]) -> bool:
    """A commit whose retries ran out (it may have taken effect)."""
    return str(failure.get("message", "")).startswith("gave up after")


@dataclass
class Snapshot:
    """What the sidecars and services hold: sessions by role, service states by name."""

    sessions: dict[str, dict[str, dict[str, Any]]]
    services: dict[str, dict[str, Any]]


async def collect(cluster: WarehouseCluster) -> Snapshot:
    """Read every session at every sidecar and the state of every service."""
    sessions = {role: await cluster.sessions(role) for role in ROLES}
    services = {name: await cluster.state(name) for name in ("warehouse", "payment", "loyalty")}
    return Snapshot(sessions, services)


async def settle(cluster: WarehouseCluster, timeout: float = 120, poll: float = 0.3) -> Snapshot:
    """Wait until every session is terminal at every sidecar (or ``timeout``); then collect."""
    deadline = time.monotonic() + timeout
    while True:
        snap = await collect(cluster)
        open_ = [s for by_id in snap.sessions.values() for s in by_id.values() if s["status"] not in TERMINAL]
        if not open_ or time.monotonic() > deadline:
            return snap
        await asyncio.sleep(poll)


@dataclass
class Audit:
    """The verdict: counts for a summary and the problems found (empty when all holds)."""

    sessions: int = 0
    completed: int = 0
    compensated: int = 0
    compensated_by_step: Counter[str] = field(default_factory=Counter)
    gave_up: int = 0
    declined: int = 0
    cancelled: int = 0
    cancelled_early: int = 0
    duplicates: int = 0
    unattributed: int = 0
    repeats: int = 0
    orphans: int = 0
    totals: dict[str, dict[str, tuple[int, int, int]]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _session_of(key: str) -> str:
    return key.split("/", 1)[0]


def audit(snap: Snapshot, orders: dict[str, Order], placed: dict[str, str]) -> Audit:
    """Check every invariant.

    Args:
        snap: what :func:`collect` read.
        orders: every order placed, by ``order_id``.
        placed: ``session_id -> order_id`` as the driver learnt it from the sidecar's
            answers (sessions whose answer was lost in a crash are attributed from the
            services' rows or the failure reason).
    """
    result = Audit()
    problems = result.problems
    rows: dict[str, dict[str, Any]] = {}  # key -> row, over all services
    by_session: dict[str, list[dict[str, Any]]] = {}
    # A commit whose retries ran out may or may not have taken effect, so the runtime undoes
    # it anyway: a compensation for it that finds nothing to undo is expected, not an orphan.
    uncertain = {
        (sid, failure["transaction"])
        for records in snap.sessions.values()
        for sid, record in records.items()
        if (failure := record.get("failure")) and failure.get("transaction") and _gave_up(failure)
    }
    for name, state in snap.services.items():
        for orphan in state["orphans"]:
            sid, _role, tx_name, *_ = [*str(orphan["key"]).split("/"), "", "", ""]
            if (sid, tx_name) in uncertain:
                continue
            result.orphans += 1
            problems.append(f"{name}: compensation {orphan['op']} for {orphan['key']}, which never committed")
        for row in state["rows"]:
            rows[row["key"]] = row
            by_session.setdefault(_session_of(row["key"]), []).append(row)
            result.repeats += int(row["repeats"])

    initiator = snap.sessions["warehouse"]
    all_ids = set().union(*(set(s) for s in snap.sessions.values()))
    result.sessions = len(initiator)
    for sid in sorted(all_ids - set(initiator)):
        problems.append(f"session {sid} is known at {_where(snap, sid)} but not at the initiator")
    for sid in sorted(set(by_session) - set(initiator)):
        problems.append(f"service rows {[r['key'] for r in by_session[sid]]} belong to no session")
    attributed: dict[str, str] = {}
    for sid, record in initiator.items():
        order_id = placed.get(sid)
        if order_id is None:
            found = [r["order_id"] for r in by_session.get(sid, [])]
            match = _ORDER_IN_REASON.search(record.get("error") or "")
            order_id = found[0] if found else match.group(1) if match else None
        if order_id is None or order_id not in orders:
            result.unattributed += 1
        else:
            attributed[sid] = order_id
    per_order = Counter(attributed.values())
    result.duplicates = sum(n - 1 for n in per_order.values() if n > 1)
    for order_id in sorted(set(orders) - set(per_order)):
        if result.unattributed == 0:
            problems.append(f"order {order_id} has no session")

    for sid, record in sorted(initiator.items()):
        _check_session(result, snap, sid, record, by_session.get(sid, []), orders.get(attributed.get(sid, "")))
    _check_totals(result, snap)
    return result


def _where(snap: Snapshot, sid: str) -> str:
    return ", ".join(role for role, by_id in snap.sessions.items() if sid in by_id)


def _check_session(
    result: Audit, snap: Snapshot, sid: str, record: dict[str, Any], rows: list[dict[str, Any]], order: Order | None
) -> None:
    problems = result.problems
    status = record["status"]
    statuses = {role: by_id[sid]["status"] for role, by_id in snap.sessions.items() if sid in by_id}
    if len(set(statuses.values())) != 1:
        problems.append(f"session {sid}: the participants disagree: {statuses}")
    if status == "failed" and (record.get("failure") or {}).get("error_type") == _CANCELLED and not rows:
        result.cancelled += 1  # cancelled before anything committed: nothing to undo
        result.cancelled_early += 1
        return
    if status not in ("completed", "compensated"):
        problems.append(f"session {sid} is {status} at the initiator: {record.get('error')}")
        return
    live = {_STEP_OF_ROW[r["kind"]]: r for r in rows if r["status"] == "live"}
    committed = Counter(_STEP_OF_ROW[r["kind"]] for r in rows)
    for step, n in committed.items():
        if n > 1:
            problems.append(f"session {sid}: {n} {step} rows")
    if status == "completed":
        result.completed += 1
        if set(live) != {"reserve", "charge", "award", "ship"} or len(rows) != 4:
            problems.append(f"session {sid} completed with rows {[(r['key'], r['status']) for r in rows]}")
        if order is not None:
            if order.fail_at is not None:
                problems.append(f"session {sid}: order {order.order_id} should have failed at {order.fail_at}")
            wanted = {"reserve": order.qty, "ship": order.qty, "charge": order.amount, "award": order.points}
            for step, amount in wanted.items():
                if step in live and live[step]["amount"] != amount:
                    problems.append(f"session {sid}: {step} of {live[step]['amount']}, the order says {amount}")
        missing = [r for r in ROLES if r not in statuses]
        if missing:
            problems.append(f"session {sid} completed but {', '.join(missing)} never heard of it")
        return
    result.compensated += 1
    if live:
        problems.append(f"session {sid} compensated but left {sorted(r['key'] for r in live.values())} live")
    error = record.get("error") or ""
    if (record.get("failure") or {}).get("error_type") == _CANCELLED:
        result.cancelled += 1  # the cancel landed between two steps: those before it committed
        if sorted(committed) != sorted(STEPS[: len(committed)]):
            problems.append(f"session {sid}: cancelled, it committed {sorted(committed)}")
        return
    step_match = _STEP_IN_REASON.search(error)
    step = step_match.group(1) if step_match else "?"
    result.compensated_by_step[step] += 1
    gave_up = "gave up after" in error
    result.gave_up += gave_up
    declined = order is not None and order.fail_at is None and any(d in error for d in _OWN_REASONS)
    result.declined += declined
    if order is None:
        return
    if order.fail_at is None and not gave_up and not declined:
        problems.append(f"session {sid}: order {order.order_id} has no fail_at but was compensated: {error}")
    if order.fail_at is not None:
        if not gave_up and step != order.fail_at:
            problems.append(f"session {sid}: order failing at {order.fail_at} was compensated at {step}: {error}")
        if order.fail_at in committed:
            problems.append(f"session {sid}: the step {order.fail_at} committed although it was to fail")
        if not gave_up and order.fail_at in STEPS:
            before = STEPS[: STEPS.index(order.fail_at)]
            if sorted(committed) != sorted(before):
                problems.append(f"session {sid}: failing at {order.fail_at}, it committed {sorted(committed)}")


def _check_totals(result: Audit, snap: Snapshot) -> None:
    """Per item and customer: the change of the balance equals the sum of the live rows."""
    sign = {"warehouse": -1, "payment": -1, "loyalty": +1}
    balance_key = {"warehouse": "stock", "payment": "balances", "loyalty": "points"}
    kinds = {"warehouse": "reservation", "payment": "charge", "loyalty": "award"}
    for service, state in snap.services.items():
        current: dict[str, int] = state[balance_key[service]]
        initial: dict[str, int] = state["initial"]
        live: Counter[str] = Counter()
        for row in state["rows"]:
            if row["kind"] == kinds[service] and row["status"] == "live":
                live[row["name"]] += row["amount"]
        totals: dict[str, tuple[int, int, int]] = {}
        for name in sorted(initial):
            totals[name] = (initial[name], current.get(name, 0), live[name])
            if current.get(name, 0) - initial[name] != sign[service] * live[name]:
                result.problems.append(
                    f"{service}: {name} went from {initial[name]} to {current.get(name)}, "
                    f"but the live {kinds[service]}s add up to {live[name]}"
                )
        result.totals[service] = totals
        if service == "warehouse":
            shipped: Counter[str] = Counter()
            for row in state["rows"]:
                if row["kind"] == "shipment" and row["status"] == "live":
                    shipped[row["name"]] += row["amount"]
            for name in sorted(initial):
                if initial[name] - current.get(name, 0) != shipped[name]:
                    result.problems.append(
                        f"warehouse: {initial[name] - current.get(name, 0)} {name} left the stock, "
                        f"but {shipped[name]} were shipped"
                    )
