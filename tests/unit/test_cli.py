"""The ``accompanist`` command line: version, ``check``, and clean errors."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

import accompanist as ac
from accompanist.cli import app
from accompanist.cli.check import parse_arg
from accompanist.diagram import mermaid_sequence
from accompanist.interpreters import TraceEvent

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"accompanist {ac.__version__}\n"


def test_check_bookseller_prints_result_and_diagram() -> None:
    result = runner.invoke(app, ["check", "examples.bookseller:bookseller", "SICP"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "result: 'bought at 30'"
    diagram = result.stdout.split("\n\n", 1)[1]
    assert diagram.splitlines() == [
        "sequenceDiagram",
        "    participant buyer",
        "    participant seller",
        "    buyer->>seller: 'SICP'",
        "    Note over seller: price_of = 30",
        "    seller->>buyer: 30",
        "    Note over buyer: within_budget = True",
        "    buyer->>seller: True",
        "    Note over seller: ship = 'shipping SICP'",
        "    Note over buyer: receipt = 'bought at 30'",
    ]


def test_check_other_title_and_no_diagram() -> None:
    result = runner.invoke(app, ["check", "examples.bookseller:bookseller", "TAPL", "--no-diagram"])
    assert result.exit_code == 0
    assert result.stdout == "result: 'too expensive'\n"


def test_check_parses_json_arguments() -> None:
    result = runner.invoke(app, ["check", "examples.merge_sort:merge_sort", "[3, 1, 2, 1]", "--no-diagram"])
    assert result.exit_code == 0
    assert result.stdout == "result: [1, 1, 2, 3]\n"


@pytest.mark.parametrize(
    ("text", "value"),
    [("30", 30), ("SICP", "SICP"), ('"30"', "30"), ("[1, 2]", [1, 2]), ("true", True), ("{", "{"), ("", "")],
)
def test_parse_arg(text: str, value: object) -> None:
    assert parse_arg(text) == value and type(parse_arg(text)) is type(value)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("junk", "invalid reference 'junk': expected MODULE:ATTR"),
        ("no_such_module_xyz:chor", "cannot import module 'no_such_module_xyz'"),
        ("examples.bookseller:nope", "module 'examples.bookseller' has no attribute 'nope'"),
        ("examples.bookseller:BUDGET", "examples.bookseller:BUDGET is not a choreography but a int"),
    ],
)
def test_check_bad_targets_exit_2_without_traceback(target: str, message: str) -> None:
    result = runner.invoke(app, ["check", target])
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_check_run_errors_exit_1_without_traceback() -> None:
    result = runner.invoke(app, ["check", "examples.bookseller:bookseller"])
    assert result.exit_code == 1
    assert result.stderr == (
        "error: bookseller failed: DefinitionError: choreography 'bookseller' takes 1 argument(s), got 0\n"
    )


def test_check_imports_from_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_chors.py").write_text(
        textwrap.dedent(
            """
            import accompanist as ac

            A, B = ac.roles("a", "b")

            @ac.choreography("peek", roles=(A, B))
            async def peek(ch, x):
                told = await ch.select(A, B, x)
                return await ch.locally(B, lambda v: v, told)  # the mistake: a result not at a

            @ac.choreography("relay", roles=(A, B))
            async def relay(ch, x):
                told = await ch.select(A, B, x)
                return await ch.comm(B, A, told)
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "my_chors", raising=False)

    ok = runner.invoke(app, ["check", "my_chors:relay", '{"n": 1}'])
    assert ok.exit_code == 0, ok.output
    assert "    a-)b: {'n': 1}\n    b->>a: {'n': 1}\n" in ok.stdout

    bad = runner.invoke(app, ["check", "my_chors:peek", "1"])
    assert bad.exit_code == 1
    assert bad.stderr.startswith("error: peek failed: ProjectionError: session result: role 'a' cannot open")


def test_mermaid_escapes_and_aliases() -> None:
    roles = [ac.Role("end"), ac.Role("bank-a"), "plain"]
    trace = [
        TraceEvent("value", "end", ("bank-a", "plain"), "", "'a;b#c'"),
        TraceEvent("local", "plain", (), "f.<locals>.<lambda>", "<x>\nnext"),
        TraceEvent("uuid", "bank-a", (), "uuid", "UUID('1')"),
    ]
    assert mermaid_sequence(roles, trace) == textwrap.dedent(
        """\
        sequenceDiagram
            participant p0 as end
            participant p1 as bank-a
            participant plain
            p0->>p1: 'a#59;b#35;c'
            p0->>plain: 'a#59;b#35;c'
            Note over plain: #lt;lambda#gt; = #lt;x#gt; next
            Note over p1: uuid = UUID('1')
        """
    )
    assert re.search(r"^\s*end\b", mermaid_sequence(roles, trace), re.MULTILINE) is None


def test_the_event_loop_is_a_setting() -> None:
    from accompanist.cli.sidecar import event_loop

    runner, which = event_loop("asyncio")
    assert which == "asyncio"
    _, which = event_loop("auto")
    assert which.startswith("uvloop")  # the test extra installs it: auto takes the faster loop
    assert event_loop("uvloop")[1] == which
    with pytest.raises(ac.ConfigError, match="loop must be"):
        event_loop("trio")
