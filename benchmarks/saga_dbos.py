"""The DBOS side of the saga benchmark: one process running the saga as a DBOS workflow on a
SQLite system database in WAL mode, driven with :mod:`sagaload`'s line protocol.

``python saga_dbos.py DB URLS``: ``DB`` is the system database file (put in WAL mode before
DBOS opens it; SQLite's default ``synchronous=FULL`` applies), ``URLS`` the services' URLs as
JSON. Each order is one workflow whose id is the order id; each step calls its service with
:class:`sagaservices.ServiceClient`, keyed by ``<workflow id>/<step>``; infrastructure errors
are retried by DBOS (about a minute), declines are not and compensate the committed steps,
last first. DBOS is an in-process library: the workflows run in this process, which is also
the client, as a DBOS user deploys it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from sagaload import serve_stdio  # noqa: E402
from sagaservices import STEPS, ServiceClient, ServiceDeclinedError  # noqa: E402

__all__ = ["main"]


def main(argv: list[str]) -> None:
    from dbos import DBOS, SetWorkflowID

    db, urls = Path(argv[0]), json.loads(argv[1])
    with sqlite3.connect(db) as conn:  # journal_mode=WAL is kept in the file
        conn.execute("PRAGMA journal_mode=WAL")
    DBOS(config={"name": "saga-bench", "system_database_url": f"sqlite:///{db}", "log_level": "WARNING"})
    client = ServiceClient(urls)

    def retry(exc: BaseException) -> bool:
        return not isinstance(exc, ServiceDeclinedError)

    def make(step: str, undo: bool) -> Any:
        @DBOS.step(
            name=f"{'undo-' if undo else ''}{step}",
            retries_allowed=True,
            interval_seconds=0.05,
            backoff_rate=1.5,
            max_attempts=120,
            should_retry=retry,
        )
        async def call(order: dict[str, Any]) -> dict[str, Any]:
            return await client.post(step, order, f"{DBOS.workflow_id}/{step}", undo=undo)

        return call

    commits = {step: make(step, False) for step in STEPS}
    undos = {step: make(step, True) for step in STEPS}

    @DBOS.workflow(name="order")
    async def order_workflow(order: dict[str, Any]) -> str:
        done: list[str] = []
        for step in STEPS:
            try:
                await commits[step](order)
            except Exception:
                for committed in reversed(done):
                    await undos[committed](order)
                return "compensated"
            done.append(step)
        return "completed"

    DBOS.launch()

    async def place(order: dict[str, Any]) -> str:
        with SetWorkflowID(order["order_id"]):
            return str(await order_workflow(order))

    asyncio.run(serve_stdio(place))
    DBOS.destroy()


if __name__ == "__main__":
    main(sys.argv[1:])
