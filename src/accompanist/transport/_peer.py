"""The outgoing side of :class:`~accompanist.transport.tcp.TcpTransport`: one link per peer.

A link owns at most one live connection to its peer, shared by every session, and pipelines
envelopes over it: each frame carries a correlation id and the peer's ack or reject resolves
the matching future, in whatever order answers come back. Connecting is lazy and serialised
by a lock, and spaced by jittered exponential backoff after failures, so a down peer costs one
attempt per backoff window however many sessions want it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import ssl
from dataclasses import dataclass

from accompanist.errors import TransportError
from accompanist.transport._coalesce import CoalescingWriter
from accompanist.transport._throttle import LogThrottle
from accompanist.transport.base import TransportStats
from accompanist.transport.frames import (
    HEADER_SIZE,
    Frame,
    FrameType,
    InvalidFrameError,
    KeyRing,
    Reason,
    decode_body,
    read_length,
    rejected,
)
from accompanist.transport.tls import TlsFailure, certificate_roles, classify_failure

__all__ = ["LinkConfig", "PeerLink"]

# Above this many unsent bytes a writer waits for the socket; below it writes never block,
# which keeps the common small-envelope path free of an extra await.
WRITE_HIGH_WATER = 256 * 1024

_AUTH_REASONS = frozenset({Reason.UNSIGNED, Reason.UNKNOWN_KEY, Reason.BAD_MAC})


@dataclass(frozen=True)
class LinkConfig:
    """What every link of one transport shares."""

    role: str
    ring: KeyRing | None
    ssl: ssl.SSLContext | None
    max_frame: int
    connect_timeout: float
    backoff_min: float
    backoff_max: float
    stats: TransportStats
    logger: logging.Logger
    throttle: LogThrottle
    rng: random.Random


class _Connection:
    """One TCP (or TLS) connection to a peer and the sends awaiting its answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.out = CoalescingWriter(writer, asyncio.get_running_loop())
        self.pending: dict[int, asyncio.Future[None]] = {}
        self.drain_lock = asyncio.Lock()
        self.reader_task: asyncio.Task[None] | None = None
        self.lost = False

    def fail_pending(self, error: str) -> None:
        """Fail every awaited send: none of them can learn its outcome on this connection now."""
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(TransportError(error))


class PeerLink:
    """Sends envelopes to one peer role over a persistent, lazily opened connection."""

    def __init__(self, peer: str, address: tuple[str, int], config: LinkConfig) -> None:
        self.peer = peer
        self.address = address
        self._cfg = config
        self._conn: _Connection | None = None
        self._lock = asyncio.Lock()
        self._corr = itertools.count(1)
        self._backoff = config.backoff_min
        self._next_attempt = 0.0
        self._alive = asyncio.Event()  # set by peer_alive: a send waiting out backoff goes now
        self._last_error = ""
        self._ever_connected = False
        self._closed = False

    def next_corr(self) -> int:
        """A correlation id unique on this link."""
        return next(self._corr)

    def peer_alive(self) -> None:
        """The peer just showed it is up (it sent us a valid envelope): stop backing off."""
        self._backoff = self._cfg.backoff_min
        self._next_attempt = 0.0
        self._alive.set()

    @property
    def _where(self) -> str:
        return f"peer '{self.peer}' at {self.address[0]}:{self.address[1]}"

    def unreachable(self, why: str) -> TransportError:
        """The error for a peer that could not be reached, with the last connect error."""
        return TransportError(f"cannot reach {self._where}: {self._last_error or 'connecting'} ({why})")

    async def connection(self, deadline: float) -> _Connection:
        """The live connection, opening one if needed; waits out backoff only within ``deadline``.

        Raises:
            TransportError: the peer cannot be reached before ``deadline``.
        """
        conn = self._conn
        if conn is not None and not conn.lost:
            return conn
        loop = asyncio.get_running_loop()
        async with self._lock:
            while True:
                if self._closed:
                    raise TransportError(f"transport closed; not sending to {self._where}")
                conn = self._conn
                if conn is not None and not conn.lost:
                    return conn
                now = loop.time()
                if self._next_attempt > now:
                    if self._next_attempt >= deadline:
                        raise TransportError(
                            f"cannot reach {self._where}: {self._last_error} "
                            f"(next attempt in {self._next_attempt - now:.2f}s)"
                        )
                    # Wait out the backoff, unless the peer shows it is back first (its hello
                    # after a restart): then connect at once instead of up to backoff_max later.
                    self._alive.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._next_attempt - now):
                            await self._alive.wait()
                    continue
                if now >= deadline:
                    raise TransportError(f"timed out waiting to connect to {self._where}")
                try:
                    return await self._connect(min(self._cfg.connect_timeout, deadline - now))
                except TransportError:
                    if self._next_attempt >= deadline:
                        raise

    async def _connect(self, timeout: float) -> _Connection:
        cfg = self._cfg
        host, port = self.address
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port, ssl=cfg.ssl, limit=2**16)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            if isinstance(exc, ssl.SSLError):
                cfg.stats.tls_failed["out", classify_failure(exc).value] += 1
            error = f"connect timed out after {timeout:.2f}s" if isinstance(exc, TimeoutError) else str(exc)
            raise self._attempt_failed(error or type(exc).__name__) from exc
        if cfg.ssl is not None:
            # The CA says "a sidecar of this mesh"; only the role it names says it is our peer.
            roles = certificate_roles(writer.get_extra_info("peercert"))
            if self.peer not in roles:
                cfg.stats.tls_failed["out", (TlsFailure.WRONG_ROLE if roles else TlsFailure.NO_ROLE).value] += 1
                writer.transport.abort()
                named = ", ".join(sorted(roles)) or "no role"
                raise self._attempt_failed(
                    f"its TLS certificate speaks for {named}, not for role '{self.peer}' (wrong-role)"
                )
        if self._closed:  # close() ran while we were connecting
            writer.close()
            raise TransportError(f"transport closed; not sending to {self._where}")
        conn = _Connection(reader, writer)
        conn.reader_task = asyncio.create_task(self._read_answers(conn), name=f"accompanist-link-{self.peer}")
        self._conn = conn
        self.peer_alive()
        if self._ever_connected:
            cfg.stats.reconnects += 1
        self._ever_connected = True
        return conn

    def _attempt_failed(self, error: str) -> TransportError:
        """Note a failed connection attempt and back off before the next; the error to raise."""
        self._last_error = error
        delay = self._backoff * (0.5 + 0.5 * self._cfg.rng.random())
        self._next_attempt = asyncio.get_running_loop().time() + delay
        self._backoff = min(self._backoff * 2, self._cfg.backoff_max)
        return TransportError(f"cannot reach {self._where}: {error}")

    def live(self) -> _Connection | None:
        """The connection if it is up, without waiting (the common case of every send)."""
        conn = self._conn
        return conn if conn is not None and not conn.lost else None

    def write(self, conn: _Connection, data: bytes) -> bool:
        """Queue one encoded frame (it leaves with the others of this event-loop turn, in one
        system call); True if the caller should :meth:`drain` before more.

        Raises:
            TransportError: the connection is gone.
        """
        if conn.lost or conn.writer.transport.is_closing():
            self._lose(conn, "connection closed")
            raise TransportError(f"connection to {self._where} closed before the envelope was written")
        conn.out.write(data)
        return conn.out.buffered > WRITE_HIGH_WATER

    def post(self, conn: _Connection, corr: int, data: bytes, limit: float, why: str) -> asyncio.Future[None]:
        """Write one encoded envelope frame now; the returned future ends with its answer (an
        ack, a reject, a lost connection, or ``why`` after ``limit`` seconds). A socket that
        has too much unsent already makes it a task that first waits for the socket."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[None] = loop.create_future()
        try:
            drain = self.write(conn, data)
        except TransportError as exc:
            answer.set_exception(exc)
            return answer
        conn.pending[corr] = answer
        self._cfg.stats.sent += 1
        expiry = loop.call_later(limit, _give_up, answer, why)

        def settled(_: asyncio.Future[None]) -> None:
            expiry.cancel()
            conn.pending.pop(corr, None)

        answer.add_done_callback(settled)
        if drain:
            return asyncio.ensure_future(self._drained_then(conn, answer))
        return answer

    async def _drained_then(self, conn: _Connection, answer: asyncio.Future[None]) -> None:
        try:
            await self.drain(conn)
        except BaseException:
            if not answer.done():
                answer.cancel()
            raise
        await answer

    async def drain(self, conn: _Connection) -> None:
        """Wait until the socket took most of what was written (backpressure on senders).

        Raises:
            TransportError: the connection broke meanwhile.
        """
        try:
            conn.out.flush()
            async with conn.drain_lock:
                await conn.writer.drain()
        except (OSError, RuntimeError) as exc:
            self._lose(conn, str(exc) or type(exc).__name__)
            raise TransportError(f"connection to {self._where} lost while writing: {exc}") from exc

    async def _read_answers(self, conn: _Connection) -> None:
        """Resolve pending sends from ack/reject frames until the connection ends."""
        cfg = self._cfg
        why = "closed by the peer"
        try:
            while True:
                header = await conn.reader.readexactly(HEADER_SIZE)
                body = await conn.reader.readexactly(read_length(header, max_frame=cfg.max_frame))
                self._answer(conn, body)
        except asyncio.IncompleteReadError as exc:
            why = "closed by the peer" if not exc.partial else "closed by the peer inside a frame"
        except InvalidFrameError as exc:  # a bad length prefix: the stream cannot be resynchronised
            self._count(exc.reason, exc.detail)
            why = f"closed after a bad frame ({exc})"
        except (OSError, ssl.SSLError) as exc:
            why = str(exc) or type(exc).__name__
        finally:
            self._lose(conn, why)

    def _answer(self, conn: _Connection, body: bytes) -> None:
        cfg = self._cfg
        try:
            frame = decode_body(body, ring=cfg.ring)
        except InvalidFrameError as exc:
            self._count(exc.reason, exc.detail)
            if exc.reason in _AUTH_REASONS:
                self._unauthenticated_reject(conn, body)
            return
        if frame.type == FrameType.ENVELOPE:
            self._count(Reason.UNEXPECTED, "envelope frame on an outgoing connection")
            return
        fut = conn.pending.pop(frame.corr, None)
        if fut is None or fut.done():  # its sender gave up (timeout) already
            return
        if frame.type == FrameType.ACK:
            cfg.stats.acked += 1
            fut.set_result(None)
        else:
            fut.set_exception(rejected(self._where, frame.info, authenticated=True))

    def _unauthenticated_reject(self, conn: _Connection, body: bytes) -> None:
        """Fail a send early on a reject we cannot verify (typically: our keys differ).

        An unverified *ack* is never trusted (it could hide a lost envelope), but an unverified
        reject can only make the sender retry, which it must be ready to do anyway.
        """
        try:
            frame: Frame = decode_body(body)
        except InvalidFrameError:
            return
        if frame.type != FrameType.REJECT:
            return
        fut = conn.pending.pop(frame.corr, None)
        if fut is not None and not fut.done():
            fut.set_exception(rejected(f"{self._where} (reply not authenticated)", frame.info, authenticated=False))

    def _count(self, reason: Reason, detail: str) -> None:
        self._cfg.stats.rejected[reason.value] += 1
        self._cfg.throttle.warning(
            f"out:{reason.value}",
            "%s: dropped a frame from %s (%s): %s",
            self._cfg.role,
            self._where,
            reason.value,
            detail,
        )

    def _lose(self, conn: _Connection, why: str) -> None:
        """Forget ``conn`` and fail its pending sends; the next send reconnects at once."""
        if conn.lost:
            return
        conn.lost = True
        if self._conn is conn:
            self._conn = None
        conn.fail_pending(
            f"connection to {self._where} lost ({why}); the envelope may or may not have been handled, retry it"
        )
        conn.writer.close()
        if not self._closed:
            self._cfg.logger.info("%s: connection to %s lost: %s", self._cfg.role, self._where, why)

    async def close(self) -> None:
        """Close the connection, failing pending sends; later sends raise TransportError."""
        self._closed = True
        conn = self._conn
        if conn is None:
            return
        self._lose(conn, "transport closed")
        task = conn.reader_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        with contextlib.suppress(OSError):  # includes ssl.SSLError
            await conn.writer.wait_closed()


def _give_up(answer: asyncio.Future[None], why: str) -> None:
    if not answer.done():
        answer.set_exception(TransportError(why))
