"""Real sidecar processes on loopback run the example choreographies through the HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from pathlib import Path

import pytest

from tests.integration.procs import ProcessCluster

APP = "examples.app:app"
ALL_ROLES = ["buyer", "seller", "alice", "bob", "carol", "client", "bank_a", "bank_b", "primary", "worker1", "worker2"]
KEY = ["--hmac-key", "integration-secret"]


@pytest.fixture
async def sidecars(tmp_path: Path) -> ProcessCluster:
    async with ProcessCluster(ALL_ROLES, APP, tmp_path, KEY) as cluster:
        yield cluster


async def test_every_example_runs_across_processes(sidecars: ProcessCluster) -> None:
    body = await sidecars.start_session("buyer", "bookseller", "SICP")
    assert body["status"] == "completed" and body["result"] == "bought at 30", body
    body = await sidecars.start_session("buyer", "bookseller", "The Art of Computer Programming")
    assert body["result"] == "too expensive"

    body = await sidecars.start_session("alice", "group-key-exchange")
    assert body["status"] == "completed", body
    assert body["result"]["agreed"] is True

    body = await sidecars.start_session("client", "bank-transfer", 250)
    assert body["result"]["outcome"] == "committed", body
    body = await sidecars.start_session("client", "bank-transfer", 10**9)
    assert body["result"]["outcome"] == "aborted", body

    data = [random.Random(5).randint(-1000, 1000) for _ in range(101)]
    body = await sidecars.start_session("primary", "merge-sort", data)
    assert body["result"] == sorted(data)

    # Every role that took part recorded the session at its own sidecar, and learns the
    # outcome the initiator declared (a moment after it: 'finished' until the news arrives).
    session = body["session_id"]
    for role in ("worker1", "worker2"):
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            seen = await sidecars.session(role, session)
            assert seen is not None and seen["role"] == role
            if seen["status"] == "completed" or asyncio.get_running_loop().time() > deadline:
                break
            assert seen["status"] == "finished", seen
            await asyncio.sleep(0.02)
        assert seen["status"] == "completed", seen


async def test_two_hundred_concurrent_sessions(sidecars: ProcessCluster) -> None:
    rng = random.Random(11)
    inputs = [[rng.randint(0, 99) for _ in range(rng.randint(0, 30))] for _ in range(200)]
    bodies = await asyncio.gather(*(sidecars.start_session("primary", "merge-sort", xs) for xs in inputs))
    assert [b["status"] for b in bodies] == ["completed"] * 200
    assert [b["result"] for b in bodies] == [sorted(xs) for xs in inputs]
    titles = ["SICP" if i % 3 else f"book {i}" for i in range(200)]
    bodies = await asyncio.gather(*(sidecars.start_session("buyer", "bookseller", t) for t in titles))
    assert [b["result"] for b in bodies] == ["bought at 30" if t == "SICP" else "too expensive" for t in titles]


async def test_api_answers_bad_requests_clearly(sidecars: ProcessCluster) -> None:
    status, body = await sidecars.request("POST", "buyer", "/sessions", data=b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]
    status, body = await sidecars.request("POST", "buyer", "/sessions", json={"choreography": "nope", "args": []})
    assert status == 404 and "nope" in body["error"]
    status, body = await sidecars.request("POST", "buyer", "/sessions", json={"choreography": "bookseller", "args": []})
    assert status == 400 and "takes 1 argument" in body["error"]
    status, body = await sidecars.request(
        "POST", "seller", "/sessions", json={"choreography": "bookseller", "args": [1]}
    )
    assert status == 400 and "starts at role 'buyer'" in body["error"]
    status, body = await sidecars.request("POST", "buyer", "/sessions", json={"choreography": "bookseller", "args": 1})
    assert status == 400 and "'args'" in body["error"]
    status, body = await sidecars.request("GET", "buyer", "/sessions/does-not-exist")
    assert status == 404
    status, body = await sidecars.request("GET", "buyer", "/sessions?status=bogus")
    assert status == 400

    started = await sidecars.start_session("buyer", "bookseller", "SICP", wait=False)
    assert started["status"] == "running" and started["session_id"]
    for _ in range(100):
        seen = await sidecars.session("buyer", started["session_id"])
        if seen and seen["status"] == "completed":
            break
        await asyncio.sleep(0.02)
    assert seen is not None and seen["result"] == "bought at 30" and seen["created_at"]
    status, listing = await sidecars.request("GET", "buyer", "/sessions?status=completed")
    assert status == 200 and started["session_id"] in [s["session_id"] for s in listing["sessions"]]
    body = {"choreography": "bookseller", "args": ["SICP"], "session_id": "order-1042"}
    answers = [await sidecars.request("POST", "buyer", "/sessions?wait=true", json=body) for _ in range(3)]
    assert [(s, b["session_id"], b["result"]) for s, b in answers] == [(200, "order-1042", "bought at 30")] * 3
    status, listing = await sidecars.request("GET", "buyer", "/sessions?limit=1000")
    assert [s["session_id"] for s in listing["sessions"]].count("order-1042") == 1
    taken = {"choreography": "merge-sort", "args": [[1]], "session_id": "order-1042"}
    status, body = await sidecars.request("POST", "buyer", "/sessions", json=taken)
    assert status == 409 and "taken by a session of 'bookseller'" in body["error"]
    status, body = await sidecars.request("POST", "buyer", "/sessions", json={**taken, "choreography": "bookseller"})
    assert status == 202  # same choreography, same id: the existing session
    status, health = await sidecars.request("GET", "buyer", "/healthz")
    assert status == 200 and health["role"] == "buyer" and health["mode"] == "default"
    status, metrics = await sidecars.request("GET", "buyer", "/metrics")
    assert status == 200 and "accompanist_sessions_started_total" in metrics


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


async def test_garbage_frames_do_not_stop_a_sidecar(sidecars: ProcessCluster) -> None:
    seller = sidecars["seller"]
    attacks = [
        b"\x00\x00\x00\x05hello",  # a frame whose body is not msgpack
        b"\x00\x00\x00\x40short",  # truncated: the length promises more than is sent
        struct.pack(">I", 64 * 1024 * 1024) + b"x" * 100,  # oversized length prefix
        _frame(b"\x94\x01\x07\xc0\xa0"),  # well-formed msgpack, not a frame
        bytes(random.Random(3).getrandbits(8) for _ in range(4096)),  # noise
    ]
    for attack in attacks:
        with socket.create_connection(("127.0.0.1", seller.peer_port), timeout=5) as s:
            s.sendall(attack)
            s.shutdown(socket.SHUT_WR)
            with contextlib.suppress(OSError):
                s.recv(1024)
    # A correctly framed, unsigned envelope must be refused too (the cluster has an HMAC key).
    from accompanist.envelope import Envelope
    from accompanist.transport.frames import Frame, FrameType, KeyRing, encode_frame

    envelope = Envelope(
        "0190f0f0-0000-7000-8000-0000000000aa", "bookseller", 1, "buyer", "seller", 1, "value", b"\xa4SICP"
    )
    unsigned = encode_frame(Frame(FrameType.ENVELOPE, 1, envelope))
    wrongly_signed = encode_frame(
        Frame(FrameType.ENVELOPE, 2, envelope), ring=KeyRing({"k1": b"not-the-shared-secret"})
    )
    for frame in (unsigned, wrongly_signed):
        with socket.create_connection(("127.0.0.1", seller.peer_port), timeout=5) as s:
            s.sendall(frame)
            s.recv(4096)
    status, listing = await sidecars.request("GET", "seller", "/sessions")
    assert envelope.session_id not in [x["session_id"] for x in listing["sessions"]], "unsigned envelope was accepted"
    status, metrics = await sidecars.request("GET", "seller", "/metrics")
    assert "accompanist_frames_rejected_total" in metrics
    rejected = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("accompanist_frames_rejected_total{")
    )
    assert rejected >= 6, metrics
    body = await sidecars.start_session("buyer", "bookseller", "SICP")
    assert body["result"] == "bought at 30"
