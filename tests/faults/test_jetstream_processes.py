"""A saga over real sidecar processes that exchange envelopes only through NATS JetStream.

Three fault-tolerant sidecars (SQLite stores) know nothing but the broker's address. Sessions
of the three-role ``saga`` run all along (a fifth compensated at c, some more at a) while

1. the sidecar of ``b`` is SIGKILLed: the envelopes for it wait in the broker's stream (the
   test sees them there) and it finishes its sessions when it is started again;
2. the broker itself is SIGKILLed mid-run and started again on the same port and store: the
   sidecars wait it out (a's relay keeps what it could not publish in its outbox), and pick up
   where they were.

At the end every session has ended at every role with the outcome its argument decides, every
service effect is there exactly once (a service call b made just before its SIGKILL may run again
at its replay, with the same idempotency key), no outbox row is unacknowledged, and the stream is
empty: every envelope was accepted by its receiver.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from tests.faults.outages import call, metric, saga_problems, settled
from tests.faults.stores import store_problems
from tests.integration.procs import ProcessCluster
from tests.support.nats_server import NatsServer

pytestmark = pytest.mark.slow

ROLES = ("a", "b", "c")
KEY = "jetstream-campaign-key-0123456789"
STREAM = "ACCOMPANIST"


def _progress(text: str) -> None:
    print(f"\r[jetstream] {text}   ", end="", file=sys.stderr, flush=True)


async def _waiting_for(url: str, role: str) -> int:
    """Envelopes for ``role`` stored in the broker and not yet accepted."""
    import nats

    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info(STREAM, subjects_filter=f"{STREAM}.{role}")
        return int((info.state.subjects or {}).get(f"{STREAM}.{role}", 0))
    finally:
        await nc.close()


async def test_a_saga_survives_a_sidecar_kill_and_a_broker_restart(tmp_path: Path, own_nats: NatsServer) -> None:
    pytest.importorskip("nats", reason="the jetstream transport needs nats-py (pip install 'accompanist[nats]')")
    args = {
        role: ["--mode", "fault-tolerant", "--receive-timeout", "1.5", "--store", f"sqlite:///./{role}.db"]
        for role in ROLES
    }
    env = {
        "FAULT_EFFECTS_DIR": str(tmp_path),
        "ACCOMPANIST_HMAC_KEY": KEY,
        "ACCOMPANIST_RETRY_MIN": "0.02",
        "ACCOMPANIST_RETRY_MAX": "0.4",
        "ACCOMPANIST_DELIVER_TIMEOUT": "2",
        "ACCOMPANIST_RELAY_INTERVAL": "0.2",
        "ACCOMPANIST_JETSTREAM_ACK_WAIT": "5",
    }
    started: dict[str, int] = {}
    async with ProcessCluster(
        ROLES, "tests.faults.faultapp:app", tmp_path, args, broker=own_nats.url, **env
    ) as cluster:

        async def submit(n: int) -> None:
            while True:  # a answers 503 while its store or the broker keeps it from starting
                answer = await call(cluster, "POST", "a", "/sessions", json={"choreography": "saga", "args": [n]})
                if answer.status == 202:
                    started[answer.body["session_id"]] = n
                    _progress(f"{len(started)} sessions started")
                    return
                await asyncio.sleep(0.1)

        async def several(numbers: range) -> None:
            for n in numbers:
                await submit(n)
                await asyncio.sleep(0.03)

        await several(range(1, 11))
        # 1. b dies; what a sends it waits in the broker; b comes back and finishes.
        cluster.kill("b")
        _progress("SIGKILL b")
        await several(range(11, 21))
        deadline = time.monotonic() + 30
        while (waiting := await _waiting_for(own_nats.url, "b")) == 0:
            assert time.monotonic() < deadline, "no envelope for b waited in the broker while b was down"
            await asyncio.sleep(0.1)
        await cluster.restart("b")
        _progress(f"b restarted; {waiting} envelopes for it had waited in the broker")

        # 2. the broker dies mid-run and comes back on the same port and store.
        driving = asyncio.create_task(several(range(21, 41)))
        await asyncio.sleep(0.3)
        own_nats.kill()
        _progress("SIGKILL nats-server")
        await asyncio.sleep(1.5)
        own_nats.start()
        _progress("nats-server restarted on the same store")
        await driving
        await several(range(41, 51))

        seen = await settled(cluster, ROLES, list(started), timeout=180)
        problems = saga_problems(seen, started, tmp_path)
        # A commit b's service made just before b's SIGKILL, and b's store had not recorded, runs
        # again at b's replay with the same idempotency key: a repeated call, not a second effect
        # (the ledger holds one row per key). Nothing else may repeat.
        repeats = [p for p in problems if p.startswith("b ran ")]
        problems = [p for p in problems if p not in repeats]
        assert problems == [], "\n".join(problems[:30])
        deadline = time.monotonic() + 30  # the relays record their last acknowledgements
        while [await metric(cluster, role, "accompanist_outbox_unacked") for role in ROLES] != [0.0] * 3:
            assert time.monotonic() < deadline, "outbox rows left unacknowledged"
            await asyncio.sleep(0.2)
        # Acks lost with the broker leave their envelopes to be redelivered after ack_wait
        # (5 s here) and deduplicated: then the stream is empty.
        deadline = time.monotonic() + 30
        while (left := [await _waiting_for(own_nats.url, role) for role in ROLES]) != [0, 0, 0]:
            assert time.monotonic() < deadline, f"envelopes never accepted, by role {ROLES}: {left}"
            await asyncio.sleep(0.5)
        for role in ROLES:
            await cluster[role].terminate()
        codes = {role: cluster[role].proc.returncode if cluster[role].proc else None for role in ROLES}
    print(f"\n[jetstream] {len(started)} sessions; calls repeated at b's replay: {len(repeats)}", file=sys.stderr)
    assert len(started) == 50
    assert all(code in (0, None) for code in codes.values()), f"exit codes on SIGTERM: {codes}"
    assert sorted({s for by_sid in seen.values() for s in (r["status"] for r in by_sid.values())}) == [
        "compensated",
        "completed",
    ]
    assert await store_problems({role: f"sqlite:///{tmp_path}/{role}.db" for role in ROLES}) == []
