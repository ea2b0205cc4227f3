"""What every benchmark script shares: the command line, the machine record, progress output,
percentiles, and writing ``{"machine": ..., "rows": [...]}`` with its plot.

Why one module: the issue fixes one interface for every script
(``python benchmarks/NAME.py [--quick] [--json PATH]``) and one result shape, so a reader
(or ``run_all.py``, or the smoke test) can treat them alike.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

__all__ = [
    "RESULTS",
    "ROOT",
    "Ticker",
    "bind_clash",
    "error_text",
    "free_port",
    "machine",
    "parser",
    "pct",
    "progress",
    "results_path",
    "write_results",
]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
_CONSOLE = Console(stderr=True)


def parser(doc: str | None, name: str) -> argparse.ArgumentParser:
    """The shared options: ``--quick`` (under two minutes) and ``--json PATH``."""
    first = (doc or name).strip().split("\n")[0]
    p = argparse.ArgumentParser(prog=f"python benchmarks/{name}.py", description=first)
    p.add_argument("--quick", action="store_true", help="a smaller run that finishes in under two minutes")
    p.add_argument("--json", type=Path, default=None, help=f"where to write the results (default results/{name}.json)")
    return p


def results_path(name: str, given: Path | None) -> Path:
    return given if given is not None else RESULTS / f"{name}.json"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _fdatasync_ms(samples: int = 20) -> float:
    """Median ``fdatasync`` of a small write in the temporary directory, where every benchmark
    keeps its stores: durable systems pay it per commit, so a busy disk shows here."""
    import statistics
    import tempfile

    times = []
    with tempfile.NamedTemporaryFile() as f:
        for _ in range(samples):
            f.write(b"x" * 128)
            f.flush()
            began = time.perf_counter()
            os.fdatasync(f.fileno())
            times.append(time.perf_counter() - began)
    return round(statistics.median(times) * 1000, 3)


def machine() -> dict[str, Any]:
    """What the numbers were measured on, including how busy the machine and its disk were at
    the start (a high load average or a slow fdatasync marks the numbers as noisy)."""
    try:
        import uvloop

        loop = f"uvloop {uvloop.__version__}"
    except ImportError:
        loop = "asyncio"
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "os": platform.platform(),
        "event_loop": loop,
        "load_average_at_start": [round(x, 2) for x in load],
        "fdatasync_ms_at_start": _fdatasync_ms(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def pct(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``; NaN when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def error_text(exc: BaseException) -> str:
    """A one-line reason for an ``"error"`` row (a peer that cannot be installed or started)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def bind_clash(exc: BaseException) -> bool:
    """Whether ``exc`` is a process of ours failing to bind a port handed out free a moment
    before (on a shared machine another process may take it in between): worth one more try
    with fresh ports, never a result."""
    text = str(exc)
    return "address already in use" in text or "cannot listen on" in text


def free_port() -> int:
    """A port free right now on loopback (bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_results(
    name: str,
    rows: list[dict[str, Any]],
    *,
    path: Path | None,
    extra: dict[str, Any] | None = None,
    plot: Callable[[dict[str, Any], Path], None] | None = None,
    started: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``{"machine", "rows", ...extra}`` to ``path`` (default ``results/NAME.json``) and
    the plot beside it (``.png``); return what was written."""
    data: dict[str, Any] = {"machine": started or machine(), "rows": rows, **(extra or {})}
    target = results_path(name, path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(data, indent=2, default=str) + "\n")
    if plot is not None:
        try:
            import matplotlib

            matplotlib.use("Agg")
        except ImportError:
            print("matplotlib not installed (pip install -e '.[bench]'): no plot", file=sys.stderr)
        else:
            plot(data, target.with_suffix(".png"))
    print(f"results: {target}", file=sys.stderr)
    return data


class Ticker:
    """One line of progress: a description and, where the count is known, a bar."""

    def __init__(self, progress: Progress, task: TaskID) -> None:
        self._progress = progress
        self._task = task

    def __call__(self, description: str | None = None, *, total: float | None = None, advance: float = 0) -> None:
        kwargs: dict[str, Any] = {"advance": advance}
        if description is not None:
            kwargs["description"] = description
        if total is not None:
            kwargs["total"] = total
            kwargs["completed"] = 0
        self._progress.update(self._task, **kwargs)


@contextlib.contextmanager
def progress(name: str) -> Iterator[Ticker]:
    """A rich progress line on stderr for the whole run of one benchmark."""
    columns = (
        SpinnerColumn(),
        TextColumn(f"[bold]{name}[/bold] {{task.description}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=_CONSOLE, transient=False) as bar:
        task = bar.add_task("starting", total=None)
        yield Ticker(bar, task)
