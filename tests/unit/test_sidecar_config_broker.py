"""The broker transport in the sidecar's configuration: ``transport="nats://host:port"``, the
settings it refuses beside it, and embedded sidecars that reach each other only through it."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from examples.app import app as examples_app
from tests.support.nats_server import NatsServer

import accompanist as ac

KEY = "k" * 16


def test_tcp_is_the_default_and_a_broker_url_is_normalised() -> None:
    assert ac.SidecarConfig(role="a").transport == "tcp"
    cfg = ac.SidecarConfig(role="a", transport=" nats://10.0.0.5:4222 , nats://10.0.0.6:4222 ")
    assert cfg.transport == "nats://10.0.0.5:4222,nats://10.0.0.6:4222"
    env = {"ACCOMPANIST_ROLE": "a", "ACCOMPANIST_TRANSPORT": "nats://127.0.0.1:4222"}
    env |= {"ACCOMPANIST_JETSTREAM_STREAM": "SHOP", "ACCOMPANIST_JETSTREAM_ACK_WAIT": "12.5"}
    loaded = ac.SidecarConfig.load(env=env)
    assert (loaded.transport, loaded.jetstream_stream, loaded.jetstream_ack_wait) == (
        "nats://127.0.0.1:4222",
        "SHOP",
        12.5,
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"transport": "http://127.0.0.1:4222"}, "expected 'tcp' or a NATS JetStream broker as nats://HOST:PORT"),
        ({"transport": "nats://127.0.0.1"}, "expected 'tcp' or a NATS JetStream broker"),
        ({"transport": "nats://b:4222", "jetstream_stream": "a.b"}, "jetstream_stream 'a.b' cannot name"),
        ({"transport": "nats://b:4222", "jetstream_ack_wait": 0}, "jetstream_ack_wait must be greater than 0"),
        ({"transport": "nats://b:4222", "peers": {"b": "127.0.0.1:7002"}}, r"peers \(b\) are not used with"),
        ({"transport": "nats://b:4222", "listen": "0.0.0.0:7001"}, "listen=0.0.0.0:7001 opens no port"),
        (
            {"transport": "nats://b:4222", "tls_cert": "a.pem", "tls_key": "a.key", "tls_ca": "ca.pem"},
            "tls_cert/tls_key/tls_ca secure direct TCP links",
        ),
        ({"jetstream_stream": "SHOP"}, "apply to a broker transport only, but transport is 'tcp'"),
    ],
)
def test_settings_that_contradict_the_transport_are_refused(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ac.ConfigError, match=message):
        ac.SidecarConfig(role="a", **settings)  # type: ignore[arg-type]


async def test_a_broker_off_loopback_needs_a_key() -> None:
    cfg = ac.SidecarConfig(role="buyer", transport="nats://10.1.2.3:4222")
    with pytest.raises(ac.ConfigError, match="through the broker at 10.1.2.3 without hmac_key"):
        await ac.Sidecar(cfg, examples_app).start()


@pytest.mark.parametrize("mode", ["default", "fault-tolerant"])
async def test_embedded_sidecars_reach_each_other_through_the_broker(
    tmp_path: Path, nats_server: NatsServer, mode: str
) -> None:
    pytest.importorskip("nats")
    stream = f"T{uuid.uuid4().hex[:12]}"

    def config(role: str) -> ac.SidecarConfig:
        durable = mode == "fault-tolerant"
        return ac.SidecarConfig(
            role=role,
            transport=nats_server.url,  # no listen, no peers: the broker's address is all
            jetstream_stream=stream,
            hmac_key=KEY,
            store=f"sqlite:///{tmp_path}/{role}.db" if durable else None,
            mode=mode,
            receive_timeout=10,
        )

    async with ac.Sidecar(config("seller"), examples_app), ac.Sidecar(config("buyer"), examples_app) as buyer:
        assert await buyer.run("bookseller", "SICP", timeout=30) == "bought at 30"
        assert await buyer.run("bookseller", "TAPL", timeout=30) == "too expensive"
