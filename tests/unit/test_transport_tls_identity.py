"""TLS identities bound to roles, over real sockets with real certificates: a certificate may
speak only for the role it names, a client checks the role of the server it dials, and every
failed handshake is counted by reason."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable

import pytest

from accompanist.envelope import Envelope
from accompanist.errors import ConfigError, TransportError
from accompanist.transport import TcpTransport, tls_contexts
from accompanist.transport.limits import PeerLimits
from accompanist.transport.tls import certificate_roles

pytest.importorskip("cryptography")
from tests.support.pki import Authority, Identity  # noqa: E402

LOCAL = ("127.0.0.1", 0)


def env(src: str = "a", seq: int = 1, *, kind: str = "value") -> Envelope:
    return Envelope("s-1", "order", 1, src, "b", seq, kind, b"payload", {})


class Inbox:
    def __init__(self) -> None:
        self.got: list[Envelope] = []

    async def __call__(self, envelope: Envelope) -> None:
        self.got.append(envelope)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Identity]:
    d = tmp_path_factory.mktemp("pki")
    ca, evil = Authority(d / "ca"), Authority(d / "evil", "evil")
    return {
        "a": ca.issue("a", "a"),
        "b": ca.issue("b", "b"),
        "c": ca.issue("c", "c"),
        "nobody": ca.issue("nobody"),  # from the CA, but speaks for no role
        "evil-a": evil.issue("evil-a", "a"),  # names role a, signed by another CA
    }


def contexts(identity: Identity, role: str | None = None) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    return tls_contexts(identity.cert, identity.key, identity.ca, role=role)


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., TcpTransport]]:
    made: list[TcpTransport] = []

    def _make(role: str, **kw: object) -> TcpTransport:
        t = TcpTransport(role, LOCAL, **kw)  # type: ignore[arg-type]
        made.append(t)
        return t

    yield _make
    for t in made:
        await t.close()


async def server_b(make: Callable[..., TcpTransport], certs: dict[str, Identity], **kw: object) -> TcpTransport:
    b = make("b", ssl_server=contexts(certs["b"], "b")[0], **kw)
    await b.start(Inbox())
    return b


def inbox_of(t: TcpTransport) -> list[Envelope]:
    handler = t._handler
    assert isinstance(handler, Inbox)
    return handler.got


async def eventually(check: Callable[[], bool], shown: object = None, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"condition not reached: {shown}"
        await asyncio.sleep(0.02)


async def test_the_right_identity_works(make: Callable[..., TcpTransport], certs: dict[str, Identity]) -> None:
    b = await server_b(make, certs)
    a = make("a", peers={"b": b.address}, ssl_client=contexts(certs["a"], "a")[1])
    await asyncio.gather(*(a.send(env("a", seq)) for seq in range(1, 6)))
    assert sorted(e.seq for e in inbox_of(b)) == [1, 2, 3, 4, 5]
    assert not b.stats.tls_failed and not a.stats.tls_failed and not b.stats.rejected


async def test_a_certificate_cannot_speak_for_another_role(
    make: Callable[..., TcpTransport], certs: dict[str, Identity]
) -> None:
    """c's certificate (a compromised sidecar c) sending envelopes that claim to come from a."""
    b = await server_b(make, certs)
    c = make("c", peers={"b": b.address}, ssl_client=contexts(certs["c"], "c")[1])
    with pytest.raises(TransportError, match="wrong-src"):
        await c.send(env("a", 1, kind="failure"), timeout=5)
    assert b.stats.rejected["wrong-src"] == 1 and inbox_of(b) == []
    await c.send(env("c", 2))  # the same connection may still speak for c itself
    assert [(e.src, e.seq) for e in inbox_of(b)] == [("c", 2)]


async def test_a_client_checks_that_the_server_is_the_role_it_dials(
    make: Callable[..., TcpTransport], certs: dict[str, Identity]
) -> None:
    """a means to reach b, but the address leads to a sidecar whose certificate names c."""
    impostor = make("b", ssl_server=contexts(certs["c"], "c")[0])
    await impostor.start(Inbox())
    a = make("a", peers={"b": impostor.address}, ssl_client=contexts(certs["a"], "a")[1])
    with pytest.raises(TransportError, match="speaks for c, not for role 'b'"):
        await a.send(env("a"), timeout=2)
    assert a.stats.tls_failed["out", "wrong-role"] >= 1 and inbox_of(impostor) == []


async def test_another_ca_is_refused_and_counted(make: Callable[..., TcpTransport], certs: dict[str, Identity]) -> None:
    b = await server_b(make, certs)
    # Names role a and trusts our CA (it is public), but was signed by another CA.
    forged = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs["a"].ca))
    forged.check_hostname = False
    forged.load_cert_chain(certs["evil-a"].cert, certs["evil-a"].key)
    a = make("a", peers={"b": b.address}, ssl_client=forged)
    with pytest.raises(TransportError):
        await a.send(env("a"), timeout=2)
    await eventually(lambda: b.stats.tls_failed["in", "bad-certificate"] == 1)
    assert inbox_of(b) == []
    # A sidecar of another mesh altogether: it refuses our certificate first and hangs up.
    foreign = make("a", peers={"b": b.address}, ssl_client=contexts(certs["evil-a"], "a")[1])
    with pytest.raises(TransportError):
        await foreign.send(env("a"), timeout=2)
    assert foreign.stats.tls_failed["out", "bad-certificate"] >= 1
    await eventually(lambda: b.stats.tls_failed["in", "aborted"] >= 1, b.stats.tls_failed)


async def test_handshakes_that_fail_are_counted_by_reason(
    make: Callable[..., TcpTransport], certs: dict[str, Identity]
) -> None:
    b = await server_b(make, certs, limits=PeerLimits(first_frame_timeout=0.5))
    host, port = b.address
    # A certificate of our CA that names no role speaks for none: closed after the handshake.
    nobody = make("a", peers={"b": b.address}, ssl_client=contexts(certs["nobody"])[1])
    with pytest.raises(TransportError):
        await nobody.send(env("a"), timeout=2)
    # No client certificate.
    anonymous = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs["a"].ca))
    anonymous.check_hostname = False
    with pytest.raises(TransportError):
        await make("a", peers={"b": b.address}, ssl_client=anonymous).send(env("a"), timeout=2)
    # Plain text on the TLS port.
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"\x00\x00\x00\x10not a TLS record")
    await asyncio.wait_for(reader.read(), 5)
    writer.close()
    # A client that never starts its handshake.
    _, silent = await asyncio.open_connection(host, port)
    await eventually(
        lambda: dict(b.stats.tls_failed)
        == {("in", "no-role"): 1, ("in", "no-certificate"): 1, ("in", "not-tls"): 1, ("in", "timeout"): 1},
        b.stats.tls_failed,
    )
    silent.close()
    assert inbox_of(b) == [] and b.stats.received == 0


def test_a_sidecar_refuses_a_certificate_that_does_not_name_its_role(certs: dict[str, Identity]) -> None:
    assert certificate_roles({"subjectAltName": (("URI", "accompanist://role/a"), ("DNS", "x"))}) == {"a"}
    contexts(certs["a"], "a")
    with pytest.raises(ConfigError, match=r"does not name role 'b' \(it names a\).*accompanist://role/b"):
        contexts(certs["a"], "b")
    with pytest.raises(ConfigError, match="names no role"):
        contexts(certs["nobody"], "a")
    evil = certs["evil-a"]
    with pytest.raises(ConfigError, match="is not accepted with the CA"):
        tls_contexts(evil.cert, evil.key, certs["a"].ca, role="a")


def test_identities_on_uvloop(certs: dict[str, Identity]) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> tuple[list[str], int]:
        b = TcpTransport("b", LOCAL, ssl_server=contexts(certs["b"], "b")[0])
        inbox = Inbox()
        await b.start(inbox)
        a = TcpTransport("a", LOCAL, {"b": b.address}, ssl_client=contexts(certs["a"], "a")[1])
        c = TcpTransport("c", LOCAL, {"b": b.address}, ssl_client=contexts(certs["c"], "c")[1])
        try:
            await a.send(env("a", 1))
            with pytest.raises(TransportError, match="wrong-src"):
                await c.send(env("a", 2), timeout=5)
        finally:
            for t in (a, c, b):
                await t.close()
        return [e.src for e in inbox.got], b.stats.rejected["wrong-src"]

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(main()) == (["a"], 1)


async def test_handshakes_in_progress_count_against_the_connection_cap(
    make: Callable[..., TcpTransport], certs: dict[str, Identity]
) -> None:
    """Connections that never finish their handshake hold a descriptor each: capped too."""
    b = await server_b(make, certs, limits=PeerLimits(max_connections=2, first_frame_timeout=30))
    held = [await asyncio.open_connection(*b.address) for _ in range(2)]
    await asyncio.sleep(0.2)  # both accepted, both in their handshake
    reader, writer = await asyncio.open_connection(*b.address)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed at once
    writer.close()
    assert b.stats.closed["limit-total"] == 1
    for _, w in held:
        w.close()
    a = make("a", peers={"b": b.address}, ssl_client=contexts(certs["a"], "a")[1])
    await eventually(lambda: not b._tls or len(b._tls._connections) == 0, "handshakes still counted")
    await a.send(env("a"))  # room again once they are gone
    assert [e.src for e in inbox_of(b)] == ["a"]
