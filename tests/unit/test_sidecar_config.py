"""Sidecar configuration: TOML file, ACCOMPANIST_* environment, options, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from accompanist import ConfigError, SidecarConfig
from accompanist.engine.config import Mode, ReplayPolicy


def test_file_then_environment_then_options(tmp_path: Path) -> None:
    file = tmp_path / "seller.toml"
    file.write_text(
        'role = "seller"\nlisten = "127.0.0.1:7002"\nmode = "fault-tolerant"\nreceive_timeout = 12\n'
        'store = "sqlite:///./from-file.db"\n[peers]\nbuyer = "127.0.0.1:7001"\n'
    )
    env = {"ACCOMPANIST_RECEIVE_TIMEOUT": "7.5", "ACCOMPANIST_RETRY_MAX": "0.4", "ACCOMPANIST_STORE": "memory:"}
    cfg = SidecarConfig.load(file=file, env=env, overrides={"store": "sqlite:///./opt.db", "api": None})
    assert cfg.role == "seller" and cfg.listen == ("127.0.0.1", 7002)
    assert cfg.peers == {"buyer": ("127.0.0.1", 7001)}
    assert cfg.mode is Mode.FAULT_TOLERANT
    assert cfg.engine.receive_timeout == 7.5 and cfg.engine.retry_max == 0.4  # env beats file
    assert cfg.store_url == "sqlite:///./opt.db"  # options beat env
    assert cfg.api is None


def test_defaults_follow_the_mode() -> None:
    assert SidecarConfig.load(env={}, overrides={"role": "a"}).store_url == "memory:"
    ft = SidecarConfig.load(env={}, overrides={"role": "a", "mode": "fault-tolerant", "replay_policy": "rerun"})
    assert ft.store_url == "sqlite:///./a.db" and ft.engine.replay_policy is ReplayPolicy.RERUN


def test_peers_from_an_environment_string() -> None:
    cfg = SidecarConfig.load(env={"ACCOMPANIST_ROLE": "a", "ACCOMPANIST_PEERS": "b=127.0.0.2:7001, c=[::1]:7002"})
    assert cfg.peers == {"b": ("127.0.0.2", 7001), "c": ("::1", 7002)}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "needs a role"),
        ({"role": "a", "listen": "nowhere"}, "invalid listen address 'nowhere'"),
        ({"role": "a", "peers": ["b"]}, "expected ROLE=HOST:PORT"),
        ({"role": "a", "mode": "fast"}, "mode must be 'default' or 'fault-tolerant'"),
        ({"role": "a", "receive_timeout": "soon"}, "receive_timeout must be a number"),
        ({"role": "a", "max_inflight": 0}, "max_inflight must be at least 1"),
        ({"role": "a", "sqlite_synchronous": "maybe"}, "FULL, NORMAL or OFF"),
        ({"role": "a", "tls_cert": "c.pem"}, "tls_cert and tls_key must be given together"),
        ({"role": "a", "colour": "blue"}, "unknown configuration key(s): colour"),
    ],
)
def test_bad_settings_are_named(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        SidecarConfig.from_mapping(values)


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("role = \n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        SidecarConfig.load(file=bad, env={})
    with pytest.raises(ConfigError, match="cannot read config file"):
        SidecarConfig.load(file=tmp_path / "missing.toml", env={})
