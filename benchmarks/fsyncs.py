"""Count the ``fsync``/``fdatasync`` calls of running processes with ``strace -f -c``.

Why strace: Temporal and DBOS keep no counter of their durable commits, and a commit that
reaches the disk is one such call (SQLite WAL with ``synchronous=FULL`` syncs the WAL per
commit), so counting the calls of every process of a system measures all of them the same
way, Accompanist's sidecars included. strace attached to a process slows every system call of
it, so counting runs in a pass of its own, never while latency is measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
from pathlib import Path

__all__ = ["FsyncCounter", "strace_missing"]


def strace_missing() -> str | None:
    """Why fsyncs cannot be counted here, or None when they can."""
    if shutil.which("strace") is None:
        return "strace is not installed (apt-get install strace)"
    return None


class FsyncCounter:
    """``strace -f -c -e trace=fsync,fdatasync -p PID ...`` from :meth:`start` to :meth:`stop`."""

    def __init__(self, pids: list[int], out: Path) -> None:
        self.pids = pids
        self.out = out
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Attach to every process (and all their threads), then return.

        Raises:
            RuntimeError: strace could not attach (no ptrace permission, a process gone).
        """
        args = ["strace", "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", str(self.out)]
        for pid in self.pids:
            args += ["-p", str(pid)]
        self.proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        assert self.proc.stderr is not None
        attached = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                while attached < len(self.pids):
                    line = await self.proc.stderr.readline()
                    if not line:
                        break
                    if b"attached" in line:
                        attached += 1
                    elif b"Operation not permitted" in line or b"No such process" in line:
                        raise RuntimeError(f"strace cannot attach: {line.decode(errors='replace').strip()}")
        if self.proc.returncode is not None or attached == 0:
            raise RuntimeError("strace did not attach")
        self._drain = asyncio.create_task(self._read_rest())

    async def _read_rest(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while await self.proc.stderr.readline():
            pass

    async def stop(self) -> int:
        """Detach and return the calls counted since :meth:`start`."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(self.proc.wait(), 30)
        await self._drain
        total = 0
        for line in self.out.read_text().splitlines():
            fields = line.split()
            if fields and fields[-1] in ("fsync", "fdatasync") and len(fields) >= 5:
                total += int(fields[3])
        return total
