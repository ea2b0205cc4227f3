"""OpenTelemetry metrics: what ``/metrics`` serves, exported through the OpenTelemetry SDK.

Why a bridge and not a second set of instruments: the engine counts every step, envelope and
commit once, in its Prometheus registry; counting each again in OpenTelemetry instruments
would double that cost on the hot path and could let the two disagree. Instead, every export
interval the Prometheus exposition is read and handed to the SDK's exporters as OpenTelemetry
data, under the same names (a counter without Prometheus' ``_total`` suffix, which an
OpenTelemetry-to-Prometheus pipeline adds back): one source, one naming scheme. Counters become
cumulative monotonic sums, gauges gauges, histograms explicit-bucket histograms (Prometheus
keeps no minimum or maximum: they are given as the edges of the lowest and highest buckets
holding a value).

Optional, like tracing: with ``opentelemetry-sdk`` installed (``pip install
'accompanist[telemetry]'``) and ``OTEL_METRICS_EXPORTER`` set (``console``, ``otlp`` with
``opentelemetry-exporter-otlp-proto-http``, ``none``), or a metrics file given
(``metrics_file``, ``ACCOMPANIST_METRICS_FILE``: one JSON export per line), a sidecar exports
every ``OTEL_METRIC_EXPORT_INTERVAL`` milliseconds (default 60000) and once more when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

from accompanist.errors import ConfigError

__all__ = ["MetricsExport", "setup_metrics_export", "to_metrics_data"]

log = logging.getLogger("accompanist.metrics")


def _histogram_points(family: Any, start: int, now: int) -> list[Any]:
    from opentelemetry.sdk.metrics.export import HistogramDataPoint

    series: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for sample in family.samples:
        labels = {k: v for k, v in sample.labels.items() if k != "le"}
        key = tuple(sorted(labels.items()))
        entry = series.setdefault(key, {"labels": labels, "buckets": [], "count": 0, "sum": 0.0, "created": None})
        if sample.name.endswith("_bucket"):
            entry["buckets"].append((float(sample.labels["le"]), sample.value))
        elif sample.name.endswith("_count"):
            entry["count"] = int(sample.value)
        elif sample.name.endswith("_sum"):
            entry["sum"] = sample.value
        elif sample.name.endswith("_created"):
            entry["created"] = int(sample.value * 1e9)
    points = []
    for entry in series.values():
        cumulative = sorted(entry["buckets"])
        bounds = [le for le, _ in cumulative if not math.isinf(le)]
        counts, previous = [], 0.0
        for _, value in cumulative:
            counts.append(int(value - previous))
            previous = value
        edges = [0.0, *bounds, bounds[-1] if bounds else 0.0]
        filled = [i for i, c in enumerate(counts) if c]
        low = edges[filled[0]] if filled else 0.0
        high = edges[min(filled[-1] + 1, len(edges) - 1)] if filled else 0.0
        points.append(
            HistogramDataPoint(
                attributes=entry["labels"],
                start_time_unix_nano=entry["created"] or start,
                time_unix_nano=now,
                count=entry["count"],
                sum=entry["sum"],
                bucket_counts=counts,
                explicit_bounds=bounds,
                min=low,
                max=high,
            )
        )
    return points


def to_metrics_data(text: str, service: str, start: int | None = None) -> Any:
    """The Prometheus exposition ``text`` as OpenTelemetry ``MetricsData`` of ``service``."""
    from opentelemetry.sdk.metrics.export import (
        AggregationTemporality,
        Gauge,
        Histogram,
        Metric,
        MetricsData,
        NumberDataPoint,
        ResourceMetrics,
        ScopeMetrics,
        Sum,
    )
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from prometheus_client.parser import text_string_to_metric_families

    from accompanist._version import __version__

    now = time.time_ns()
    start = start or now
    metrics = []
    for family in text_string_to_metric_families(text):
        unit = "s" if family.name.endswith("_seconds") else "1"
        data: Any
        if family.type == "histogram":
            data = Histogram(_histogram_points(family, start, now), AggregationTemporality.CUMULATIVE)
        else:
            created = {
                tuple(sorted(s.labels.items())): int(s.value * 1e9)
                for s in family.samples
                if s.name.endswith("_created")
            }
            points = [
                NumberDataPoint(
                    attributes=dict(s.labels),
                    start_time_unix_nano=created.get(tuple(sorted(s.labels.items())), start),
                    time_unix_nano=now,
                    value=s.value,
                )
                for s in family.samples
                if not s.name.endswith("_created")
            ]
            if family.type == "counter":
                data = Sum(points, AggregationTemporality.CUMULATIVE, is_monotonic=True)
            else:
                data = Gauge(points)
        metrics.append(Metric(name=family.name, description=family.documentation, unit=unit, data=data))
    scope = ScopeMetrics(InstrumentationScope("accompanist", __version__), metrics, schema_url="")
    resource = Resource.create({"service.name": service})
    return MetricsData([ResourceMetrics(resource, [scope], schema_url="")])


class _FileExporter:
    """One JSON object per export, appended and flushed (for post-mortems and tests)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, data: Any) -> None:
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(json.dumps(json.loads(data.to_json()), separators=(",", ":")) + "\n")

    def shutdown(self) -> None:
        """Nothing is held open between exports."""


class MetricsExport:
    """Exports the metrics of one sidecar every ``interval`` seconds while it runs.

    Args:
        read: the Prometheus exposition (what ``/metrics`` serves).
        service: ``service.name`` of the exported resource.
        exporters: SDK metric exporters (and the file exporter) to hand each export to.
        interval: seconds between exports.
    """

    def __init__(self, read: Callable[[], bytes], service: str, exporters: list[Any], interval: float) -> None:
        self.read = read
        self.service = service
        self.exporters = exporters
        self.interval = interval
        self.exports = 0
        self._start = time.time_ns()
        self._task: asyncio.Task[None] | None = None

    async def export_once(self) -> None:
        """Read the metrics now and hand them to every exporter (off the event loop)."""
        data = to_metrics_data(self.read().decode(), self.service, self._start)
        for exporter in self.exporters:
            try:
                await asyncio.to_thread(exporter.export, data)
            except Exception as exc:  # an exporter's trouble never stops the sidecar
                log.warning("metrics export to %s failed: %s", type(exporter).__name__, exc)
        self.exports += 1

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.export_once()

    def start(self) -> None:
        """Start exporting periodically."""
        self._task = asyncio.create_task(self._loop(), name="accompanist-metrics-export")

    async def stop(self) -> None:
        """Export once more (what happened last counts too) and shut the exporters down."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self.export_once()
        for exporter in self.exporters:
            with contextlib.suppress(Exception):
                exporter.shutdown()


def setup_metrics_export(role: str, read: Callable[[], bytes], metrics_file: str | None = None) -> MetricsExport | None:
    """A :class:`MetricsExport` configured from ``OTEL_METRICS_EXPORTER``,
    ``OTEL_METRIC_EXPORT_INTERVAL``, ``OTEL_SERVICE_NAME`` and ``metrics_file``; None when
    nothing asks for one.

    Raises:
        ConfigError: metrics are asked for but the SDK or the exporter is not installed, the
            exporter is unknown, or the interval is not a positive number of milliseconds.
    """
    name = os.environ.get("OTEL_METRICS_EXPORTER", "none").strip().lower()
    if name in ("", "none") and not metrics_file:
        return None
    try:
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
    except ImportError as exc:
        raise ConfigError(
            f"metrics export asked for, but the OpenTelemetry SDK is not installed ({exc}): "
            "pip install 'accompanist[telemetry]'"
        ) from None
    raw = os.environ.get("OTEL_METRIC_EXPORT_INTERVAL", "60000")
    try:
        interval = float(raw) / 1000
        if not interval > 0 or math.isinf(interval):
            raise ValueError(raw)
    except ValueError:
        raise ConfigError(
            f"OTEL_METRIC_EXPORT_INTERVAL must be a positive number of milliseconds, got {raw!r}"
        ) from None
    exporters: list[Any] = [_FileExporter(metrics_file)] if metrics_file else []
    if name == "console":
        exporters.append(ConsoleMetricExporter())
    elif name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # type: ignore[import-not-found]
                OTLPMetricExporter,
            )
        except ImportError:
            raise ConfigError(
                "OTEL_METRICS_EXPORTER=otlp needs the OTLP exporter: pip install opentelemetry-exporter-otlp-proto-http"
            ) from None
        exporters.append(OTLPMetricExporter())
    elif name not in ("", "none"):
        raise ConfigError(f"OTEL_METRICS_EXPORTER={name!r} is not supported here: use console, otlp or none")
    service = os.environ.get("OTEL_SERVICE_NAME") or f"accompanist-{role}"
    return MetricsExport(read, service, exporters, interval)
