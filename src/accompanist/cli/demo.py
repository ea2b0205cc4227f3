"""``accompanist demo``: the Online Boutique checkout as real processes (see :mod:`accompanist.demo.run`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["demo"]

_NEEDS = "accompanist demo needs gRPC: pip install 'accompanist[demo]'"


def demo(
    orders: Annotated[int, typer.Option(min=1, help="Orders placed through each checkout.")] = 200,
    crash: Annotated[
        bool | None,
        typer.Option(
            "--crash/--no-crash",
            help="SIGKILL the payment sidecar and the shipping service mid-run and restart them "
            "(default: on in fault-tolerant mode, off in default mode, which keeps no state to recover).",
            show_default=False,
        ),
    ] = None,
    mode: Annotated[str, typer.Option(help="The sidecars' mode: 'fault-tolerant' or 'default'.")] = "fault-tolerant",
    keep: Annotated[
        Path | None, typer.Option(help="Keep databases, stores and logs in this directory (default: a temp dir).")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Orders in flight at once.")] = 16,
    delay: Annotated[
        float, typer.Option(min=0, help="Milliseconds of one-way delay on every link between hosts (a proxy).")
    ] = 0.0,
) -> None:
    """Run the Online Boutique checkout: 15 processes, N orders, a crash, every order verified."""
    if mode not in ("fault-tolerant", "default"):
        typer.echo(f"error: --mode must be 'fault-tolerant' or 'default', got {mode!r}", err=True)
        raise typer.Exit(2)
    # The demo forks its processes while its own gRPC clients run; gRPC's fork handlers would
    # only log that they skip themselves. Read when grpc is first imported.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    try:
        import google.protobuf  # noqa: F401
        import grpc  # noqa: F401
    except ImportError:
        typer.echo(f"error: {_NEEDS}", err=True)
        raise typer.Exit(2) from None
    from rich.console import Console

    from accompanist.demo.run import DemoOptions

    console = Console()
    if crash is None:
        crash = mode == "fault-tolerant"
        if not crash:
            console.print("default mode keeps sessions in memory: no crash (--crash shows what one loses)")
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        code = _run(DemoOptions(orders, crash, mode, keep, concurrency, delay, kept=True, diagram_dir=keep), console)
    else:
        with tempfile.TemporaryDirectory(prefix="accompanist-demo-") as tmp:
            code = _run(
                DemoOptions(orders, crash, mode, Path(tmp), concurrency, delay, diagram_dir=Path.cwd()), console
            )
    raise typer.Exit(code)


def _run(options: object, console: object) -> int:
    """Run the demo; on SIGINT or SIGTERM stop every process first, then exit 130 or 143."""
    from accompanist.demo.run import run_demo

    async def main() -> int:
        task = asyncio.current_task()
        assert task is not None
        caught: list[int] = []
        loop = asyncio.get_running_loop()

        def interrupt(signum: int) -> None:
            caught.append(signum)
            task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, interrupt, sig)
        try:
            code, _ = await run_demo(options, console)  # type: ignore[arg-type]
            return code
        except asyncio.CancelledError:
            if not caught:
                raise
            name = signal.Signals(caught[0]).name
            console.print(f"[yellow]{name}[/]: every process of the demo was stopped")  # type: ignore[attr-defined]
            return 128 + caught[0]

    return asyncio.run(main())
