"""A crash campaign: real sidecar processes, real SIGKILLs, then every invariant checked.

The driver starts sessions at role ``a`` through the HTTP API while a killer SIGKILLs a
random sidecar at random moments and starts it again on the same store. At the end every
session must have completed at every role with the right result, every service effect must
exist exactly once with the right value, and no outbox row may be left unacknowledged.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from tests.faults.faultapp import EXPECTED_EFFECTS, read_effects
from tests.faults.stores import store_problems
from tests.integration.procs import ProcessCluster

ROLES = ["a", "b", "c"]


class Broker(Protocol):
    """A message broker the sidecars exchange envelopes through, which the campaign can kill
    (SIGKILL) and start again on the same address and store."""

    url: str

    def kill(self) -> None: ...

    def start(self) -> None: ...


@dataclass
class CampaignReport:
    sessions: int
    kills: int
    seconds: float
    step_reruns: int
    problems: list[str] = field(default_factory=list)


def _progress(text: str) -> None:
    print(f"\r[campaign] {text}", end="", file=sys.stderr, flush=True)


async def run_campaign(
    workdir: Path,
    store_url: Callable[[str], str],
    *,
    sessions: int = 300,
    kills: int = 10,
    seed: int = 1,
    extra_args: list[str] | None = None,
    broker: Broker | None = None,
) -> CampaignReport:
    """With ``broker``, the sidecars know only the broker's address, and the killer SIGKILLs
    the broker too, once, halfway (down for a second, started again on its store)."""
    rng = random.Random(seed)
    args = [
        "--mode",
        "fault-tolerant",
        "--receive-timeout",
        "1.5",
        *(extra_args or []),
    ]
    per_role = {role: [*args, "--store", store_url(role)] for role in ROLES}
    started_at = time.monotonic()
    async with ProcessCluster(
        ROLES,
        "tests.faults.faultapp:app",
        workdir,
        per_role,
        broker=broker.url if broker is not None else None,
        FAULT_EFFECTS_DIR=str(workdir),
        ACCOMPANIST_RETRY_MIN="0.02",
        ACCOMPANIST_RETRY_MAX="0.4",
        ACCOMPANIST_DELIVER_TIMEOUT="2",
        ACCOMPANIST_RELAY_INTERVAL="0.2",
    ) as cluster:
        inputs: dict[str, int] = {}
        kills_done = 0
        submitted = 0

        async def submit(n: int) -> None:
            nonlocal submitted
            while True:
                try:
                    status, body = await cluster.request(
                        "POST", "a", "/sessions", json={"choreography": "chain", "args": [n]}
                    )
                except (TimeoutError, aiohttp.ClientError):
                    await asyncio.sleep(0.1)  # a is down: try again when it is back
                    continue
                if status == 202:
                    inputs[body["session_id"]] = n
                    submitted += 1
                    return
                await asyncio.sleep(0.1)

        async def driver() -> None:
            for n in range(sessions):
                await submit(n * 10)
                await asyncio.sleep(rng.uniform(0.0, 0.03))

        async def killer() -> None:
            nonlocal kills_done
            for _ in range(kills):
                await asyncio.sleep(rng.uniform(0.2, 0.9))
                victim = rng.choice(ROLES)
                cluster.kill(victim)
                kills_done += 1
                _progress(f"{submitted}/{sessions} submitted, kill #{kills_done}: {victim}   ")
                await asyncio.sleep(rng.uniform(0.0, 0.3))
                await cluster.restart(victim)
                if broker is not None and kills_done == kills // 2:
                    broker.kill()
                    _progress(f"{submitted}/{sessions} submitted, SIGKILL of the broker   ")
                    await asyncio.sleep(1.0)
                    broker.start()

        await asyncio.gather(driver(), killer())
        report = CampaignReport(sessions=len(inputs), kills=kills_done, seconds=0.0, step_reruns=0)

        # Sessions whose POST answer was lost in a kill exist too: take the full list.
        deadline = time.monotonic() + 180
        while True:
            status, listing = await cluster.request("GET", "a", "/sessions?limit=10000")
            records = {s["session_id"]: s for s in listing["sessions"]}
            pending = [s for s in records.values() if s["status"] != "completed"]
            _progress(f"{len(records) - len(pending)}/{len(records)} completed at a   ")
            if not pending or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        for sid, record in records.items():
            if record["status"] != "completed":
                report.problems.append(f"{sid} is {record['status']} at a: {record['error']}")
            elif sid in inputs and record["result"] != inputs[sid] + 4:
                report.problems.append(f"{sid}: result {record['result']} != {inputs[sid] + 4}")
        missing = set(inputs) - set(records)
        report.problems += [f"{sid} was started but a does not know it" for sid in missing]

        for role in ("b", "c"):
            for sid in records:
                seen: dict[str, Any] | None = None
                for _ in range(100):
                    seen = await cluster.session(role, sid)
                    if seen is not None and seen["status"] == "completed":
                        break
                    await asyncio.sleep(0.1)
                if seen is None or seen["status"] != "completed":
                    report.problems.append(f"{sid} at {role}: {seen and seen['status']}")
        await asyncio.sleep(1.0)  # let relays record the last acknowledgements
        for role in ROLES:
            await cluster[role].terminate()
        for role in ROLES:
            code = cluster[role].proc.returncode if cluster[role].proc else None
            if code not in (0, None):
                report.problems.append(f"sidecar {role} exited with {code} on SIGTERM")

    # Effects: exactly the expected step keys, each with the right value.
    values: dict[str, int] = {}
    for role in ROLES:
        effects, calls = read_effects(workdir, role)
        values.update(effects)
        report.step_reruns += sum(n - 1 for n in calls.values())
    for sid in records:
        base = inputs.get(sid)
        for suffix, offset in EXPECTED_EFFECTS.items():
            key = f"{sid}/{suffix}"
            if key not in values:
                report.problems.append(f"effect {key} missing")
            elif base is not None and values[key] != base + offset:
                report.problems.append(f"effect {key} = {values[key]}, expected {base + offset}")
    unexpected = [k for k in values if k.rsplit("/", 2)[0] not in records]
    report.problems += [f"effect of unknown session {k}" for k in unexpected]
    per_session = len(values) - len(unexpected)
    if per_session != len(records) * len(EXPECTED_EFFECTS):
        report.problems.append(f"{per_session} effects for {len(records)} sessions (extra step keys?)")

    report.problems += await store_problems({role: store_url(role) for role in ROLES})
    report.seconds = time.monotonic() - started_at
    print(file=sys.stderr)
    return report
