"""TcpTransport against bad peers: HMAC keys and rotation, mutual TLS, and hostile bytes."""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import pytest

from accompanist.envelope import Envelope
from accompanist.errors import ConfigError, TransportError
from accompanist.transport import TcpTransport, tls_contexts
from accompanist.transport.frames import Frame, FrameType, KeyRing, decode_frame, encode_frame, read_length

LOCAL = ("127.0.0.1", 0)
K1 = b"1" * 32
K2 = b"2" * 32


def env(seq: int = 1, *, dst: str = "b") -> Envelope:
    return Envelope("s-1", "order", 1, "a", dst, seq, "value", b"payload", {})


class Inbox:
    def __init__(self) -> None:
        self.got: list[Envelope] = []

    async def __call__(self, envelope: Envelope) -> None:
        self.got.append(envelope)


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., TcpTransport]]:
    made: list[TcpTransport] = []

    def _make(role: str, listen: tuple[str, int] = LOCAL, **kw: object) -> TcpTransport:
        t = TcpTransport(role, listen, **kw)  # type: ignore[arg-type]
        made.append(t)
        return t

    yield _make
    for t in made:
        await t.close()


async def pair(
    make: Callable[..., TcpTransport], inbox: Inbox, server: dict[str, object], client: dict[str, object]
) -> tuple[TcpTransport, TcpTransport]:
    b = make("b", **server)
    await b.start(inbox)
    return make("a", peers={"b": b.address}, **client), b


# --- HMAC ----------------------------------------------------------------------------------


async def test_a_forged_ack_is_never_trusted(make: Callable[..., TcpTransport]) -> None:
    """A server without the key answers unsigned acks; a keyed sender must not count them."""
    inbox = Inbox()
    a, b = await pair(make, inbox, {}, {"keys": {"k1": K1}})
    with pytest.raises(TransportError, match="no answer"):
        await a.send(env(), timeout=0.2)
    assert a.stats.rejected["unsigned"] == 1 and a.stats.acked == 0


async def test_a_key_retired_from_the_ring_is_refused(make: Callable[..., TcpTransport]) -> None:
    inbox = Inbox()
    a, b = await pair(make, inbox, {"keys": {"k2": K2}, "current_key_id": "k2"}, {"keys": {"k1": K1}})
    with pytest.raises(TransportError, match="unknown-key"):
        await a.send(env(), timeout=2)
    assert b.stats.rejected["unknown-key"] == 1


# --- mutual TLS ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("cryptography")
    from tests.support.pki import Authority

    d = tmp_path_factory.mktemp("pki")
    ca = Authority(d)
    for role in ("a", "b"):
        ca.issue(role, role)
    return {p.stem + p.suffix: p for p in d.iterdir()}


def contexts(pki: dict[str, Path], role: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    return tls_contexts(pki[f"{role}.pem"], pki[f"{role}.key"], pki["ca.pem"])


async def test_mutual_tls_round_trip(make: Callable[..., TcpTransport], pki: dict[str, Path]) -> None:
    inbox = Inbox()
    b_server, _ = contexts(pki, "b")
    _, a_client = contexts(pki, "a")
    a, _ = await pair(make, inbox, {"ssl_server": b_server}, {"ssl_client": a_client, "keys": None})
    await asyncio.gather(*(a.send(env(seq)) for seq in range(1, 21)))
    assert sorted(e.seq for e in inbox.got) == list(range(1, 21))


async def test_a_client_without_a_certificate_is_refused(
    make: Callable[..., TcpTransport], pki: dict[str, Path]
) -> None:
    inbox = Inbox()
    b_server, _ = contexts(pki, "b")
    anonymous = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca.pem"]))
    a, b = await pair(make, inbox, {"ssl_server": b_server}, {"ssl_client": anonymous})
    with pytest.raises(TransportError):
        await a.send(env(), timeout=2)
    assert inbox.got == [] and b.stats.received == 0


async def test_a_plaintext_client_cannot_talk_to_a_tls_server(
    make: Callable[..., TcpTransport], pki: dict[str, Path]
) -> None:
    inbox = Inbox()
    b_server, _ = contexts(pki, "b")
    a, b = await pair(make, inbox, {"ssl_server": b_server}, {})
    with pytest.raises(TransportError):
        await a.send(env(), timeout=1)
    assert inbox.got == [] and b.stats.received == 0


def test_missing_tls_files_are_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot load TLS material"):
        tls_contexts(tmp_path / "no.pem", tmp_path / "no.key", tmp_path / "ca.pem")


# --- hostile bytes -------------------------------------------------------------------------


async def raw(address: tuple[str, int], data: bytes) -> bytes:
    """Write ``data`` on a fresh connection and return what the server sends until it closes."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(data)
    await writer.drain()
    writer.write_eof()
    answer = await asyncio.wait_for(reader.read(), 2)
    writer.close()
    return answer


def frames_in(data: bytes) -> list[Frame]:
    out = []
    while data:
        n = read_length(data[:4])
        out.append(decode_frame(data[: 4 + n]))
        data = data[4 + n :]
    return out


async def test_hostile_frames_are_dropped_counted_and_the_server_keeps_serving(
    make: Callable[..., TcpTransport], caplog: pytest.LogCaptureFixture
) -> None:
    inbox = Inbox()
    ring = KeyRing({"k1": K1})
    a, b = await pair(make, inbox, {"keys": {"k1": K1}}, {"keys": {"k1": K1}})
    good = encode_frame(Frame(FrameType.ENVELOPE, 41, env(41)), ring=ring)
    wrongly_signed = encode_frame(Frame(FrameType.ENVELOPE, 42, env(42)), ring=KeyRing({"k1": K2}))
    garbage_body = b"\xc1\xff\x00garbage"
    unknown_type = msgspec.msgpack.encode(["bogus", 7, None, "", b""])
    caplog.set_level(logging.WARNING, "accompanist.transport")

    # Frame-level errors that keep the boundaries: each is dropped, later frames still served.
    answer = await raw(
        b.address,
        struct.pack(">I", len(garbage_body))
        + garbage_body
        + struct.pack(">I", len(unknown_type))
        + unknown_type
        + wrongly_signed
        + good,
    )
    replies = {f.corr: f for f in frames_in(answer)}
    assert replies[42].type == FrameType.REJECT and "bad-mac" in replies[42].info
    assert replies[41].type == FrameType.ACK

    # Errors that lose the boundaries close that connection only.
    assert await raw(b.address, struct.pack(">I", 0x7FFFFFFF) + good) == b""
    assert await raw(b.address, struct.pack(">I", 500) + b"only a few bytes") == b""
    assert await raw(b.address, b"\x00\x00") == b""
    assert await raw(b.address, struct.pack(">I", 0)) == b""

    await a.send(env(43))
    assert [e.seq for e in inbox.got] == [41, 43]
    assert dict(b.stats.rejected) == {
        "malformed": 1,
        "unknown-type": 1,
        "bad-mac": 1,
        "oversized": 1,
        "truncated": 2,
        "empty": 1,
    }
    logged = " ".join(r.getMessage() for r in caplog.records)
    for reason in ("malformed", "unknown-type", "bad-mac", "oversized", "truncated", "empty"):
        assert reason in logged


async def test_a_flood_of_bad_frames_logs_a_few_lines(
    make: Callable[..., TcpTransport], caplog: pytest.LogCaptureFixture
) -> None:
    _, b = await pair(make, Inbox(), {}, {})
    caplog.set_level(logging.WARNING, "accompanist.transport")
    bad = struct.pack(">I", 1) + b"\xc1"
    await raw(b.address, bad * 500)
    assert b.stats.rejected["malformed"] == 500
    assert len([r for r in caplog.records if "malformed" in r.getMessage()]) == 1


def test_mutual_tls_on_uvloop(pki: dict[str, Path]) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> list[int]:
        inbox = Inbox()
        b_server, _ = contexts(pki, "b")
        _, a_client = contexts(pki, "a")
        b = TcpTransport("b", LOCAL, ssl_server=b_server)
        await b.start(inbox)
        a = TcpTransport("a", LOCAL, {"b": b.address}, ssl_client=a_client)
        try:
            await asyncio.gather(*(a.send(env(seq)) for seq in range(1, 11)))
        finally:
            await a.close()
            await b.close()
        return sorted(e.seq for e in inbox.got)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(main()) == list(range(1, 11))
