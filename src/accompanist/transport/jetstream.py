"""``JetStreamTransport``: envelopes between sidecars through a NATS JetStream broker.

Why a broker: with TCP a sender needs every peer's address and a peer must be up to take an
envelope; here every sidecar needs only the broker's address, and envelopes for a sidecar that
is down wait in the broker (on its disk) until it comes back. The layout (a stream per mesh, a
subject and a durable consumer per role) is in :mod:`accompanist.transport._jetstream_setup`.

**What "accepted" means.** ``send(wait=True)`` returns once JetStream acknowledged the
publish: the envelope is then stored in the broker's stream. That is the answer the relay of
fault-tolerant mode needs: it marks the outbox row acknowledged because the envelope is now
durable somewhere that will deliver it, exactly as TCP's answer means "durable in the peer's
inbox". The broker then owns delivery: it pushes the envelope to the receiver's consumer and
redelivers it until the receiver **acknowledges it, which it does only after its handler (the
engine's inbox write) accepted it**. A crash in between means a redelivery, which the engine
deduplicates by ``seq``. ``send(wait=False)`` is a plain NATS publish (at-most-once, as on TCP).

**Never trust the broker.** Frames are the same signed frames as on TCP
(:mod:`accompanist.transport.frames`): anyone who can publish to the broker could forge an
envelope without the HMAC key. A message that does not decode, does not verify, or is not
addressed to this role is counted in ``stats.rejected[reason]`` and **terminated** (``term``:
never redelivered). A handler refusal for good (an unknown choreography, a conflicting
session) is terminated too; a refusal that may pass (the store is failing, the sidecar is
stopping) is redelivered with a growing delay, so an infrastructure error never loses an
envelope. The sender does not hear of refusals: its envelope was accepted by the broker.

**Hello.** A (re)started sidecar's ``hello`` tells peers to retry what they hold for it; with
a broker nothing is held for it (it is all in the stream), so outgoing hellos are not
published, unless they carry the versions their sender serves (see
:mod:`accompanist.engine.versions`), which the peer needs. What makes a relay back off here
is the broker being unreachable, so the transport gives the engine the equivalent signal:
when the connection to the broker comes back it hands the handler a ``hello`` from every role
a send to has failed meanwhile, and the relay retries them at once instead of waiting out its
backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Final

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from accompanist.envelope import Envelope, EnvelopeKind
from accompanist.errors import ConfigError, EnvelopeRejectedError, TransportError
from accompanist.transport._jetstream_client import KeepAlive, disconnect, settle
from accompanist.transport._jetstream_setup import Layout, ensure_consumer, ensure_stream
from accompanist.transport._throttle import LogThrottle
from accompanist.transport.base import Handler, TransportStats
from accompanist.transport.broker import DEFAULT_STREAM, check_stream_name
from accompanist.transport.frames import (
    DEFAULT_KEY_ID,
    DEFAULT_MAX_FRAME,
    HEADER_SIZE,
    Frame,
    FrameType,
    InvalidFrameError,
    KeyRing,
    Reason,
    decode_body,
    encode_frame,
    reject_info,
)

__all__ = ["DEFAULT_STREAM", "JetStreamTransport"]

_LOGGER_NAME: Final = "accompanist.transport"


class JetStreamTransport:
    """Moves envelopes through NATS JetStream; implements :class:`~accompanist.transport.Transport`.

    Args:
        role: this sidecar's role: it consumes the subject ``<stream>.<role>``.
        servers: the broker's URL(s), ``nats://host:port`` (several: a cluster).
        stream: the JetStream stream of this mesh (every sidecar of the mesh names the same).
        keys: HMAC key ring (key id -> secret of 16+ bytes), or None to send and accept
            unsigned frames.
        current_key_id: the key of ``keys`` new frames are signed with.
        max_frame: the largest frame body accepted or sent, in bytes (the broker's own
            ``max_payload``, 1 MiB by default, bounds it too).
        ack_wait: seconds the broker waits for this role to accept an envelope before it
            redelivers it (a handler still working says so every ``ack_wait / 3``).
        max_inflight: envelopes handed to this role and not yet accepted, at most.
        send_timeout: default ``timeout`` of :meth:`send`, in seconds.
        connect_timeout: seconds the first connection to the broker may take.
        retry_min: first delay before a temporarily refused envelope is redelivered.
        retry_max: cap of that delay, which doubles with each redelivery.
        logger: where refused messages and broker disconnections are logged.

    Attributes:
        stats: ``sent`` envelopes published, ``acked`` publishes the broker acknowledged,
            ``received`` envelopes passed to the handler, ``reconnects`` reconnections to the
            broker, ``rejected`` messages refused, by :class:`Reason` value.

    Raises:
        ConfigError: an argument is out of range or the key ring is malformed.
    """

    def __init__(
        self,
        role: str,
        servers: str | list[str],
        *,
        stream: str = DEFAULT_STREAM,
        keys: dict[str, bytes] | None = None,
        current_key_id: str = DEFAULT_KEY_ID,
        max_frame: int = DEFAULT_MAX_FRAME,
        ack_wait: float = 30.0,
        max_inflight: int = 256,
        send_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        retry_min: float = 0.1,
        retry_max: float = 5.0,
        logger: logging.Logger | None = None,
    ) -> None:
        if not role:
            raise ConfigError("JetStreamTransport needs a non-empty role")
        if max_frame < 64:
            raise ConfigError(f"max_frame={max_frame} is too small to hold an envelope")
        if min(ack_wait, send_timeout, connect_timeout) <= 0 or max_inflight < 1:
            raise ConfigError("ack_wait, send_timeout and connect_timeout must be > 0 and max_inflight >= 1")
        if not 0 < retry_min <= retry_max:
            raise ConfigError(f"need 0 < retry_min <= retry_max, got {retry_min} and {retry_max}")
        self.role = role
        self.stats = TransportStats()
        self.servers = [servers] if isinstance(servers, str) else list(servers)
        self.layout = Layout(check_stream_name(stream), role)
        self._ring = KeyRing(keys, current_key_id) if keys is not None else None
        self._max_frame = max_frame
        self._ack_wait = ack_wait
        self._max_inflight = max_inflight
        self._send_timeout = send_timeout
        self._connect_timeout = connect_timeout
        self._retry = (retry_min, retry_max)
        self._logger = logger or logging.getLogger(_LOGGER_NAME)
        self._throttle = LogThrottle(self._logger)
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._sub: Subscription | None = None
        self._handler: Handler | None = None
        self._slots = asyncio.Semaphore(max_inflight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._failed_to: set[str] = set()  # roles a send failed to since the broker was last reached
        self._closed = False

    @property
    def where(self) -> str:
        """The broker, for messages: ``nats://host:port`` (the first of several)."""
        return self.servers[0] if len(self.servers) == 1 else f"{self.servers[0]} (+{len(self.servers) - 1})"

    # --- starting --------------------------------------------------------------------------

    async def start(self, handler: Handler) -> None:
        """Connect to the broker, set up the stream and this role's consumer, and start receiving.

        Raises:
            TransportError: already started or closed, the broker cannot be reached within
                ``connect_timeout``, or it has no JetStream or an incompatible stream.
        """
        if self._handler is not None or self._closed:
            raise TransportError(f"transport of role '{self.role}' is already started or closed")
        self._handler = handler
        nc = self._nc = Client()
        try:
            # The client retries forever once connected (a broker restart is an outage to wait
            # out), and so it would at the first connect too: bound that one ourselves.
            async with asyncio.timeout(self._connect_timeout):
                await nc.connect(
                    self.servers,
                    connect_timeout=max(1, round(self._connect_timeout)),
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    # Typed int upstream, but only ever slept on: a quarter second brings a
                    # restarted broker back into use four times sooner than the 1s minimum.
                    reconnect_time_wait=0.25,  # type: ignore[arg-type]
                    disconnected_cb=self._disconnected,
                    reconnected_cb=self._reconnected,
                    error_cb=self._error,
                    name=f"accompanist-{self.role}",
                )
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            self._closed = True
            await disconnect(nc)
            raise TransportError(
                f"role '{self.role}' cannot reach the NATS broker at {self.where} within "
                f"{self._connect_timeout:g}s: {str(exc) or type(exc).__name__}"
            ) from exc
        self._js = self._nc.jetstream(timeout=self._send_timeout)
        try:
            await ensure_stream(self._js, self.layout)
            await ensure_consumer(self._js, self.layout, ack_wait=self._ack_wait, max_ack_pending=self._max_inflight)
            self._sub = await self._nc.subscribe(self.layout.deliver, cb=self._on_message)
            await self._nc.flush(timeout=max(1, round(self._send_timeout)))
        except BaseException:
            self._closed = True
            await disconnect(self._nc)
            raise

    async def _disconnected(self) -> None:
        if not self._closed:
            self._logger.warning("%s: lost the NATS broker at %s; reconnecting", self.role, self.where)

    async def _reconnected(self) -> None:
        self.stats.reconnects += 1
        self._logger.info("%s: reconnected to the NATS broker", self.role)
        # Not awaited here: the client's reconnection waits for this callback.
        task = asyncio.get_running_loop().create_task(self._back_with_broker())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _back_with_broker(self) -> None:
        """After a reconnection: give the engine the equivalent of a peer's hello (see the
        module's docstring), so the relay retries at once what failed while the broker was
        away; then make sure the stream and this role's consumer are still there (a broker
        that lost its store comes back without them)."""
        failed, self._failed_to = self._failed_to, set()
        handler = self._handler
        if handler is None or self._closed:
            return
        for role in sorted(failed):
            hello = Envelope("", "", 0, role, self.role, 0, EnvelopeKind.HELLO)
            with contextlib.suppress(Exception):
                pending = handler(hello)
                if pending is not None:
                    await pending
        js = self._js
        if js is None or self._closed:
            return
        try:
            await ensure_stream(js, self.layout)
            await ensure_consumer(
                js, self.layout, ack_wait=self._ack_wait, max_ack_pending=self._max_inflight, recreate=False
            )
        except TransportError as exc:
            self._logger.warning("%s: after reconnecting: %s", self.role, exc)

    async def _error(self, exc: Exception) -> None:
        self._throttle.warning(f"nats:{type(exc).__name__}", "%s: NATS client: %s", self.role, exc)

    # --- receiving -------------------------------------------------------------------------

    async def _on_message(self, msg: Msg) -> None:
        """Called by the client one message at a time. A handler that decides at once is
        answered here; one that accepts later (once the envelope is in the inbox) is awaited
        in a task of its own, so it never holds up the envelopes behind it."""
        envelope = self._admit(msg)
        if envelope is None:
            await settle(msg.term())
            return
        handler = self._handler
        if handler is None or self._closed:
            return  # not acknowledged: the broker delivers it again at the next start
        self.stats.received += 1
        try:
            pending = handler(envelope)
        except Exception as exc:
            await self._refused(msg, envelope, exc)
            return
        if pending is None:
            await settle(msg.ack())
            return
        await self._slots.acquire()
        task = asyncio.get_running_loop().create_task(self._accept_later(msg, envelope, pending))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _accept_later(self, msg: Msg, envelope: Envelope, pending: Awaitable[None]) -> None:
        alive = KeepAlive(msg, self._ack_wait / 3, self._tasks)
        try:
            await pending
        except Exception as exc:
            alive.stop()
            await self._refused(msg, envelope, exc)
            return
        finally:
            alive.stop()
        await settle(msg.ack())

    async def _refused(self, msg: Msg, envelope: Envelope, exc: Exception) -> None:
        """Terminate what is refused for good; redeliver, later and later, what may pass."""
        self._reject(Reason.HANDLER, f"handler refused {envelope.key}: {reject_info(exc)}")
        permanent = isinstance(exc, EnvelopeRejectedError) and exc.permanent
        await settle(msg.term() if permanent else msg.nak(delay=self._redelivery_delay(msg)))

    def _admit(self, msg: Msg) -> Envelope | None:
        """The envelope of an authenticated frame addressed to this role, or None (counted)."""
        body = msg.data
        try:
            if len(body) > self._max_frame:
                raise InvalidFrameError(Reason.OVERSIZED, f"message of {len(body)} bytes exceeds max_frame")
            frame = decode_body(body, ring=self._ring)
        except InvalidFrameError as exc:
            self._reject(exc.reason, exc.detail)
            return None
        envelope = frame.envelope
        if frame.type != FrameType.ENVELOPE or envelope is None:
            self._reject(Reason.UNEXPECTED, f"a {frame.type} frame on the broker")
            return None
        if envelope.dst != self.role:
            self._reject(Reason.WRONG_DST, f"envelope for role '{envelope.dst}' on the subject of '{self.role}'")
            return None
        return envelope

    async def _keep_alive(self, msg: Msg) -> None:
        """Tell the broker a slow handler is still at it, so it does not redeliver meanwhile."""
        while True:
            await asyncio.sleep(self._ack_wait / 3)
            await settle(msg.in_progress())

    def _redelivery_delay(self, msg: Msg) -> float:
        try:
            attempt = max(1, int(msg.metadata.num_delivered))
        except (nats.errors.Error, ValueError, AttributeError, IndexError):
            attempt = 1
        low, high = self._retry
        return float(min(high, low * 2 ** min(attempt - 1, 20)))

    def _reject(self, reason: Reason, detail: str) -> None:
        self.stats.rejected[reason.value] += 1
        self._throttle.warning(
            f"in:{reason.value}", "%s: refused a message from the broker (%s): %s", self.role, reason.value, detail
        )

    # --- sending ---------------------------------------------------------------------------

    async def send(self, envelope: Envelope, *, wait: bool = True, timeout: float | None = None) -> None:
        """Publish ``envelope`` to the subject of ``envelope.dst`` (see ``Transport.send``).

        With ``wait=True`` return once the broker acknowledged the publish: the envelope is
        stored in the stream and will be delivered, however long its receiver is down.

        Raises:
            TransportError: the broker is unreachable, refused the publish, or did not answer
                within ``timeout`` (the envelope may or may not be stored: retry it, the
                receiver deduplicates).
            FrameError: the envelope encodes to more than ``max_frame`` or than the broker's
                ``max_payload``.
        """
        if self._closed or self._nc is None or self._js is None:
            raise TransportError(f"transport of role '{self.role}' is {'closed' if self._closed else 'not started'}")
        if envelope.kind == EnvelopeKind.HELLO and not envelope.payload:
            return  # nothing is held for a restarted peer: its envelopes wait in the stream
        data = encode_frame(Frame(FrameType.ENVELOPE, 0, envelope), ring=self._ring, max_frame=self._max_frame)
        body = data[HEADER_SIZE:]
        if len(body) > self._nc.max_payload > 0:
            raise InvalidFrameError(
                Reason.OVERSIZED, f"frame of {len(body)} bytes exceeds the broker's max_payload {self._nc.max_payload}"
            )
        subject = self.layout.subject(envelope.dst)
        limit = self._send_timeout if timeout is None else timeout
        try:
            if wait:
                await self._js.publish(subject, body, timeout=limit, stream=self.layout.stream)
                self.stats.acked += 1  # by the broker: stored in the stream
            else:
                await self._nc.publish(subject, body)
            self.stats.sent += 1
        except nats.js.errors.APIError as exc:
            self._failed_to.add(envelope.dst)
            raise TransportError(f"the NATS broker at {self.where} refused {envelope.key}: {exc}") from exc
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            self._failed_to.add(envelope.dst)
            what = f"no answer within {limit:g}s" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            raise TransportError(
                f"cannot publish {envelope.key} to the NATS broker at {self.where}: {what}; "
                "it may or may not be stored, retry it"
            ) from exc

    def post(self, envelope: Envelope, timeout: float | None = None) -> asyncio.Future[None]:
        """:meth:`send` with ``wait=True``, as a future (see ``Transport.post``): done once the
        broker stored the envelope, or with its error."""
        return asyncio.ensure_future(self.send(envelope, wait=True, timeout=timeout))

    # --- shutting down ---------------------------------------------------------------------

    async def close(self) -> None:
        """Stop receiving and disconnect. Envelopes being handled and not yet accepted are
        not acknowledged: the broker delivers them again to the next start of this role."""
        if self._closed:
            return
        self._closed = True
        nc, self._nc = self._nc, None
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
                await self._sub.unsubscribe()
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if nc is not None:
            await disconnect(nc)
