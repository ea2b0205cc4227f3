"""Embedded configuration: every setting of the CLI is a typed keyword of ``ac.SidecarConfig``,
and combinations that make no sense are a ``ConfigError`` naming them."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

import accompanist as ac
from accompanist.cli.sidecar import sidecar as sidecar_command
from accompanist.sidecar.config import known_keys

KEY = "k" * 16
TLS = {"tls_cert": "a.pem", "tls_key": "a.key", "tls_ca": "ca.pem"}


def test_every_cli_option_and_file_key_is_a_keyword() -> None:
    keywords = set(inspect.signature(ac.SidecarConfig).parameters)
    cli = set(inspect.signature(sidecar_command).parameters) - {"config", "log_level", "log_format", "peer"}
    assert cli | {"peers"} <= keywords
    assert known_keys() == keywords - {"engine"}  # the TOML file, ACCOMPANIST_* and keywords agree
    for f in dataclasses.fields(ac.EngineConfig):
        assert f.name in keywords, f"EngineConfig.{f.name} is not a SidecarConfig keyword"


def test_mode_and_store_as_keywords() -> None:
    cfg = ac.SidecarConfig(role="a", mode="fault-tolerant", store="sqlite:///./a.db", receive_timeout=3)
    assert cfg.engine.mode is ac.Mode.FAULT_TOLERANT and cfg.mode is ac.Mode.FAULT_TOLERANT
    assert cfg.engine.receive_timeout == 3.0 and cfg.receive_timeout == 3.0
    assert ac.SidecarConfig(role="a", mode=ac.Mode.FAULT_TOLERANT).store_url == "sqlite:///./a.db"
    plain = ac.SidecarConfig(role="a")
    assert plain.mode is ac.Mode.DEFAULT and plain.store_url == "memory:"
    assert plain.receive_timeout == ac.EngineConfig().receive_timeout  # the value in force


def test_engine_config_still_works_and_combines_with_keywords() -> None:
    engine = ac.EngineConfig(mode=ac.Mode.FAULT_TOLERANT, receive_timeout=10)
    cfg = ac.SidecarConfig(role="a", store="sqlite:///./a.db", engine=engine, max_inflight=7, compensation="parallel")
    assert cfg.engine.mode is ac.Mode.FAULT_TOLERANT and cfg.engine.receive_timeout == 10
    assert cfg.engine.max_inflight == 7 and cfg.engine.compensation is ac.CompensationOrder.PARALLEL
    same = ac.SidecarConfig(role="a", store="sqlite:///./a.db", engine=engine, mode="fault-tolerant")
    assert same.engine == engine
    contradiction = r"mode='default' contradicts engine=EngineConfig\(mode='fault-tolerant'\)"
    with pytest.raises(ac.ConfigError, match=contradiction):
        ac.SidecarConfig(role="a", engine=engine, mode="default")


def test_values_are_normalised_whichever_way_they_come() -> None:
    cfg = ac.SidecarConfig(
        role="a",
        listen="127.0.0.1:7001",  # type: ignore[arg-type]
        peers={"b": "127.0.0.1:7002", "c": ("::1", 7003)},  # type: ignore[dict-item]
        api="unix:/run/acc/a.sock",
        api_socket_mode="0660",  # type: ignore[arg-type]
        old_hmac_keys="k0=" + "o" * 16,  # type: ignore[arg-type]
        hmac_key=KEY,
    )
    assert cfg.listen == ("127.0.0.1", 7001)
    assert cfg.peers == {"b": ("127.0.0.1", 7002), "c": ("::1", 7003)}
    assert cfg.api == Path("/run/acc/a.sock") and cfg.api_address == Path("/run/acc/a.sock")
    assert cfg.api_socket_mode == 0o660 and cfg.old_hmac_keys == {"k0": "o" * 16}
    assert ac.SidecarConfig(role="a", api="127.0.0.1:0").api == ("127.0.0.1", 0)
    env = {"ACCOMPANIST_ROLE": "a", "ACCOMPANIST_API": "unix:/tmp/a.sock", "ACCOMPANIST_API_SOCKET_MODE": "640"}
    loaded = ac.SidecarConfig.load(env=env)
    assert loaded.api == Path("/tmp/a.sock") and loaded.api_socket_mode == 0o640


def _error(**kwargs: Any) -> str:
    with pytest.raises(ac.ConfigError) as info:
        ac.SidecarConfig(role="a", **kwargs)
    return str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"store": "sqlite:///./a.db"}, r"store='sqlite:///./a.db' is durable but mode is 'default'.*mode='fault-tol"),
        ({"store": "postgresql://db/acc", "mode": "default"}, "is durable but mode is 'default'"),
        ({"store": "memory:", "mode": "fault-tolerant"}, "store='memory:' keeps nothing.*fault-tolerant"),
        ({"mode": "fault_tolerant"}, "mode must be 'default' or 'fault-tolerant', got 'fault_tolerant'"),
        ({"compensation": "backwards"}, "compensation must be 'ordered' or 'parallel'"),
        ({"tls_cert": "a.pem"}, "tls_cert is set without tls_key"),
        ({"tls_key": "a.key", "tls_ca": "ca.pem"}, "tls_key is set without tls_cert"),
        ({"tls_cert": "a.pem", "tls_key": "a.key"}, "tls_cert needs tls_ca"),
        ({"tls_ca": "ca.pem"}, "tls_ca is set without tls_cert"),
        ({"hmac_key": "short"}, "hmac_key is 5 bytes, shorter than the 16 bytes allowed"),
        ({"hmac_key": KEY, "old_hmac_keys": {"k0": "tiny"}}, r"old_hmac_keys\['k0'\] is 4 bytes"),
        ({"old_hmac_keys": {"k0": KEY}}, "old_hmac_keys are accepted only beside a current hmac_key"),
        ({"hmac_key": KEY, "old_hmac_keys": {"k1": KEY}}, "hmac_key_id 'k1' is also in old_hmac_keys"),
        ({"hmac_key": KEY, "hmac_key_id": ""}, "hmac_key_id must not be empty"),
        ({"sqlite_synchronous": "NORMAL"}, "sqlite_synchronous=NORMAL applies to SQLite stores only.*'memory:'"),
        ({"peers": {"a": ("127.0.0.1", 1)}}, "peers names this sidecar's own role 'a'"),
        ({"listen": ("127.0.0.1", 7001), "api": ("127.0.0.1", 7001)}, "both want 127.0.0.1:7001"),
        ({"api_socket_mode": 0o660}, "api_socket_mode 0660 applies to a Unix socket API only"),
        ({"api": "unix:/x", "api_socket_mode": "rw"}, "api_socket_mode must be octal permission bits"),
        ({"api": "unix:/" + "x" * 120}, "longer than the 107 bytes"),
        ({"max_frame": 1024 * 1024}, r"max_payload \(4128768 bytes\) leaves no room.*max_frame \(1048576"),
        ({"retry_min": 3, "retry_max": 1}, r"retry_min \(3s\) must not exceed retry_max \(1s\)"),
        ({"receive_timeout": 0}, "receive_timeout must be greater than 0"),
        ({"receive_timeout": float("nan")}, "receive_timeout must be a finite number"),
        ({"grace": -1}, "grace must not be negative"),
        ({"buffer_limit": 0}, "buffer_limit must be at least 1"),
        ({"engine": ac.EngineConfig(deliver_timeout=-1.0)}, "deliver_timeout must not be negative"),
        ({"loop": "tokio"}, "loop must be 'auto', 'uvloop' or 'asyncio'"),
        ({"peer_max_connections": 0}, "peer port limits: max_connections"),
        ({"listen": ("127.0.0.1", 70000)}, "invalid listen address"),
        ({"engine": {"mode": "fault-tolerant"}}, "engine must be an ac.EngineConfig"),
    ],
)
def test_combinations_that_make_no_sense_are_named(kwargs: dict[str, Any], named: str) -> None:
    assert re.search(named, _error(**kwargs)), _error(**kwargs)


def test_a_secret_is_never_echoed_in_an_error() -> None:
    assert "not-a-pair-secret" not in _error(hmac_key=KEY, old_hmac_keys="not-a-pair-secret")
    assert "tiny-key" not in _error(hmac_key="tiny-key")


def test_sensible_combinations_are_accepted() -> None:
    ac.SidecarConfig(role="a", mode="fault-tolerant", store="postgresql://acc@db/acc")
    ac.SidecarConfig(role="a", mode="fault-tolerant", sqlite_synchronous="normal")
    ac.SidecarConfig(role="a", hmac_key=KEY, hmac_key_id="k2", old_hmac_keys={"k1": "o" * 16}, **TLS)
    ac.SidecarConfig(role="a", listen=("127.0.0.1", 0), api=("127.0.0.1", 0), retention=0, grace=0)
    ac.SidecarConfig(role="a", api=Path("/run/a.sock"), api_socket_mode=0o600)
    ac.SidecarConfig(role="a", max_frame=1024 * 1024, max_payload=1024 * 1024 - 4096)
