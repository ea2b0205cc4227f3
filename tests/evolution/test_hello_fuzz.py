"""Hellos with hostile payloads never raise out of PeerVersions.learn."""

from __future__ import annotations

import contextlib
import logging
import random

import msgspec

import accompanist as ac
from accompanist import App, VersionUnavailableError
from accompanist.engine.versions import PeerVersions
from accompanist.envelope import Envelope, EnvelopeKind

A, B = ac.roles("a", "b")


@ac.choreography("c", roles=(A, B))
async def chor(ch: ac.Choreo, x: ac.Located[int]) -> ac.Located[int]:
    return await ch.comm(B, A, await ch.comm(A, B, x))


def test_hostile_hellos() -> None:
    pv = PeerVersions(App(chor), "a", logging.getLogger("t"))
    enc = msgspec.msgpack.encode
    payloads = [
        b"\xc1",
        b"\x00",
        enc(1),
        enc([]),
        enc({"served": 3}),
        enc({"served": {"c": {"x": {}}}}),
        enc({"served": {"c": {1: {"patches": [1, 2]}}}}),
        enc({"served": {"c": {-1: {}}}}),
        enc({"format": 99, "served": {"c": {2**62: {"fingerprint": "x" * 10000}}}}),
        enc({"reply": "yes"}),
        b"\x91" * 100000,
        b"\xdd\xff\xff\xff\xff",
        enc({"served": {"c": {1: {"patches": ["p"]}}}, "extra": {"deep": [[[[]]]]}}),
    ]
    rng = random.Random(14)
    payloads += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))) for _ in range(2000)]
    for payload in payloads:
        pv.learn(Envelope("", "", 0, "b", "a", 0, EnvelopeKind.HELLO, payload=payload))
        with contextlib.suppress(VersionUnavailableError):
            pv.start_version("c", None)
        pv.patches_everywhere(chor)
