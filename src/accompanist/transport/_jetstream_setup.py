"""The JetStream objects a :class:`~accompanist.transport.jetstream.JetStreamTransport` needs.

Why apart from the transport: this is what an operator sees in ``nats stream ls`` and
``nats consumer ls``, and what has to be right before the first envelope moves. The layout:

* **one stream per mesh** (``stream``, default ``ACCOMPANIST``) with a **subject per role**,
  ``<stream>.<role>``: every envelope for role ``r`` is published to ``ACCOMPANIST.r``. File
  storage; *work-queue* retention, so a message is deleted as soon as its role acknowledges it
  and the stream holds exactly the envelopes not yet accepted by their receivers.
* **one durable push consumer per role**, ``accompanist-<role>``, filtered on that role's
  subject, explicit acks, delivering to ``_ACC.<stream>.<role>``. At most ``max_ack_pending``
  envelopes are handed out unacknowledged at once: that bounds the receiver's work in flight.

Every sidecar of the mesh creates the stream if it is missing (creating it again with the same
settings is a no-op on the server) and its own consumer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api

from accompanist.errors import TransportError

__all__ = ["Layout", "ensure_consumer", "ensure_stream"]

_STREAM_IN_USE: Final = 10058  # JetStream's "stream name already in use with a different configuration"


@dataclass(frozen=True)
class Layout:
    """Where one role's envelopes live: its subject, its consumer and its delivery subject."""

    stream: str
    role: str

    def subject(self, role: str) -> str:
        """The subject envelopes for ``role`` are published to."""
        return f"{self.stream}.{role}"

    @property
    def consumer(self) -> str:
        """The durable consumer of this role."""
        return f"accompanist-{self.role}"

    @property
    def deliver(self) -> str:
        """The subject the consumer pushes this role's envelopes to (outside the stream)."""
        return f"_ACC.{self.stream}.{self.role}"


async def ensure_stream(js: JetStreamContext, layout: Layout) -> None:
    """Create the mesh's stream unless it exists with a compatible configuration.

    Raises:
        TransportError: the broker has no JetStream, or a stream of that name exists but is
            not a file-backed work queue over ``<stream>.*``.
    """
    wanted = api.StreamConfig(
        name=layout.stream,
        subjects=[f"{layout.stream}.*"],
        retention=api.RetentionPolicy.WORK_QUEUE,
        storage=api.StorageType.FILE,
        description="Accompanist envelopes, a subject per role (see accompanist.transport.jetstream)",
    )
    try:
        await js.add_stream(wanted)
        return
    except nats.js.errors.APIError as exc:
        if exc.err_code != _STREAM_IN_USE:
            raise TransportError(f"cannot create JetStream stream {layout.stream!r}: {exc}") from exc
    except (nats.errors.Error, TimeoutError) as exc:
        raise TransportError(f"cannot create JetStream stream {layout.stream!r} (is JetStream on?): {exc}") from exc
    # It exists, configured otherwise (e.g. by an operator with limits of their own): usable
    # as long as it is a work queue over our subjects on disk.
    try:
        info = await js.stream_info(layout.stream)
    except (nats.errors.Error, TimeoutError) as exc:
        raise TransportError(f"cannot read JetStream stream {layout.stream!r}: {exc}") from exc
    config = info.config
    problems = []
    if config.retention != api.RetentionPolicy.WORK_QUEUE:
        problems.append(f"its retention is {config.retention}, not workqueue")
    if config.storage != api.StorageType.FILE:
        problems.append(f"its storage is {config.storage}, not file")
    if not set(config.subjects or []) & {f"{layout.stream}.*", f"{layout.stream}.>"}:
        problems.append(f"its subjects {config.subjects} do not include {layout.stream}.*")
    if problems:
        raise TransportError(
            f"JetStream stream {layout.stream!r} exists but cannot carry envelopes: {'; '.join(problems)} "
            "(delete it, or set jetstream_stream to another name)"
        )


async def ensure_consumer(
    js: JetStreamContext, layout: Layout, *, ack_wait: float, max_ack_pending: int, recreate: bool = True
) -> None:
    """Create this role's durable consumer, or (with ``recreate``, at a start) recreate it to
    redeliver what a crash left.

    A consumer that still has envelopes handed out but unacknowledged belongs to a sidecar
    that died (or stopped) before accepting them. JetStream would redeliver them only once
    their ``ack_wait`` ran out; recreating the consumer delivers them now. Nothing is lost:
    on a work-queue stream a message leaves the stream only when it is acknowledged, and a
    new consumer starts from the first message left.

    Raises:
        TransportError: the broker refused to create the consumer.
    """
    wanted = api.ConsumerConfig(
        durable_name=layout.consumer,
        name=layout.consumer,
        filter_subject=layout.subject(layout.role),
        deliver_subject=layout.deliver,
        deliver_policy=api.DeliverPolicy.ALL,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_ack_pending=max_ack_pending,
        description=f"Accompanist sidecar of role {layout.role}",
    )
    try:
        try:
            info = await js.consumer_info(layout.stream, layout.consumer)
        except nats.js.errors.NotFoundError:
            info = None
        if info is not None:
            have = info.config
            same = (
                have.filter_subject == wanted.filter_subject
                and have.deliver_subject == wanted.deliver_subject
                and have.ack_wait == wanted.ack_wait
                and have.max_ack_pending == wanted.max_ack_pending
            )
            if same and (not recreate or not info.num_ack_pending):
                return
            await js.delete_consumer(layout.stream, layout.consumer)
        await js.add_consumer(layout.stream, wanted)
    except (nats.errors.Error, TimeoutError) as exc:
        raise TransportError(f"cannot set up JetStream consumer {layout.consumer!r}: {exc}") from exc
