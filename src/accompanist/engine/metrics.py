"""Prometheus metrics of one engine, in a registry of its own (no process globals).

The same names are exported as OpenTelemetry metrics when asked for (see
:mod:`accompanist.otel_metrics`, which reads what ``/metrics`` serves): one naming scheme.
Counters and histograms move on the engine's path (one increment each); the per-peer depths
of the inbox and outbox are computed only when someone reads them (a scrape, an export).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["Metrics", "PeerDepth", "peer_depths"]

_WAITING_STATUSES = ("parked", "diverged")


class PeerDepth(NamedTuple):
    """What waits, per peer role, in this sidecar's inbox and outbox.

    Attributes:
        inbox_waiting: envelopes from the peer that arrived before their session asked for them.
        inbox_unacked: envelopes from the peer not yet durable here, so not yet acknowledged.
        inbox_oldest: seconds the oldest of those has waited (0 when none).
        outbox_unacked: envelopes to the peer it has not acknowledged (as of the relay's last scan).
        outbox_oldest: seconds the oldest of those has been pending (0 when none).
    """

    inbox_waiting: int = 0
    inbox_unacked: int = 0
    inbox_oldest: float = 0.0
    outbox_unacked: int = 0
    outbox_oldest: float = 0.0


_PEER_GAUGES = (
    ("accompanist_peer_inbox_waiting", "Envelopes from the peer that arrived before their session asked for them"),
    ("accompanist_peer_inbox_unacked", "Envelopes from the peer not yet durable here (not yet acknowledged)"),
    ("accompanist_peer_inbox_oldest_unacked_seconds", "Age of the oldest envelope from the peer not yet acknowledged"),
    ("accompanist_peer_outbox_unacked", "Envelopes to the peer it has not acknowledged"),
    ("accompanist_peer_outbox_oldest_unacked_seconds", "Age of the oldest envelope to the peer not yet acknowledged"),
)


def peer_depths(runs: Iterable[Any], relay: Any, peers: Iterable[str]) -> dict[str, PeerDepth]:
    """What waits in the inbox and outbox, per peer role, read from the runs in memory (their
    mailboxes and unsaved rows) and the relay (None in default mode): at a scrape, never on
    the sessions' path."""
    waiting: dict[str, int] = {}
    unacked: dict[str, tuple[int, float]] = {}
    now = time.monotonic()
    for run in runs:
        for src in run.mailbox.waiting_from():
            waiting[src] = waiting.get(src, 0) + 1
        rows, since = run.unsaved.backlog()
        for envelope in rows:
            count, oldest = unacked.get(envelope.src, (0, 0.0))
            unacked[envelope.src] = (count + 1, max(oldest, now - since))
    outbox = relay.pending_by_peer() if relay is not None else {}
    return {
        peer: PeerDepth(waiting.get(peer, 0), *unacked.get(peer, (0, 0.0)), *outbox.get(peer, (0, 0.0)))
        for peer in peers
    }


class _PeerCollector(Collector):
    """The per-peer gauges, computed from the engine's state when read."""

    def __init__(self, read: Callable[[], dict[str, PeerDepth]]) -> None:
        self._read = read

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(name, text, labels=["peer"]) for name, text in _PEER_GAUGES]

    def collect(self) -> Iterator[Metric]:
        depths = self._read()
        for index, (name, text) in enumerate(_PEER_GAUGES):
            family = GaugeMetricFamily(name, text, labels=["peer"])
            for peer, depth in sorted(depths.items()):
                family.add_metric([peer], float(depth[index]))
            yield family


class Metrics:
    """Counters and gauges exported at ``/metrics``; names are namespaced ``accompanist_``."""

    def __init__(self, role: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.role = role
        self.sessions_started = Counter("accompanist_sessions_started", "Sessions started at this role", registry=r)
        self.sessions_ended = Counter(
            "accompanist_sessions_ended", "Sessions that reached a status", ["status"], registry=r
        )
        self.sessions_live = Gauge("accompanist_sessions_live", "Sessions running now", registry=r)
        self.waiting_now = Gauge(
            "accompanist_sessions_waiting",
            "Sessions parked (waiting for an envelope) or diverged (waiting for an operator) here now",
            ["status"],
            registry=r,
        )
        for status in _WAITING_STATUSES:
            self.waiting_now.labels(status=status)
        self.cancelled = Counter(
            "accompanist_sessions_cancelled", "Sessions whose outcome an operator's cancel decided", registry=r
        )
        self.replays = Counter("accompanist_replays", "Sessions replayed from their journal", registry=r)
        self.messages_sent = Counter("accompanist_messages_sent", "Envelopes sent by sessions", registry=r)
        self.messages_received = Counter("accompanist_messages_received", "Envelopes accepted", registry=r)
        self.duplicates = Counter("accompanist_messages_duplicate", "Duplicate envelopes dropped", registry=r)
        self.ignored = Counter(
            "accompanist_messages_ignored", "Envelopes for sessions that already ended here", registry=r
        )
        self.delivered = Counter("accompanist_messages_delivered", "Outbox envelopes acknowledged", registry=r)
        self.retries = Counter("accompanist_messages_retried", "Failed delivery attempts (retried)", registry=r)
        self.compensations = Counter("accompanist_compensations", "Compensations run to success", registry=r)
        self.awaiting_outcome = Gauge(
            "accompanist_sessions_awaiting_outcome",
            "Sessions whose part is done here, kept until the initiator declares the outcome",
            registry=r,
        )
        self.blocked = Gauge(
            "accompanist_sessions_blocked", "Unfinished sessions this sidecar cannot run (version missing)", registry=r
        )
        self.rejected = Counter(
            "accompanist_envelopes_rejected", "Envelopes refused, by reason", ["reason"], registry=r
        )
        self.undeliverable = Counter(
            "accompanist_envelopes_undeliverable", "Outbox envelopes a peer refused for good", registry=r
        )
        self.store_failures = Counter(
            "accompanist_store_failures", "Store operations that failed and were retried or refused", registry=r
        )
        self.queries = Counter("accompanist_outcome_queries", "Outcome queries sent to initiators", registry=r)
        self.sessions_kept = Gauge(
            "accompanist_sessions_kept", "Default mode: sessions (ended ones included) held in memory", registry=r
        )
        self.store_commits = Gauge(
            "accompanist_store_commits",
            "Store transactions since the sidecar started (each one fsync on a durable store)",
            registry=r,
        )
        self.outbox_unacked = Gauge("accompanist_outbox_unacked", "Unacknowledged outbox envelopes", registry=r)
        self.session_seconds = Histogram(
            "accompanist_session_seconds",
            "Session duration at this role",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )

        fast = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)
        self.step_seconds = Histogram(
            "accompanist_step_seconds",
            "A live step's duration at this role (a receive's includes its wait), by kind",
            ["kind"],
            buckets=fast,
            registry=r,
        )
        self._steps: dict[str, Any] = {}
        self.replay_seconds = Histogram(
            "accompanist_replay_seconds",
            "Loading and resuming a stored session (before its replay runs on)",
            buckets=fast,
            registry=r,
        )
        self.commit_seconds = Histogram(
            "accompanist_store_commit_seconds", "One durable commit of the engine's writes", buckets=fast, registry=r
        )
        self.outbox_oldest = Gauge(
            "accompanist_outbox_oldest_unacked_seconds",
            "Age of the oldest unacknowledged outbox envelope (0 when none)",
            registry=r,
        )

    def watch_peers(self, read: Callable[[], dict[str, PeerDepth]]) -> None:
        """Export ``read()``'s per-peer depths as the ``accompanist_peer_*`` gauges."""
        self.registry.register(_PeerCollector(read))

    def moved(self, before: str, after: str) -> None:
        """A session's status changed: keep the counts of parked and diverged sessions."""
        if before in _WAITING_STATUSES:
            self.waiting_now.labels(status=before).dec()
        if after in _WAITING_STATUSES:
            self.waiting_now.labels(status=after).inc()

    def step(self, kind: str, seconds: float) -> None:
        """Observe one live step (the labelled child is looked up once per kind)."""
        child = self._steps.get(kind)
        if child is None:
            child = self._steps[kind] = self.step_seconds.labels(kind=kind)
        child.observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
