"""The README's "Durable timers" section: its example runs (on a virtual clock) and does what
the section says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import accompanist as ac
from accompanist.testing import virtual_time_available

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    start = README.index(f"\n### {title}")
    end = README.find("\n### ", start + 1)
    return README[start:end]


@pytest.mark.skipif(not virtual_time_available(), reason="needs looptime (pip install '.[testing]')")
def test_the_durable_timers_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", _section("Durable timers"), re.S)
    assert len(blocks) == 1
    namespace: dict[str, object] = {"ac": ac}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # it asserts what it shows
    assert namespace["effects"] == ["held book", "released book"]
