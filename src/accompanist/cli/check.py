"""``accompanist check``: run a choreography centrally and show what happened.

Before any sidecar exists, a developer can run a choreography with every role in one process
and see its result and a sequence diagram of the messages, which is the quickest way to
find out whether the choreography says what they meant.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer

from accompanist.diagram import mermaid_sequence
from accompanist.errors import AccompanistError, ConfigError
from accompanist.interpreters.central import CentralRunner
from accompanist.language.choreography import Choreography
from accompanist.sidecar.loader import load_object

__all__ = ["check", "load_choreography", "parse_arg"]


def parse_arg(text: str) -> Any:
    """A command-line argument as a value: JSON when it parses as JSON, else the plain string.

    So ``30`` is a number, ``'[1, 2]'`` a list, ``'"30"'`` a string, and ``SICP`` a string
    without the quoting a shell makes awkward.
    """
    try:
        return json.loads(text)
    except ValueError:
        return text


def load_choreography(reference: str) -> Choreography:
    """The choreography named by ``MODULE:CHOREO``, imported with the current directory first.

    Raises:
        ConfigError: the reference is malformed, the module cannot be imported, it has no such
            attribute, or the attribute is not a choreography.
    """
    obj = load_object(reference)
    if not isinstance(obj, Choreography):
        raise ConfigError(
            f"{reference} is not a choreography but a {type(obj).__name__}; declare one with @ac.choreography"
        )
    return obj


def check(
    target: Annotated[
        str, typer.Argument(metavar="MODULE:CHOREO", help="The choreography, e.g. examples.bookseller:bookseller.")
    ],
    args: Annotated[
        list[str] | None,
        typer.Argument(metavar="[ARGS]...", help="Its arguments: JSON values, or plain strings."),
    ] = None,
    diagram: Annotated[bool, typer.Option("--diagram/--no-diagram", help="Print a Mermaid sequence diagram.")] = True,
) -> None:
    """Run a choreography with every role in this process; print its result and a diagram."""
    try:
        choreography = load_choreography(target)
    except AccompanistError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    values = [parse_arg(a) for a in args or []]
    try:
        run = asyncio.run(CentralRunner(choreography).run(*values))
    except AccompanistError as exc:
        typer.echo(f"error: {choreography.name} failed: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"result: {run.result!r}")
    if diagram:
        typer.echo("")
        typer.echo(mermaid_sequence(choreography.roles, run.trace), nl=False)
