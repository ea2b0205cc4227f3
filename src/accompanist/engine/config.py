"""Engine settings, with the defaults a sidecar starts with."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["CompensationOrder", "EngineConfig", "Mode", "ReplayPolicy"]


class Mode(enum.StrEnum):
    """How a sidecar treats messages and state."""

    DEFAULT = "default"  # in memory, at-most-once, lowest latency
    FAULT_TOLERANT = "fault-tolerant"  # durable inbox/outbox, replay after crashes


class CompensationOrder(enum.StrEnum):
    """In which order the roles of a failed saga compensate."""

    ORDERED = "ordered"  # global reverse causal order, as an orchestrator would undo the saga
    PARALLEL = "parallel"  # every role at once, each in its own reverse order (faster)


class ReplayPolicy(enum.StrEnum):
    """What a replay does with local steps that completed before a durable point."""

    JOURNAL = "journal"  # return the recorded result (a moved price cannot change a sent value)
    RERUN = "rerun"  # run every local step again, as the Java original does


@dataclass(frozen=True)
class EngineConfig:
    """Settings of one session engine.

    Attributes:
        mode: default (in-memory) or fault-tolerant (durable).
        receive_timeout: seconds a receive waits; then the session fails (default mode) or
            parks (fault-tolerant mode).
        buffer_limit: early envelopes one session may hold before it fails.
        max_inflight: sessions this sidecar runs at once before ``start`` is refused.
        replay_policy: see :class:`ReplayPolicy`.
        retry_min: first redelivery delay (seconds) of an unacknowledged envelope.
        retry_max: largest redelivery delay.
        deliver_timeout: how long one delivery attempt waits for the peer's acknowledgement
            (the relay waits longer for a peer that is slow to answer, up to a minute).
        delivery_concurrency: deliveries in flight at once (fault-tolerant relay).
        relay_interval: how often the relay rescans the outbox for due retries.
        retention: seconds terminal sessions keep their inbox/outbox/journal rows.
        tombstone_retention: seconds terminal session rows are kept (to ignore late duplicates).
        prune_interval: how often retention runs.
        grace: seconds in-flight sessions get to finish on shutdown.
        compensation: the order in which the roles of a failed saga compensate (see
            :class:`CompensationOrder`).
        outcome_query_after: seconds a role waits for the outcome (or the initiator for an
            answer) before it asks again; then it asks at doubling intervals, up to the
            receive timeout.
        max_payload: the largest message payload in bytes; a larger one fails its session at
            the send, before it is stored (it could never cross the peer's frame limit).
        store_retry_max: the longest pause between two tries of a store write that failed
            (a lost connection, a full disk): writes are retried until they succeed.
        ack_linger: at most how long a received envelope waits for its session's next commit
            before it is made durable (and acknowledged) on its own, in seconds.
        memory_keep: default mode: at most this many ended sessions are kept in memory (their
            records answer late envelopes and ``GET /sessions``); older ones go first.
        memory_retention: default mode: ended sessions are kept this many seconds at most.
        lazy_interval: how often writes that may be lost without harm (acknowledgement marks,
            a participant's ``completed``) are made durable when no other commit carries them.
            One second: they nearly always ride on a commit made anyway before then, where a
            tenth of a second made a sidecar whose sessions take longer pay a commit of its
            own for them about once a session.
        steps_kept: the live steps (times, values, attempts) of this many recent sessions are
            kept in memory for ``GET /sessions/{id}/steps`` (at most ``memory_keep``); 0 keeps
            none (the steps then come from the store alone, in fault-tolerant mode).
        traces_file: write every span here, one JSON object per line (see :mod:`accompanist.tracing`).
        metrics_file: write every OpenTelemetry metrics export here, one JSON object per line
            (see :mod:`accompanist.otel_metrics`).
        sleep_in_task: fault-tolerant mode: a ``ch.sleep`` shorter than this many seconds waits
            in the session's task; a longer one parks the session (no task) and the engine's
            timer resumes it by replay at the deadline (see :mod:`accompanist.engine.timers`).
    """

    mode: Mode = Mode.DEFAULT
    receive_timeout: float = 30.0
    buffer_limit: int = 1024
    max_inflight: int = 10_000
    replay_policy: ReplayPolicy = ReplayPolicy.JOURNAL
    retry_min: float = 0.05
    retry_max: float = 2.0
    deliver_timeout: float = 5.0
    delivery_concurrency: int = 256
    relay_interval: float = 0.5
    retention: float = 3600.0
    tombstone_retention: float = 7 * 24 * 3600.0
    prune_interval: float = 60.0
    grace: float = 10.0
    compensation: CompensationOrder = CompensationOrder.ORDERED
    outcome_query_after: float = 5.0
    max_payload: int = 4 * 1024 * 1024 - 64 * 1024
    store_retry_max: float = 2.0
    ack_linger: float = 0.1
    memory_keep: int = 100_000
    memory_retention: float = 3600.0
    lazy_interval: float = 1.0
    steps_kept: int = 10_000
    traces_file: str | None = None
    metrics_file: str | None = None
    sleep_in_task: float = 1.0
