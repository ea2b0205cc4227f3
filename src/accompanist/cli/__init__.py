"""The ``accompanist`` command line.

Each command lives in its own module and is registered on :data:`app` here, so the
top-level help lists them all and ``accompanist.cli:app`` stays importable for tests and
for tools that embed the CLI.
"""

from __future__ import annotations

from typing import Annotated

import typer

from accompanist._version import __version__
from accompanist.cli.check import check
from accompanist.cli.demo import demo
from accompanist.cli.diagram import diagram
from accompanist.cli.replay import export, replay
from accompanist.cli.sessions import sessions
from accompanist.cli.show import show
from accompanist.cli.sidecar import sidecar
from accompanist.cli.ui import ui
from accompanist.cli.versions import versions

__all__ = ["app", "main"]

app = typer.Typer(
    name="accompanist",
    help="Resilient choreographic programming: run the demo, check choreographies, run sidecars, inspect sessions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"accompanist {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Accompanist: write a distributed interaction once, run each role's part beside its service."""


# One line per command module; each module holds one command function.
app.command("demo")(demo)
app.command("check")(check)
app.command("sidecar")(sidecar)
app.command("sessions")(sessions)
app.command("show")(show)
app.command("diagram")(diagram)
app.command("ui")(ui)
app.command("export")(export)
app.command("replay")(replay)
app.command("versions")(versions)


def main() -> None:
    """Entry point of the ``accompanist`` console script."""
    app(prog_name="accompanist")
