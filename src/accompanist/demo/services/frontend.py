"""The frontend: where a shopper's checkout starts, through the choreography or the orchestrator.

``Checkout`` with ``via=CHOREOGRAPHY`` starts a ``checkout`` session at the frontend's
sidecar (``POST /sessions?wait=true`` with the request id as the session id, so a retried
request starts nothing new) and waits for its outcome; with ``via=ORCHESTRATOR`` it calls the
checkout service's ``PlaceOrder``. Either way it records the checkout in its own database.
While its sidecar restarts it retries the start (same session id) until its deadline.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import msgspec

from accompanist.demo._proto import boutique_pb2 as pb
from accompanist.demo._proto import boutique_pb2_grpc as pb_grpc
from accompanist.demo.clients import Clients
from accompanist.demo.model import OrderResult
from accompanist.demo.services.base import Context, Database
from accompanist.demo.wire import order_result_to_pb, request_from_pb

__all__ = ["SIDECAR_ENV", "SIDECAR_TOKEN_ENV", "FrontendService"]

SIDECAR_ENV = "BOUTIQUE_SIDECAR_API"
"""The environment variable holding the frontend sidecar's API base URL."""

SIDECAR_TOKEN_ENV = "BOUTIQUE_SIDECAR_TOKEN"
"""The environment variable holding the sidecar API's bearer token, when it has one (a pod's
sidecar listens on the pod's address so the kubelet can probe ``/healthz``; the token keeps
the rest of its API to the frontend)."""

DEADLINE = 120.0
"""Seconds a checkout may take before the frontend gives up waiting (the saga goes on)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS checkouts (
    request_id TEXT PRIMARY KEY,
    via TEXT NOT NULL,
    user_id TEXT NOT NULL,
    status TEXT NOT NULL,
    order_id TEXT,
    session_id TEXT,
    error TEXT,
    started REAL NOT NULL,
    finished REAL
);
"""


class FrontendService(pb_grpc.FrontendServiceServicer):
    """The frontend's gRPC API."""

    def __init__(self, db_path: Path, seed: bool = False, clients: Clients | None = None) -> None:
        self.db = Database(db_path, SCHEMA)
        self.clients = clients or Clients()
        self.sidecar = os.environ.get(SIDECAR_ENV, "").rstrip("/")
        token = os.environ.get(SIDECAR_TOKEN_ENV, "")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http: aiohttp.ClientSession | None = None

    def register(self, server: grpc.aio.Server) -> None:
        """Add this servicer to ``server``."""
        pb_grpc.add_FrontendServiceServicer_to_server(self, server)

    async def open(self) -> None:
        """Open the HTTP session to the sidecar and the channel to the checkout service."""
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DEADLINE + 10))
        await self.clients.open("checkout")

    async def close(self) -> None:
        """Close them."""
        if self.http is not None:
            await self.http.close()
        await self.clients.close()

    def _record(self, rid: str, via: str, user: str, **fields: Any) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO checkouts (request_id, via, user_id, status, started) VALUES (?, ?, ?, 'running', ?) "
                "ON CONFLICT (request_id) DO NOTHING",
                (rid, via, user, time.time()),
            )
            if fields:
                sets = ", ".join(f"{k} = ?" for k in fields)
                conn.execute(f"UPDATE checkouts SET {sets} WHERE request_id = ?", (*fields.values(), rid))

    async def Checkout(self, request: pb.CheckoutRequest, context: Context) -> pb.CheckoutResponse:  # noqa: N802
        """Check out ``request.order``; answer the outcome."""
        order = request.order
        via = "orchestrator" if request.via == pb.ORCHESTRATOR else "choreography"
        self._record(order.request_id, via, order.user_id)
        if via == "orchestrator":
            answer = await self._orchestrated(order)
        else:
            answer = await self._choreographed(order)
        self._record(
            order.request_id,
            via,
            order.user_id,
            status=answer.status,
            order_id=answer.order.order_id or None,
            session_id=answer.session_id or None,
            error=answer.error or None,
            finished=time.time(),
        )
        return answer

    async def _orchestrated(self, order: pb.PlaceOrderRequest) -> pb.CheckoutResponse:
        try:
            placed = await self.clients.checkout().PlaceOrder(order, timeout=DEADLINE, wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            outcome = dict(exc.trailing_metadata() or ()).get("outcome", "failed")
            return pb.CheckoutResponse(status=str(outcome), error=exc.details() or exc.code().name)
        return pb.CheckoutResponse(status="completed", order=placed.order)

    async def _choreographed(self, order: pb.PlaceOrderRequest) -> pb.CheckoutResponse:
        assert self.http is not None
        body = {
            "choreography": "checkout",
            "args": [msgspec.to_builtins(request_from_pb(order))],
            "session_id": order.request_id,
        }
        url = f"{self.sidecar}/sessions?wait=true&timeout={DEADLINE:g}"
        end = time.monotonic() + DEADLINE
        while True:
            try:
                async with self.http.post(url, json=body, headers=self.headers) as r:
                    answer = await r.json()
                    if r.status < 500 and r.status != 429:  # an answer; else busy or restarting
                        break
            except (TimeoutError, aiohttp.ClientError) as exc:
                answer = {"status": "unknown", "error": f"the sidecar did not answer: {exc!r}"}
            if time.monotonic() > end:
                break
            await asyncio.sleep(0.2)  # the sidecar is restarting or busy: the same session id is safe
        status = str(answer.get("status") or "unknown")
        response = pb.CheckoutResponse(
            status=status, error=str(answer.get("error") or ""), session_id=str(answer.get("session_id") or "")
        )
        if status == "completed":
            response.order.CopyFrom(order_result_to_pb(msgspec.convert(answer["result"], OrderResult)))
        return response
