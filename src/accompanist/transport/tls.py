"""Mutual TLS between sidecars, with identities bound to roles.

Every sidecar's certificate comes from the mesh's own CA and names the role it may speak for
as a URI subject alternative name, ``accompanist://role/<role>`` (the SPIFFE way: the identity
is a URI in the certificate, not a host name). The CA alone only says "a sidecar of this
mesh"; the role URI is what stops one compromised sidecar from speaking for another role:

- the listener reads the roles the client's certificate names, once per connection, and
  refuses every envelope whose ``src`` is not one of them (``wrong-src``);
- a sidecar dialling role B checks that the server's certificate names B, instead of checking
  a host name (addresses change, roles do not), and hangs up otherwise (``wrong-role``).

A certificate that names no role speaks for none: its connections are closed at once. Failed
handshakes are classified (:class:`TlsFailure`) so ``/metrics`` can say why peers cannot talk.
"""

from __future__ import annotations

import enum
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from accompanist.errors import ConfigError

__all__ = [
    "ROLE_URI_PREFIX",
    "TlsFailure",
    "certificate_roles",
    "classify_failure",
    "own_roles",
    "role_uri",
    "tls_contexts",
]

ROLE_URI_PREFIX = "accompanist://role/"


class TlsFailure(enum.StrEnum):
    """Why a TLS connection between sidecars failed; the ``reason`` label of the metric."""

    NOT_TLS = "not-tls"  # the other side does not speak TLS (a plain TCP client, HTTP)
    NO_CERTIFICATE = "no-certificate"  # the client presented no certificate
    BAD_CERTIFICATE = "bad-certificate"  # not from our CA, expired, or otherwise unverifiable
    REJECTED_BY_PEER = "rejected-by-peer"  # the other side refused our certificate (an alert)
    TIMEOUT = "timeout"  # the handshake did not finish in time
    ABORTED = "aborted"  # the connection closed during the handshake (also: the client refused ours)
    NO_ROLE = "no-role"  # a verified certificate that names no role
    WRONG_ROLE = "wrong-role"  # the server we dialled is not the role we meant to reach
    OTHER = "other"


def role_uri(role: str) -> str:
    """The URI subject alternative name that lets a certificate speak for ``role``."""
    return ROLE_URI_PREFIX + role


def certificate_roles(peercert: Mapping[str, Any] | None) -> frozenset[str]:
    """The roles a verified certificate (``getpeercert()``'s dict) may speak for."""
    if not peercert:
        return frozenset()
    roles = set()
    for kind, value in peercert.get("subjectAltName", ()):
        if kind == "URI" and isinstance(value, str) and value.startswith(ROLE_URI_PREFIX):
            role = value[len(ROLE_URI_PREFIX) :]
            if role:
                roles.add(role)
    return frozenset(roles)


_NOT_TLS = frozenset({"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "UNSUPPORTED_PROTOCOL"})
_NO_CERT = frozenset({"PEER_DID_NOT_RETURN_A_CERTIFICATE", "CERTIFICATE_REQUIRED"})


def classify_failure(exc: BaseException) -> TlsFailure:
    """One stable word for why a handshake failed (the exception, for people, goes to the log)."""
    if isinstance(exc, TimeoutError) or (isinstance(exc, ConnectionAbortedError) and "taking longer" in str(exc)):
        return TlsFailure.TIMEOUT  # the event loop reports its handshake timeout as an abort
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TlsFailure.BAD_CERTIFICATE
    if isinstance(exc, ssl.SSLError):
        reason = str(getattr(exc, "reason", "") or "")
        if reason in _NOT_TLS:
            return TlsFailure.NOT_TLS
        if reason in _NO_CERT:
            return TlsFailure.NO_CERTIFICATE
        if reason == "CERTIFICATE_VERIFY_FAILED":
            return TlsFailure.BAD_CERTIFICATE
        if reason.startswith(("TLSV1_ALERT", "SSLV3_ALERT", "TLSV13_ALERT")):
            return TlsFailure.REJECTED_BY_PEER
        if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            return TlsFailure.ABORTED
        return TlsFailure.OTHER
    if isinstance(exc, ConnectionError | EOFError):
        return TlsFailure.ABORTED
    return TlsFailure.OTHER


def tls_contexts(
    cert: str | Path, key: str | Path, ca: str | Path, *, role: str | None = None, check_hostname: bool = False
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Build the ``(server, client)`` contexts of one sidecar for mutual TLS.

    Both sides present ``cert`` and trust only certificates issued by ``ca`` (the mesh's own
    CA, not the system store), and the server *requires* a client certificate: a peer without
    one cannot even complete the handshake, so no frame of it is ever read.

    Args:
        cert: this sidecar's certificate chain (PEM).
        key: its private key (PEM).
        ca: the CA bundle (PEM) that signed every sidecar's certificate.
        role: when given, ``cert`` must name this role (``accompanist://role/<role>``) and be
            signed by ``ca``; checked here so a wrong certificate fails at start, not at every
            peer.
        check_hostname: also check that a server's certificate names the host dialled; off by
            default, since the transport checks the role it names instead.

    Raises:
        ConfigError: a file is missing or not a valid certificate/key, or (with ``role``) the
            certificate does not chain to ``ca`` or does not name the role.
    """
    try:
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca))
        server.verify_mode = ssl.CERT_REQUIRED
        server.load_cert_chain(str(cert), str(key))
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
        client.check_hostname = check_hostname
        client.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS material (cert={cert}, key={key}, ca={ca}): {exc}") from exc
    for ctx in (server, client):
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if role is not None:
        named = own_roles(server, client, cert=cert, ca=ca)
        if role not in named:
            shown = ", ".join(sorted(named)) or "no role"
            raise ConfigError(
                f"the TLS certificate {cert} does not name role {role!r} (it names {shown}): give this sidecar a "
                f"certificate with the URI subject alternative name {role_uri(role)!r}"
            )
    return server, client


def own_roles(server: ssl.SSLContext, client: ssl.SSLContext, *, cert: object = "", ca: object = "") -> frozenset[str]:
    """The roles this sidecar's own certificate names, by a handshake between its two contexts
    in memory (the standard library decodes only certificates it verified).

    Raises:
        ConfigError: the handshake fails: the certificate does not chain to the CA.
    """
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    near = client.wrap_bio(c_in, c_out, server_side=False)
    far = server.wrap_bio(s_in, s_out, server_side=True)
    done = [False, False]
    try:
        for _ in range(16):
            for i, end in enumerate((near, far)):
                if not done[i]:
                    try:
                        end.do_handshake()
                        done[i] = True
                    except ssl.SSLWantReadError:
                        pass
            s_in.write(c_out.read())
            c_in.write(s_out.read())
            if all(done):
                break
    except ssl.SSLError as exc:
        raise ConfigError(f"the TLS certificate {cert} is not accepted with the CA {ca}: {exc}") from exc
    if not all(done):  # pragma: no cover - a TLS handshake takes two round trips
        raise ConfigError(f"the TLS certificate {cert} could not be checked against the CA {ca}")
    return certificate_roles(near.getpeercert())
