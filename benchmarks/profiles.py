"""Sample running processes with py-spy while a benchmark phase runs, and say where the time
goes: the functions with the most samples on top of the stack (own time) and on it at all
(inclusive), per process.

Why: where a benchmark shows us losing, the issue asks for a profile and a sentence on where
the time goes; this makes that part of the run (``saga.py --profile``) instead of a manual step.
"""

from __future__ import annotations

import asyncio
import collections
import shutil
import signal
from pathlib import Path

__all__ = ["Sampler", "summarize"]


class Sampler:
    """``py-spy record --format raw`` on one process, from :meth:`start` to :meth:`stop`."""

    def __init__(self, pid: int, out: Path, rate: int = 250) -> None:
        self.pid, self.out, self.rate = pid, out, rate
        self.proc: asyncio.subprocess.Process | None = None

    @staticmethod
    def missing() -> str | None:
        return None if shutil.which("py-spy") else "py-spy is not installed (pip install -e '.[bench]')"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            "py-spy", "record", "--pid", str(self.pid), "--format", "raw", "--rate", str(self.rate),
            "--output", str(self.out), "--nonblocking",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await asyncio.sleep(0.5)  # attached

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def _frame(text: str) -> str:
    # py-spy raw frames read "function (path/to/module.py:LINE)"; keep function and module.
    name, _, where = text.partition(" (")
    module = where.rsplit("/", 1)[-1].split(":")[0] if where else ""
    return f"{name} ({module})" if module else name


def summarize(path: Path, top: int = 12) -> dict[str, object]:
    """Samples, idle share, and the ``top`` functions by own and by inclusive samples (in % of
    the busy samples) from a py-spy raw (collapsed stacks) file."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";")]
        total += n
        leaf = frames[-1]
        if any(word in leaf for word in ("select (selectors", "_run_once", "poll", "wait (threading", "_worker (")):
            idle += n
            continue
        own[leaf] += n
        for frame in set(frames):
            inclusive[frame] += n
    busy = max(1, total - idle)
    return {
        "samples": total,
        "idle_share": round(idle / max(1, total), 3),
        "own": [(f, round(100 * n / busy, 1)) for f, n in own.most_common(top)],
        "inclusive": [(f, round(100 * n / busy, 1)) for f, n in inclusive.most_common(top)],
    }
