"""Prometheus metrics of one engine, in a registry of its own (no process globals).

The instruments are plain numbers updated on the engine's event loop (see
:mod:`accompanist.engine.instruments`); Prometheus reads them when ``/metrics`` is served.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from accompanist.engine.instruments import Instruments, Timing

__all__ = ["Metrics"]


class Metrics:
    """Counters and gauges exported at ``/metrics``; names are namespaced ``accompanist_``."""

    def __init__(self, role: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        i = Instruments()
        self.role = role
        self.sessions_started = i.counter("accompanist_sessions_started", "Sessions started at this role")
        self.sessions_ended = i.counters("accompanist_sessions_ended", "Sessions that reached a status", ["status"])
        self.sessions_live = i.gauge("accompanist_sessions_live", "Sessions running now")
        self.replays = i.counter("accompanist_replays", "Sessions replayed from their journal")
        self.messages_sent = i.counter("accompanist_messages_sent", "Envelopes sent by sessions")
        self.messages_received = i.counter("accompanist_messages_received", "Envelopes accepted")
        self.duplicates = i.counter("accompanist_messages_duplicate", "Duplicate envelopes dropped")
        self.ignored = i.counter("accompanist_messages_ignored", "Envelopes for sessions that already ended here")
        self.delivered = i.counter("accompanist_messages_delivered", "Outbox envelopes acknowledged")
        self.retries = i.counter("accompanist_messages_retried", "Failed delivery attempts (retried)")
        self.compensations = i.counter("accompanist_compensations", "Compensations run to success")
        self.awaiting_outcome = i.gauge(
            "accompanist_sessions_awaiting_outcome",
            "Sessions whose part is done here, kept until the initiator declares the outcome",
        )
        self.blocked = i.gauge(
            "accompanist_sessions_blocked", "Unfinished sessions this sidecar cannot run (version missing)"
        )
        self.rejected = i.counters("accompanist_envelopes_rejected", "Envelopes refused, by reason", ["reason"])
        self.undeliverable = i.counter(
            "accompanist_envelopes_undeliverable", "Outbox envelopes a peer refused for good"
        )
        self.store_failures = i.counter(
            "accompanist_store_failures", "Store operations that failed and were retried or refused"
        )
        self.queries = i.counter("accompanist_outcome_queries", "Outcome queries sent to initiators")
        self.sessions_kept = i.gauge(
            "accompanist_sessions_kept", "Default mode: sessions (ended ones included) held in memory"
        )
        self.store_commits = i.gauge(
            "accompanist_store_commits",
            "Store transactions since the sidecar started (each one fsync on a durable store)",
        )
        self.outbox_unacked = i.gauge("accompanist_outbox_unacked", "Unacknowledged outbox envelopes")
        self.session_seconds = i.histogram(
            "accompanist_session_seconds",
            "Session duration at this role",
            (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        fast = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)
        self.step_seconds = i.histograms(
            "accompanist_step_seconds",
            "A live step's duration at this role (a receive's includes its wait), by kind",
            ["kind"],
            fast,
        )
        self._steps: dict[str, Timing] = {}
        self.replay_seconds = i.histogram(
            "accompanist_replay_seconds", "Loading and resuming a stored session (before its replay runs on)", fast
        )
        self.commit_seconds = i.histogram(
            "accompanist_store_commit_seconds", "One durable commit of the engine's writes", fast
        )
        self.outbox_oldest = i.gauge(
            "accompanist_outbox_oldest_unacked_seconds",
            "Age of the oldest unacknowledged outbox envelope (0 when none)",
        )
        self.registry.register(i)

    def step(self, kind: str, seconds: float) -> None:
        """Observe one live step (the labelled child is looked up once per kind)."""
        child = self._steps.get(kind)
        if child is None:
            child = self._steps[kind] = self.step_seconds.timing(kind=kind)
        child.observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
