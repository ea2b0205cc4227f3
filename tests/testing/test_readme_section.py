"""The README's "Testing your choreography" section: its example runs and finds what it says,
its report excerpt is what explore prints, and its replay session is what replay prints."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end]


BLOCKS = FENCE.findall(section("Testing your choreography"))


def test_the_explore_example_runs_and_finds_the_bug() -> None:
    namespace: dict[str, Any] = {"__name__": "readme_testing"}
    exec(compile(BLOCKS[0][1], "README.md", "exec"), namespace)  # it asserts what it finds
    report = namespace["report"]
    assert len(report.runs) == 14 and len(report.failures) == 1
    shown = BLOCKS[1][1]
    for line in shown.splitlines()[:3]:
        assert line in str(report), line


def test_the_replay_session_shows_real_output() -> None:
    (console,) = [body for lang, body in BLOCKS if lang == "console"]
    assert (
        "DIVERGES at step 3: the record has recv(bank->shop#1/value), the current code makes send(shop->bank#2/value)"
        in console
    )
