"""The README's tutorial runs: its Python snippets execute, its excerpts match ``examples/``,
and its shell sessions print what they show."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import accompanist as ac
from accompanist.cli import app

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
EXCERPT = "# from "


def section(title: str) -> str:
    """The text of the ``## title`` section, up to the next ``## `` heading."""
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else len(README)]


TUTORIAL = section("Tutorial: your first choreography")
BLOCKS = [(lang, body) for lang, body in FENCE.findall(TUTORIAL)]


def test_the_tutorial_has_snippets_of_every_kind() -> None:
    kinds = {lang for lang, _ in BLOCKS}
    assert {"python", "console", "text"} <= kinds
    assert sum(1 for lang, body in BLOCKS if lang == "python" and not body.startswith(EXCERPT)) >= 6


def test_python_snippets_run_in_order() -> None:
    namespace: dict[str, Any] = {"__name__": "readme_tutorial"}
    for lang, body in BLOCKS:
        if lang == "python" and not body.startswith(EXCERPT):
            exec(compile(body, "README.md", "exec"), namespace)  # the snippets assert their own results
    assert namespace["bookseller"].name == "bookseller"


@pytest.mark.parametrize(
    "body",
    [b for lang, b in FENCE.findall(README) if lang == "python" and b.startswith(EXCERPT)],
    ids=lambda b: b.splitlines()[0],
)
def test_excerpts_match_the_examples(body: str) -> None:
    first, _, excerpt = body.partition("\n")
    source = (ROOT / first.removeprefix(EXCERPT).strip()).read_text(encoding="utf-8")
    assert excerpt in source


def run_cli(command: str) -> Any:
    argv = shlex.split(command)
    assert argv[0] == "accompanist"
    return CliRunner().invoke(app, argv[1:])


@pytest.mark.parametrize("body", [b for lang, b in BLOCKS if lang == "console"])
def test_shell_sessions_print_what_they_show(body: str) -> None:
    command, _, shown = body.partition("\n")
    assert command.startswith("$ ")
    result = run_cli(command.removeprefix("$ "))
    assert result.exit_code == 0
    assert result.stdout == shown


def test_error_tree_names_real_errors() -> None:
    (tree,) = [b for lang, b in BLOCKS if lang == "text"]
    names = re.findall(r"\b([A-Z]\w*Error)\b", tree)
    assert names[0] == "AccompanistError" and len(names) >= 4
    for name in names[1:]:
        assert getattr(ac, name).__bases__ == (ac.AccompanistError,), name


def test_quick_start_commands_are_the_ones_we_test() -> None:
    quick = section("Quick start")
    installs = re.findall(r"^pip install (.+?) && (.+)$", quick, re.MULTILINE)
    assert installs == [
        ("'.[demo]'", "accompanist demo"),  # run by tests/demo/test_demo_command.py, also from the built wheel
        ("-e '.[test]'", "python -m pytest"),  # what .ci/run runs
        ("-e .", "accompanist check examples.bookseller:bookseller SICP"),
    ]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "python -m pip install -q -e '.[test]' && python -m pytest" in ci
    result = run_cli(installs[2][1])
    assert result.exit_code == 0 and "bought at 30" in result.stdout
