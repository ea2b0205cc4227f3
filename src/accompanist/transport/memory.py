"""In-process transports on a shared :class:`MemoryNetwork`, with injectable faults.

For tests of the layers above: every envelope and every answer still goes through the real
frame encoder and decoder (and HMAC, when keys are set), so codec problems surface here, but
delivery is a function call on the same event loop, and a :class:`FaultPlan` can drop,
duplicate, delay and reorder envelopes, hold chosen ones back, narrow every link to a given
rate, or :meth:`MemoryNetwork.partition` two roles.

Losses look exactly as they would over TCP to a sender that waits: a lost envelope and a lost
acknowledgement raise the *same* :class:`~accompanist.errors.TransportError`, at once (where
TCP would wait for the timeout), so the sender cannot tell whether its envelope was handled
and the engine's retry and deduplication logic is exercised quickly.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from accompanist.envelope import Envelope
from accompanist.errors import ConfigError, TransportError
from accompanist.transport.base import Handler, TransportStats
from accompanist.transport.frames import (
    DEFAULT_KEY_ID,
    DEFAULT_MAX_FRAME,
    Frame,
    FrameType,
    InvalidFrameError,
    KeyRing,
    Reason,
    decode_frame,
    encode_frame,
    reject_info,
    rejected,
)

__all__ = ["FaultPlan", "FaultStats", "MemoryNetwork", "MemoryTransport"]

_INHERIT: Mapping[str, bytes] = {}  # sentinel: use the network's keys


@dataclass
class FaultPlan:
    """What a :class:`MemoryNetwork` does to envelopes in flight; seeded, so runs repeat.

    Attributes:
        drop: probability that an envelope, or independently its acknowledgement, is lost.
        duplicate: probability that an envelope is delivered twice.
        delay: ``(low, high)`` seconds each delivery is held, drawn uniformly.
        reorder: let deliveries overtake each other; without it each link stays FIFO even
            with delays (like TCP).
        seed: seed of :attr:`rng`.
        hold: extra seconds chosen envelopes spend in flight (``hold(envelope)``; 0 for the
            others): one kind of answer made slow, deterministically. On a FIFO link the
            envelopes behind a held one wait for it, as over TCP.
        serve: seconds a link needs per envelope, one envelope at a time (a narrow link, or a
            peer too busy to read faster): a sender that sends more than ``1/serve``
            envelopes a second to one peer builds a queue there, as a loaded sidecar does.
            Needs FIFO links (not ``reorder``).
        rng: the source of every random decision.
    """

    drop: float = 0.0
    duplicate: float = 0.0
    delay: tuple[float, float] = (0.0, 0.0)
    reorder: bool = False
    seed: int | None = 0
    hold: Callable[[Envelope], float] | None = None
    serve: float = 0.0
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("drop", "duplicate"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"FaultPlan.{name}={p} is not a probability in [0, 1]")
        low, high = self.delay
        if not 0.0 <= low <= high:
            raise ConfigError(f"FaultPlan.delay={self.delay} needs 0 <= low <= high")
        if not 0.0 <= self.serve < float("inf") or (self.serve and self.reorder):
            raise ConfigError(f"FaultPlan.serve={self.serve} needs a finite time >= 0 and FIFO links (no reorder)")
        self.rng = random.Random(self.seed)

    def draw_delay(self, envelope: Envelope | None = None) -> float:
        """Draw one delivery delay from :attr:`delay`, plus what :attr:`hold` adds for ``envelope``."""
        low, high = self.delay
        held = self.hold(envelope) if self.hold is not None and envelope is not None else 0.0
        return (self.rng.uniform(low, high) if high > 0 else 0.0) + held


@dataclass
class FaultStats:
    """What the fault plan and partitions did, for tests to check their statistics."""

    delivered: int = 0
    dropped: int = 0
    duplicated: int = 0
    delayed: int = 0
    partitioned: int = 0


class MemoryTransport:
    """One role's endpoint on a :class:`MemoryNetwork`; implements ``Transport``."""

    def __init__(self, network: MemoryNetwork, role: str, ring: KeyRing | None, send_timeout: float) -> None:
        self.role = role
        self.stats = TransportStats()
        self._network = network
        self._ring = ring
        self._send_timeout = send_timeout
        self._handler: Handler | None = None
        self._tasks: set[asyncio.Task[bytes | None]] = set()
        self.closed = False

    @property
    def listening(self) -> bool:
        """Whether envelopes can be delivered here (started and not closed)."""
        return self._handler is not None and not self.closed

    async def start(self, handler: Handler) -> None:
        """Start receiving envelopes addressed to this role."""
        if self._handler is not None or self.closed:
            raise TransportError(f"memory transport of role '{self.role}' is already started or closed")
        self._handler = handler

    async def send(self, envelope: Envelope, *, wait: bool = True, timeout: float | None = None) -> None:
        """Send ``envelope`` through the network's fault plan (see ``Transport.send``).

        Raises:
            TransportError: unknown or stopped role, partition, loss (with ``wait``), rejection
                or no answer within ``timeout``.
            FrameError: the envelope encodes to more than the network's ``max_frame``.
        """
        if self.closed:
            raise TransportError(f"memory transport of role '{self.role}' is closed")
        net = self._network
        data = encode_frame(Frame(FrameType.ENVELOPE, 1, envelope), ring=self._ring, max_frame=net.max_frame)
        limit = self._send_timeout if timeout is None else timeout
        answer = net.route(self.role, envelope, data, wait=wait)
        self.stats.sent += 1
        if answer is None:
            return
        try:
            async with asyncio.timeout(limit):
                # wait() rather than await: a delivery cancelled by the receiver's close() is a
                # loss to report, not a cancellation of this sender.
                await asyncio.wait([answer])
        except TimeoutError:
            raise TransportError(f"no answer from role '{envelope.dst}' for {envelope.key} within {limit:g}s") from None
        reply = None if answer.cancelled() else answer.result()
        if reply is None or net.lose_answer():
            raise TransportError(
                f"envelope {envelope.key} to '{envelope.dst}' or its acknowledgement was lost in transit; "
                "it may or may not have been handled, retry it"
            )
        try:
            frame = decode_frame(reply, ring=self._ring, max_frame=net.max_frame)
        except InvalidFrameError as exc:
            self.stats.rejected[exc.reason.value] += 1
            raise TransportError(f"answer from '{envelope.dst}' refused: {exc}") from exc
        if frame.type == FrameType.REJECT:
            raise rejected(f"role '{envelope.dst}'", frame.info, authenticated=True)
        self.stats.acked += 1

    def post(self, envelope: Envelope, timeout: float | None = None) -> asyncio.Future[None]:
        """:meth:`send` with ``wait=True``, as a future (see ``Transport.post``)."""
        return asyncio.ensure_future(self.send(envelope, wait=True, timeout=timeout))

    async def receive(self, data: bytes) -> bytes | None:
        """Decode, authenticate and hand one frame to the handler; return the answer frame."""
        net = self._network
        try:
            frame = decode_frame(data, ring=self._ring, max_frame=net.max_frame)
        except InvalidFrameError as exc:
            self.stats.rejected[exc.reason.value] += 1
            net.logger.warning("%s: rejected a frame: %s", self.role, exc)
            return self._answer(FrameType.REJECT, str(exc))
        envelope = frame.envelope
        if envelope is None or envelope.dst != self.role:
            self.stats.rejected[Reason.WRONG_DST.value] += 1
            return self._answer(FrameType.REJECT, f"envelope for another role reached '{self.role}'")
        handler = self._handler
        if handler is None or self.closed:
            return None  # stopped while the envelope was in flight: lost
        self.stats.received += 1
        try:
            pending = handler(envelope)
            if pending is not None:
                await pending
        except Exception as exc:
            self.stats.rejected[Reason.HANDLER.value] += 1
            return self._answer(FrameType.REJECT, reject_info(exc), envelope.auth)
        return self._answer(FrameType.ACK, "", envelope.auth)

    def _answer(self, kind: FrameType, info: str = "", key_id: str | None = None) -> bytes:
        net = self._network
        return encode_frame(Frame(kind, 1, info=info), ring=self._ring, max_frame=net.max_frame, key_id=key_id)

    def track(self, task: asyncio.Task[bytes | None]) -> None:
        """Keep a delivery to this role so :meth:`close` can cancel it."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop receiving; deliveries in flight to this role are lost."""
        self.closed = True
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class MemoryNetwork:
    """A hub connecting :class:`MemoryTransport` objects by role, with faults on demand.

    Args:
        plan: the initial fault plan (None: a perfect network); replace :attr:`plan` any time.
        keys: HMAC key ring shared by every transport made here (None: unsigned frames).
        current_key_id: the key new frames are signed with.
        max_frame: the largest frame body, as for TCP.
        send_timeout: default ``timeout`` of ``send``.
        logger: where rejected frames are logged.
    """

    def __init__(
        self,
        plan: FaultPlan | None = None,
        *,
        keys: Mapping[str, bytes] | None = None,
        current_key_id: str = DEFAULT_KEY_ID,
        max_frame: int = DEFAULT_MAX_FRAME,
        send_timeout: float = 5.0,
        logger: logging.Logger | None = None,
    ) -> None:
        self.plan = plan or FaultPlan()
        self.stats = FaultStats()
        self.max_frame = max_frame
        self.logger = logger or logging.getLogger("accompanist.transport")
        self._keys = keys
        self._current_key_id = current_key_id
        self._send_timeout = send_timeout
        self._transports: dict[str, MemoryTransport] = {}
        self._cut: set[frozenset[str]] = set()
        self._fifo: dict[tuple[str, str], asyncio.Future[None]] = {}
        self._due: dict[tuple[str, str], float] = {}  # per link: when its latest envelope arrives
        self._inflight: set[asyncio.Task[bytes | None]] = set()

    def transport(
        self, role: str, *, keys: Mapping[str, bytes] | None = _INHERIT, current_key_id: str | None = None
    ) -> MemoryTransport:
        """The endpoint of ``role``; a closed one may be replaced (a restarted sidecar).

        ``keys``/``current_key_id`` override the network's, e.g. to give one role a wrong key.

        Raises:
            ConfigError: ``role`` already has an open transport, or the key ring is malformed.
        """
        old = self._transports.get(role)
        if old is not None and not old.closed:
            raise ConfigError(f"role '{role}' already has an open transport on this network")
        ring_keys = self._keys if keys is _INHERIT else keys
        ring = KeyRing(ring_keys, current_key_id or self._current_key_id) if ring_keys is not None else None
        transport = self._transports[role] = MemoryTransport(self, role, ring, self._send_timeout)
        return transport

    def partition(self, a: str, b: str) -> None:
        """Cut the link between roles ``a`` and ``b``, both ways, until :meth:`heal`."""
        self._cut.add(frozenset((a, b)))

    def heal(self, a: str | None = None, b: str | None = None) -> None:
        """Restore the link between ``a`` and ``b``, or every link when called without roles."""
        if a is None or b is None:
            self._cut.clear()
        else:
            self._cut.discard(frozenset((a, b)))

    def partitioned(self, a: str, b: str) -> bool:
        """Whether the link between ``a`` and ``b`` is cut."""
        return frozenset((a, b)) in self._cut

    async def idle(self) -> None:
        """Wait until no delivery is in flight (for tests that send with ``wait=False``)."""
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)

    def lose_answer(self) -> bool:
        """Draw whether an acknowledgement is lost on its way back."""
        if self.plan.drop and self.plan.rng.random() < self.plan.drop:
            self.stats.dropped += 1
            return True
        return False

    def route(self, src: str, envelope: Envelope, data: bytes, *, wait: bool) -> asyncio.Future[bytes | None] | None:
        """Apply the fault plan to one encoded envelope and schedule its deliveries.

        Returns the answer of the first delivery when ``wait`` (None answer: lost in transit).

        Raises:
            TransportError: ``envelope.dst`` is unknown, not listening, or partitioned away.
        """
        dst = envelope.dst
        receiver = self._transports.get(dst)
        if receiver is None:
            known = ", ".join(sorted(self._transports)) or "none"
            raise TransportError(f"no role '{dst}' on this network; known roles: {known}")
        if not receiver.listening:
            raise TransportError(f"role '{dst}' is not listening (not started, or closed)")
        if self.partitioned(src, dst):
            self.stats.partitioned += 1
            raise TransportError(f"link {src} -> {dst} is partitioned")
        plan = self.plan
        loop = asyncio.get_running_loop()
        if plan.drop and plan.rng.random() < plan.drop:
            self.stats.dropped += 1
            if not wait:
                return None
            lost: asyncio.Future[bytes | None] = loop.create_future()
            lost.set_result(None)
            return lost
        copies = 2 if plan.duplicate and plan.rng.random() < plan.duplicate else 1
        self.stats.duplicated += copies - 1
        first: asyncio.Task[bytes | None] | None = None
        now = loop.time()
        for _ in range(copies):
            delay = plan.draw_delay(envelope)
            self.stats.delayed += delay > 0
            hops = plan.rng.randrange(4) if plan.reorder else 0
            arrived: asyncio.Future[None] = loop.create_future()
            previous = None if plan.reorder else self._fifo.get((src, dst))
            due = now + delay
            if not plan.reorder:
                self._fifo[(src, dst)] = arrived
                # FIFO per link, as over TCP: due no earlier than the envelope before it (and on
                # a narrow link one ``serve`` after it). Known now, a delivery seldom has to wait
                # for the one before it: each such wait costs loop turns, which a loaded machine
                # has few of, and would make the link far slower than a TCP connection.
                due = max(due, self._due.get((src, dst), now)) + plan.serve
                self._due[(src, dst)] = due
            task = loop.create_task(self._deliver(src, receiver, data, due, hops, previous, arrived))
            # A delivery cancelled before it ran (its receiver closed) must not hold up the link.
            task.add_done_callback(functools.partial(_release, arrived))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
            receiver.track(task)
            first = first or task
        return first if wait else None

    async def _deliver(
        self,
        src: str,
        receiver: MemoryTransport,
        data: bytes,
        due: float,
        hops: int,
        previous: asyncio.Future[None] | None,
        arrived: asyncio.Future[None],
    ) -> bytes | None:
        try:
            wait = due - asyncio.get_running_loop().time()
            if wait > 0:
                await asyncio.sleep(wait)
            for _ in range(hops):  # a few loop turns let later deliveries overtake this one
                await asyncio.sleep(0)
            if previous is not None and not previous.done():
                # FIFO per link, as over TCP: a short delay never overtakes a longer one before it.
                await asyncio.shield(previous)
        finally:
            if not arrived.done():
                arrived.set_result(None)
        if self.partitioned(src, receiver.role):
            self.stats.partitioned += 1
            return None
        if not receiver.listening:
            return None
        self.stats.delivered += 1
        return await receiver.receive(data)


def _release(arrived: asyncio.Future[None], _: object) -> None:
    if not arrived.done():
        arrived.set_result(None)
