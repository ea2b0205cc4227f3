"""``TcpTransport``: sidecar-to-sidecar envelopes over persistent TCP (optionally mutual TLS).

Why plain TCP with length-prefixed msgpack frames: this hop is on every step of every session,
and on loopback it is several times faster than HTTP or gRPC (see INFRA.md). Each transport
listens for its peers and keeps one outgoing connection per peer role, shared by all sessions
and pipelined: many envelopes in flight, answers matched by correlation id.

The receiving side never trusts the wire. A frame that fails to decode or authenticate is
dropped, counted in ``stats.rejected[reason]`` and logged (rate-limited); if the sender can
still be told (its correlation id is readable) it gets a reject. Only framing errors that lose
the stream's boundaries (bad length, oversized, truncated) close the connection, and only that
one. The event loop is whatever the caller runs: install uvloop yourself if you want it.

The listener is bounded before anyone has authenticated (see :class:`PeerLimits`): connections
per remote address and in total, a deadline for the first frame and for the rest of any frame
once its header arrived, an idle timeout, and the bytes that connections which have not yet
sent a verified frame may make it buffer. Each refusal is counted in ``stats.closed[reason]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import resource
import ssl
from collections import Counter
from collections.abc import Mapping

from accompanist.envelope import Envelope
from accompanist.errors import ConfigError, FrameError, TransportError
from accompanist.transport._answers import Answers
from accompanist.transport._peer import LinkConfig, PeerLink
from accompanist.transport._throttle import LogThrottle
from accompanist.transport._tls_accept import TlsListener
from accompanist.transport.base import Handler, TransportStats
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
    read_length,
    readable_corr,
    reject_info,
)
from accompanist.transport.limits import FIRST, FRAME, IDLE, CloseReason, Inbound, PeerLimits
from accompanist.transport.tls import TlsFailure, certificate_roles, classify_failure, tls_contexts

__all__ = ["CloseReason", "PeerLimits", "TcpTransport", "tls_contexts"]

_LOGGER_NAME = "accompanist.transport"
# File descriptors a sidecar needs besides its incoming peer connections: store, API,
# outgoing links, logs, the interpreter's own.
FD_RESERVE = 64


class TcpTransport:
    """Moves envelopes between sidecars over TCP; implements :class:`~accompanist.transport.Transport`.

    Args:
        role: this sidecar's role; incoming envelopes addressed to another role are rejected.
        listen: ``(host, port)`` to listen on; port 0 picks a free port (see :attr:`address`).
        peers: role -> ``(host, port)`` of the other sidecars (more via :meth:`set_peer`).
        keys: HMAC key ring (key id -> secret of 16+ bytes), or None to send and accept
            unsigned frames.
        current_key_id: the key of ``keys`` new frames are signed with.
        ssl_server: TLS context for the listener (see :func:`tls_contexts` for mutual TLS).
        ssl_client: TLS context for outgoing connections.
        max_frame: the largest frame body accepted or sent, in bytes.
        connect_timeout: seconds one connection attempt may take.
        backoff_min: first delay after a failed connection attempt, in seconds.
        backoff_max: cap of the exponentially growing delay between attempts.
        send_timeout: default ``timeout`` of :meth:`send`, in seconds.
        max_concurrency: handler calls in flight per incoming connection; the connection stops
            being read while all are busy, which pushes back on the sender.
        limits: bounds of the listener before and after authentication (:class:`PeerLimits`).
        logger: where rejected frames and lost connections are logged.
        rng: randomness for backoff jitter (seed it for reproducible tests).

    Attributes:
        stats: ``sent`` envelopes written to a connection, ``received`` envelopes passed to the
            handler, ``acked`` acknowledgements received, ``reconnects`` connections reopened
            to a peer after the first, ``rejected`` frames refused, by :class:`Reason` value
            (on either side of a connection), ``closed`` incoming connections refused or
            closed by a bound, by :class:`CloseReason` value.

    Raises:
        ConfigError: an argument is out of range or the key ring is malformed.
    """

    def __init__(
        self,
        role: str,
        listen: tuple[str, int],
        peers: Mapping[str, tuple[str, int]] | None = None,
        *,
        keys: Mapping[str, bytes] | None = None,
        current_key_id: str = DEFAULT_KEY_ID,
        ssl_server: ssl.SSLContext | None = None,
        ssl_client: ssl.SSLContext | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
        connect_timeout: float = 5.0,
        backoff_min: float = 0.05,
        backoff_max: float = 5.0,
        send_timeout: float = 10.0,
        max_concurrency: int = 256,
        limits: PeerLimits | None = None,
        logger: logging.Logger | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not role:
            raise ConfigError("TcpTransport needs a non-empty role")
        if max_frame < 64:
            raise ConfigError(f"max_frame={max_frame} is too small to hold an envelope")
        if not 0 < backoff_min <= backoff_max:
            raise ConfigError(f"need 0 < backoff_min <= backoff_max, got {backoff_min} and {backoff_max}")
        if connect_timeout <= 0 or send_timeout <= 0 or max_concurrency < 1:
            raise ConfigError("connect_timeout and send_timeout must be > 0 and max_concurrency >= 1")
        self.role = role
        self.stats = TransportStats()
        self._listen = listen
        self._peers = dict(peers or {})
        self._ring = KeyRing(keys, current_key_id) if keys is not None else None
        self._ssl_server = ssl_server
        self._max_frame = max_frame
        self._send_timeout = send_timeout
        self._max_concurrency = max_concurrency
        self._logger = logger or logging.getLogger(_LOGGER_NAME)
        self._throttle = LogThrottle(self._logger)
        self._link_config = LinkConfig(
            role=role,
            ring=self._ring,
            ssl=ssl_client,
            max_frame=max_frame,
            connect_timeout=connect_timeout,
            backoff_min=backoff_min,
            backoff_max=backoff_max,
            stats=self.stats,
            logger=self._logger,
            throttle=self._throttle,
            rng=rng or random.Random(),
        )
        self._links: dict[str, PeerLink] = {}
        self._server: asyncio.Server | None = None
        self._handler: Handler | None = None
        self._address = listen
        self._connections: set[asyncio.Task[None]] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._closed = False
        self._limits = limits or PeerLimits()
        self._max_connections = self._limits.max_connections
        self._inbound: dict[asyncio.Task[None], Inbound] = {}
        self._per_address: Counter[str] = Counter()
        self._watchdog: asyncio.TimerHandle | None = None
        self._tls: TlsListener | None = None

    # --- configuration ---------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """The address actually listened on (the real port once started with port 0)."""
        return self._address

    @property
    def peers(self) -> dict[str, tuple[str, int]]:
        """A copy of the role -> address table."""
        return dict(self._peers)

    def set_peer(self, role: str, address: tuple[str, int]) -> None:
        """Add a peer or move it to a new address (its current connection is dropped)."""
        self._peers[role] = address
        link = self._links.pop(role, None)
        if link is not None:
            task = asyncio.get_running_loop().create_task(link.close())
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    # --- receiving -------------------------------------------------------------------------

    async def start(self, handler: Handler) -> None:
        """Listen for peers; ``handler`` gets every authenticated envelope addressed to us.

        Raises:
            TransportError: already started or closed, or the address cannot be bound.
        """
        if self._server is not None or self._tls is not None or self._closed:
            raise TransportError(f"transport of role '{self.role}' is already started or closed")
        self._handler = handler
        self._check_fd_budget()
        host, port = self._listen
        backlog = min(1024, self._max_connections)
        try:
            if self._ssl_server is not None:
                # Our own handshake step, so a failed handshake is counted (asyncio's own
                # drops it silently); the streams it yields are the usual ones.
                self._tls = TlsListener(
                    self._serve,
                    self._tls_refused,
                    self._ssl_server,
                    handshake_timeout=self._limits.first_frame_timeout,
                    limit=2**16,
                    max_connections=self._max_connections,
                    over_limit=lambda peer: self._count_closed(CloseReason.LIMIT_TOTAL, peer),
                )
                self._address = await self._tls.start(host, port, backlog=backlog)
            else:
                self._server = await asyncio.start_server(
                    self._serve, host, port, limit=2**16, reuse_address=True, backlog=backlog
                )
                sockname = self._server.sockets[0].getsockname()
                self._address = (str(sockname[0]), int(sockname[1]))
        except OSError as exc:
            self._tls = None
            raise TransportError(f"role '{self.role}' cannot listen on {host}:{port}: {exc}") from exc
        self._schedule_watchdog()

    def _check_fd_budget(self) -> None:
        """Warn (and lower the connection cap) when ``ulimit -n`` cannot hold ``max_connections``."""
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = self._limits.max_connections
        if soft == resource.RLIM_INFINITY or soft >= wanted + FD_RESERVE:
            return
        usable = max(1, soft - FD_RESERVE)
        self._max_connections = min(wanted, usable)
        self._logger.warning(
            "%s: the open-file limit (ulimit -n) is %d, too low for peer_max_connections=%d plus %d for "
            "the store, API and peers; accepting at most %d peer connections (raise ulimit -n to %d)",
            self.role,
            soft,
            wanted,
            FD_RESERVE,
            self._max_connections,
            wanted + FD_RESERVE,
        )

    # The watchdog: deadlines are plain floats the read loop sets (no timer per frame on the
    # hot path); a periodic scan closes every connection past its deadline.

    def _schedule_watchdog(self) -> None:
        lim = self._limits
        period = max(0.05, min(1.0, lim.first_frame_timeout / 4, lim.frame_timeout / 4, lim.idle_timeout / 4))
        self._watchdog = asyncio.get_running_loop().call_later(period, self._watch)

    def _watch(self) -> None:
        if self._closed:
            return
        now = asyncio.get_running_loop().time()
        for conn in list(self._inbound.values()):
            if conn.reason is not None or now < conn.deadline:
                continue
            if conn.phase == IDLE and conn.inflight:
                conn.deadline = now + self._limits.idle_timeout  # it is waiting for our answers
                continue
            reason = (
                CloseReason.FIRST_FRAME_TIMEOUT
                if conn.phase == FIRST
                else CloseReason.FRAME_TIMEOUT
                if conn.phase == FRAME
                else CloseReason.IDLE_TIMEOUT
            )
            self._drop(conn, reason)
        self._schedule_watchdog()

    def _drop(self, conn: Inbound, reason: CloseReason, *, cancel: bool = True) -> None:
        conn.reason = reason
        self._count_closed(reason, conn.peer)
        conn.writer.transport.abort()  # frees the descriptor and the buffers now
        if cancel:
            conn.task.cancel()

    def _count_closed(self, reason: CloseReason, peer: str) -> None:
        self.stats.closed[reason.value] += 1
        self._throttle.warning(
            f"close:{reason.value}", "%s: closed a connection from %s (%s)", self.role, peer, reason.value
        )

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = _peername(writer)
        address = _peerhost(writer)
        lim = self._limits
        refused = None
        if len(self._inbound) >= self._max_connections:
            refused = CloseReason.LIMIT_TOTAL
        elif self._per_address[address] >= lim.max_connections_per_address:
            refused = CloseReason.LIMIT_PER_ADDRESS
        if refused is not None:
            self._count_closed(refused, peer)
            writer.transport.abort()
            return
        loop = asyncio.get_running_loop()
        conn = Inbound(task, writer, peer, address, loop.time() + lim.first_frame_timeout)
        if self._ssl_server is not None:
            # The handshake verified the certificate; what it may speak for is read once here.
            conn.roles = certificate_roles(writer.get_extra_info("peercert"))
            if not conn.roles:
                self._tls_refused(None, peer)
                writer.transport.abort()
                return
            conn.authenticated = True
        self._connections.add(task)
        self._inbound[task] = conn
        self._per_address[address] += 1
        self.stats.connections += 1
        busy = asyncio.Semaphore(self._max_concurrency)
        answers = Answers(writer, self._ring, self._max_frame, self._handlers)

        handling_now: set[asyncio.Future[None]] = set()

        def handled(done: asyncio.Future[None]) -> None:
            conn.inflight -= 1
            busy.release()
            handling_now.discard(done)

        try:
            while True:
                header = await reader.readexactly(HEADER_SIZE)
                conn.phase = FRAME
                conn.deadline = loop.time() + lim.frame_timeout
                length = read_length(header, max_frame=self._max_frame)
                if length > lim.unauth_frame_limit and not conn.authenticated:
                    if self.stats.unauth_bytes + length > lim.unauth_budget:
                        self._drop(conn, CloseReason.UNAUTH_BUDGET, cancel=False)
                        return
                    self.stats.unauth_bytes += length
                    try:
                        body = await reader.readexactly(length)
                    finally:
                        self.stats.unauth_bytes -= length
                else:
                    body = await reader.readexactly(length)
                conn.phase = IDLE
                conn.deadline = loop.time() + lim.idle_timeout
                await busy.acquire()
                handling = self._dispatch(body, answers, peer, conn)
                if handling is None:
                    busy.release()
                else:
                    conn.inflight += 1
                    handling_now.add(handling)
                    handling.add_done_callback(handled)
        except asyncio.IncompleteReadError as exc:
            if exc.partial and conn.reason is None:  # a clean close between frames is not an error
                self._reject(Reason.TRUNCATED, peer, f"connection closed {len(exc.partial)} bytes into a frame")
            elif handling_now:  # the sender is done sending, not reading: its answers still go out
                with contextlib.suppress(asyncio.CancelledError):  # close(): see below
                    await asyncio.wait(set(handling_now), timeout=lim.frame_timeout)
        except InvalidFrameError as exc:  # bad length prefix: frame boundaries are lost
            self._reject(exc.reason, peer, f"{exc.detail}; closing the connection")
        except (OSError, ssl.SSLError) as exc:
            self._logger.debug("%s: connection from %s ended: %s", self.role, peer, exc)
        except asyncio.CancelledError:
            # Only close() and the watchdog cancel this task. Python 3.11's stream callback
            # reports a cancelled connection task as an unhandled error, so end it normally.
            pass
        finally:
            self._connections.discard(task)
            self._inbound.pop(task, None)
            self._per_address[address] -= 1
            if self._per_address[address] <= 0:
                del self._per_address[address]
            self.stats.connections -= 1
            answers.out.flush()  # answers queued in this turn still leave before the close
            writer.close()

    def _dispatch(
        self, body: bytes, answers: Answers, peer: str, conn: Inbound | None = None
    ) -> asyncio.Future[None] | None:
        """Decode one frame and hand it to the handler; return what settles when the handler is
        done with it (a task, or the handler's own future), or None when that is already so.

        An envelope frame with ``corr`` 0 comes from a sender that does not wait (at most once):
        it gets no answer, not even a reject."""
        try:
            frame = decode_body(body, ring=self._ring)
            if self._ring is not None and conn is not None:
                conn.authenticated = True  # its MAC verified under our key ring
        except InvalidFrameError as exc:
            self._reject(exc.reason, peer, exc.detail)
            corr = readable_corr(body)
            if corr:
                answers.send(Frame(FrameType.REJECT, corr, info=str(exc)))
            return None
        envelope = frame.envelope
        if frame.type != FrameType.ENVELOPE or envelope is None:
            self._reject(Reason.UNEXPECTED, peer, f"{frame.type} frame on an incoming connection")
            return None
        if envelope.dst != self.role:
            info = f"envelope for role '{envelope.dst}' reached role '{self.role}' (misconfigured peer address?)"
            self._reject(Reason.WRONG_DST, peer, info)
            if frame.corr:
                answers.send(Frame(FrameType.REJECT, frame.corr, info=info))
            return None
        if conn is not None and conn.roles is not None and envelope.src not in conn.roles:
            info = (
                f"wrong-src: envelope from role '{envelope.src}' on a connection whose certificate speaks for "
                f"{', '.join(sorted(conn.roles))} only"
            )
            self._reject(Reason.WRONG_SRC, peer, info)
            if frame.corr:
                answers.send(Frame(FrameType.REJECT, frame.corr, info=info))
            return None
        assert self._handler is not None
        self.stats.received += 1
        link = self._links.get(envelope.src)
        if link is not None:
            link.peer_alive()
        try:
            pending = self._handler(envelope)
        except Exception as exc:
            self._answer(frame.corr, envelope, exc, answers, peer)
            return None
        if pending is None:  # accepted at once: no task
            self._answer(frame.corr, envelope, None, answers, peer)
            return None
        if isinstance(pending, asyncio.Future):  # settled by the handler: a callback, no task
            settling: asyncio.Future[None] = pending
        else:  # a coroutine: it runs as a task of its own (cancelled when the transport closes)
            settling = asyncio.ensure_future(pending)
            self._handlers.add(settling)
            settling.add_done_callback(self._handlers.discard)

        def settled(done: asyncio.Future[None]) -> None:
            if not done.cancelled():  # cancelled: the transport closes; the sender retries
                self._answer(frame.corr, envelope, done.exception(), answers, peer)

        settling.add_done_callback(settled)
        return settling

    def _answer(self, corr: int, envelope: Envelope, exc: BaseException | None, answers: Answers, peer: str) -> None:
        """Acknowledge (``exc`` None) or reject an envelope the handler is done with."""
        if exc is None:
            answer = Frame(FrameType.ACK, corr)
        else:
            info = reject_info(exc)
            self._reject(Reason.HANDLER, peer, f"handler refused {envelope.key}: {info}")
            answer = Frame(FrameType.REJECT, corr, info=info)
        if corr:  # 0: the sender did not wait for an answer
            answers.send(answer, envelope.auth)

    def _tls_refused(self, exc: BaseException | None, peer: str) -> None:
        """Count (and log, rate-limited) an incoming TLS connection that failed or names no role."""
        reason = TlsFailure.NO_ROLE if exc is None else classify_failure(exc)
        self.stats.tls_failed["in", reason.value] += 1
        detail = "its certificate names no role (accompanist://role/NAME)" if exc is None else str(exc)
        self._throttle.warning(
            f"tls:{reason.value}", "%s: TLS connection from %s refused (%s): %s", self.role, peer, reason.value, detail
        )

    def _reject(self, reason: Reason, peer: str, detail: str) -> None:
        self.stats.rejected[reason.value] += 1
        self._throttle.warning(
            f"in:{reason.value}", "%s: rejected a frame from %s (%s): %s", self.role, peer, reason.value, detail
        )

    # --- sending ---------------------------------------------------------------------------

    async def send(self, envelope: Envelope, *, wait: bool = True, timeout: float | None = None) -> None:
        """Send ``envelope`` to the sidecar of ``envelope.dst`` (see ``Transport.send``).

        ``timeout=None`` means the transport's ``send_timeout``; it bounds connecting, writing
        and (with ``wait``) the answer. A connection lost with the envelope in flight fails the
        send: the peer may or may not have handled it, so the caller retries and the receiver
        deduplicates by ``seq``.

        Raises:
            TransportError: unknown role, peer unreachable, connection lost, rejected, or no
                answer within ``timeout``.
            FrameError: the envelope encodes to more than ``max_frame`` bytes.
        """
        if self._closed:
            raise TransportError(f"transport of role '{self.role}' is closed")
        link = self._link(envelope.dst)
        limit = self._send_timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        corr = link.next_corr() if wait else 0  # 0: the receiver sends no answer
        data = encode_frame(Frame(FrameType.ENVELOPE, corr, envelope), ring=self._ring, max_frame=self._max_frame)
        try:
            conn = link.live()
            if conn is None:
                try:
                    async with asyncio.timeout_at(deadline):
                        conn = await link.connection(deadline)
                except TimeoutError:  # still connecting at the deadline: say why, not "no answer"
                    raise link.unreachable(f"no connection within {limit:g}s") from None
            if not wait:
                if link.write(conn, data):
                    async with asyncio.timeout_at(deadline):
                        await link.drain(conn)
                self.stats.sent += 1
                return
            answer: asyncio.Future[None] = loop.create_future()
            conn.pending[corr] = answer
            # A timer on the future costs less than a timeout context on this hot path.
            expiry = loop.call_at(deadline, _expire, answer)
            try:
                if link.write(conn, data):
                    async with asyncio.timeout_at(deadline):
                        await link.drain(conn)
                self.stats.sent += 1
                await answer
            finally:
                expiry.cancel()
                conn.pending.pop(corr, None)
                if answer.done() and not answer.cancelled():
                    answer.exception()  # retrieved, even if a failed drain left it unawaited
        except TimeoutError:
            raise TransportError(
                f"no answer from role '{envelope.dst}' for envelope {envelope.key} within {limit:g}s"
            ) from None

    def post(self, envelope: Envelope, timeout: float | None = None) -> asyncio.Future[None]:
        """Start sending ``envelope``; the future ends with its answer (see ``Transport.post``).

        On a live connection this writes the frame now and returns the very future the answer
        resolves: no task, no coroutine. Otherwise (connecting, backing off) it runs
        :meth:`send` in a task.
        """
        link = self._links.get(envelope.dst)
        conn = link.live() if link is not None and not self._closed else None
        if link is None or conn is None:
            return asyncio.ensure_future(self.send(envelope, wait=True, timeout=timeout))
        limit = self._send_timeout if timeout is None else timeout
        corr = link.next_corr()
        try:
            data = encode_frame(Frame(FrameType.ENVELOPE, corr, envelope), ring=self._ring, max_frame=self._max_frame)
        except FrameError as exc:
            failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            return failed
        why = f"no answer from role '{envelope.dst}' for envelope {envelope.key} within {limit:g}s"
        return link.post(conn, corr, data, limit, why)

    def _link(self, role: str) -> PeerLink:
        link = self._links.get(role)
        if link is not None:
            return link
        address = self._peers.get(role)
        if address is None:
            known = ", ".join(sorted(self._peers)) or "none"
            raise TransportError(f"role '{self.role}' has no address for role '{role}'; known peers: {known}")
        link = self._links[role] = PeerLink(role, address, self._link_config)
        return link

    # --- shutting down ---------------------------------------------------------------------

    async def close(self) -> None:
        """Stop listening, close every connection and fail every pending send."""
        if self._closed:
            return
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._tls is not None:
            await self._tls.close()
        if self._server is not None:
            self._server.close()
        current = asyncio.current_task()
        tasks = [t for t in (*self._connections, *self._handlers) if t is not current]
        for task in tasks:
            task.cancel()
        links, self._links = list(self._links.values()), {}
        await asyncio.gather(*(link.close() for link in links), *tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


def _expire(answer: asyncio.Future[None]) -> None:
    if not answer.done():
        answer.set_exception(TimeoutError())


def _peername(writer: asyncio.StreamWriter) -> str:
    name = writer.get_extra_info("peername")
    if isinstance(name, tuple) and len(name) >= 2:
        return f"{name[0]}:{name[1]}"
    return str(name)


def _peerhost(writer: asyncio.StreamWriter) -> str:
    name = writer.get_extra_info("peername")
    if isinstance(name, tuple) and name:
        return str(name[0])
    return str(name)
