"""Prometheus metrics of one engine, in a registry of its own (no process globals).

The instruments are plain numbers updated on the engine's event loop (see
:mod:`accompanist.engine.instruments`); Prometheus reads them when ``/metrics`` is served, and
the same names are exported as OpenTelemetry metrics when asked for (see
:mod:`accompanist.otel_metrics`, which reads what ``/metrics`` serves): one naming scheme. The
per-peer depths of the inbox and outbox are computed only when someone reads them (a scrape,
an export), never on the sessions' path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from accompanist.engine.instruments import Instruments, Timing

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
        i = Instruments()
        self.role = role
        self.sessions_started = i.counter("accompanist_sessions_started", "Sessions started at this role")
        self.sessions_ended = i.counters("accompanist_sessions_ended", "Sessions that reached a status", ["status"])
        self.sessions_live = i.gauge("accompanist_sessions_live", "Sessions running now")
        self.waiting_now = i.gauges(
            "accompanist_sessions_waiting",
            "Sessions parked (waiting for an envelope) or diverged (waiting for an operator) here now",
            ["status"],
        )
        for status in _WAITING_STATUSES:
            self.waiting_now.level(status=status)
        self.cancelled = i.counter(
            "accompanist_sessions_cancelled", "Sessions whose outcome an operator's cancel decided"
        )
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
        self.unknown_versions = i.counter(
            "accompanist_sessions_started_unknown_versions",
            "Sessions started while a role's versions were unknown (it never said hello)",
        )
        self.code_changed = i.gauge(
            "accompanist_sessions_code_changed",
            "Unfinished sessions found at start whose code changed without a version bump",
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

    def watch_peers(self, read: Callable[[], dict[str, PeerDepth]]) -> None:
        """Export ``read()``'s per-peer depths as the ``accompanist_peer_*`` gauges."""
        self.registry.register(_PeerCollector(read))

    def moved(self, before: str, after: str) -> None:
        """A session's status changed: keep the counts of parked and diverged sessions."""
        if before in _WAITING_STATUSES:
            self.waiting_now.level(status=before).dec()
        if after in _WAITING_STATUSES:
            self.waiting_now.level(status=after).inc()

    def step(self, kind: str, seconds: float) -> None:
        """Observe one live step (the labelled child is looked up once per kind)."""
        child = self._steps.get(kind)
        if child is None:
            child = self._steps[kind] = self.step_seconds.timing(kind=kind)
        child.observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
