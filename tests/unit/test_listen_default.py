"""The peer endpoint's host when none is given: loopback only while every peer is local.

A sidecar whose peers live on other hosts but which listens on 127.0.0.1 could never be
reached by them; it used to be the default. Now a listen address without a host (the
default, or ``:PORT``) is decided from the peers, and beyond loopback the sidecar still
refuses to start without a key or TLS, saying so.
"""

from __future__ import annotations

import pytest

import accompanist as ac
from accompanist.sidecar.config_values import is_loopback, listen_address


@pytest.mark.parametrize(
    ("peers", "host"),
    [
        ({}, "127.0.0.1"),
        ({"b": ("127.0.0.1", 7002)}, "127.0.0.1"),
        ({"b": ("localhost", 7002), "c": ("::1", 7003)}, "127.0.0.1"),
        ({"b": ("127.0.0.1", 7002), "c": ("10.0.0.3", 7003)}, "0.0.0.0"),
        ({"b": ("payment.boutique.svc", 7000)}, "0.0.0.0"),
    ],
)
def test_a_listen_address_without_host_follows_the_peers(peers: dict[str, tuple[str, int]], host: str) -> None:
    assert listen_address(("", 0), peers) == (host, 0)
    assert listen_address(":7001", peers) == (host, 7001)
    config = ac.SidecarConfig(role="a", peers=peers, hmac_key="k" * 16)
    assert config.listen == (host, 0)


def test_a_given_host_is_kept() -> None:
    assert listen_address("127.0.0.1:7001", {"b": ("10.0.0.2", 7000)}) == ("127.0.0.1", 7001)
    assert listen_address(("10.0.0.1", 7001), {}) == ("10.0.0.1", 7001)
    config = ac.SidecarConfig.load(env={"ACCOMPANIST_ROLE": "a", "ACCOMPANIST_LISTEN": ":7001"})
    assert config.listen == ("127.0.0.1", 7001)


async def test_beyond_loopback_without_a_key_the_sidecar_still_refuses_to_start() -> None:
    from examples.bookseller import bookseller

    app = ac.App(bookseller)
    config = ac.SidecarConfig(role="buyer", peers={"seller": ("10.0.0.2", 7000)})
    assert config.listen[0] == "0.0.0.0" and not is_loopback(config.listen[0])
    with pytest.raises(ac.ConfigError, match="without hmac_key or TLS"):
        async with ac.Sidecar(config, app):
            pass
