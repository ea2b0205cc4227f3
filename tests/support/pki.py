"""A throwaway certificate authority and sidecar certificates, made with ``cryptography``.

Each sidecar certificate names the roles it may speak for as URI subject alternative names
(``accompanist://role/<role>``), as the README tells operators to issue them; tests also make
the wrong ones (no role, another CA's) on purpose.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["Authority", "Identity"]


@dataclass(frozen=True)
class Identity:
    """A certificate and its key on disk, with the CA bundle that signed it."""

    cert: Path
    key: Path
    ca: Path

    def args(self) -> list[str]:
        """The sidecar options that use it."""
        return ["--tls-cert", str(self.cert), "--tls-key", str(self.key), "--tls-ca", str(self.ca)]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


class Authority:
    """A CA in ``directory``; :meth:`issue` makes sidecar certificates signed by it."""

    def __init__(self, directory: Path, name: str = "ca") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.name = name
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(f"accompanist test CA {name}"))
            .issuer_name(_name(f"accompanist test CA {name}"))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._now - dt.timedelta(minutes=5))
            .not_valid_after(self._now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.ca = directory / f"{name}.pem"
        self.ca.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, stem: str, *roles: str, hosts: bool = True) -> Identity:
        """A certificate for ``roles`` (none: a certificate that speaks for no role), saved as
        ``<stem>.pem`` and ``<stem>.key``; ``hosts`` adds ``localhost`` and ``127.0.0.1``."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(f"accompanist://role/{r}") for r in roles]
        if hosts:
            names += [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(f"sidecar {stem}"))
            .issuer_name(_name(f"accompanist test CA {self.name}"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._now - dt.timedelta(minutes=5))
            .not_valid_after(self._now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        identity = Identity(self.directory / f"{stem}.pem", self.directory / f"{stem}.key", self.ca)
        identity.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(identity.key, key)
        return identity
