"""The API token is a setting like any other: keyword, TOML key, environment variable."""

from __future__ import annotations

from pathlib import Path

import accompanist as ac
from accompanist.sidecar.config import SidecarConfig


def test_api_token_from_keyword_file_and_environment(tmp_path: Path) -> None:
    assert ac.SidecarConfig(role="a", api_token="k").api_token == "k"
    assert SidecarConfig(role="a").api_token is None
    file = tmp_path / "a.toml"
    file.write_text('role = "a"\napi_token = "from-file"\n')
    assert SidecarConfig.load(file=file, env={}).api_token == "from-file"
    env = {"ACCOMPANIST_API_TOKEN": "from-env"}
    assert SidecarConfig.load(file=file, env=env).api_token == "from-env"
    assert SidecarConfig.load(env={}, overrides={"role": "a", "api_token": ""}).api_token is None
