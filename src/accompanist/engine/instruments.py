"""Counters, gauges and histograms that cost an attribute update, read by Prometheus at scrape.

Why not ``prometheus_client``'s own metric classes on the hot path: each ``inc`` or ``observe``
there checks the metric, takes a lock and goes through a value object, about a microsecond, and
a session touches its metrics a few dozen times per role; measured on the chain benchmark that
was 5-8% of a sidecar's CPU. Every update here happens on the engine's event-loop thread, so a
plain number suffices; :class:`Instruments` is a ``prometheus_client`` collector that turns
those numbers into the same exposition (names, labels, ``_total``, buckets) when ``/metrics``
is read.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["Count", "Instruments", "Labelled", "Level", "Timing"]


class Count:
    """A monotonic counter (exposed as ``NAME_total``)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        """Add ``amount`` (not negative)."""
        self.value += amount

    def get(self) -> float:
        """The current value."""
        return self.value


class Level:
    """A gauge: set, moved up and down, or read from a function at scrape time."""

    __slots__ = ("_function", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self._function: Callable[[], float] | None = None

    def set(self, value: float) -> None:
        """Set the value."""
        self.value = value

    def inc(self, amount: float = 1) -> None:
        """Raise the value by ``amount``."""
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        """Lower the value by ``amount``."""
        self.value -= amount

    def set_function(self, function: Callable[[], float]) -> None:
        """Read the value from ``function`` whenever it is exposed."""
        self._function = function

    def get(self) -> float:
        """The current value."""
        return self._function() if self._function is not None else self.value


class Timing:
    """A histogram of durations in seconds, with fixed bucket bounds."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound (+Inf)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        """Count one observation (in the first bucket whose bound is at least ``seconds``)."""
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds


class Labelled:
    """One child instrument per combination of label values, made on first use."""

    def __init__(self, labelnames: Sequence[str], make: Callable[[], Count | Level | Timing]) -> None:
        self.labelnames = tuple(labelnames)
        self._make = make
        self.children: dict[tuple[str, ...], Count | Level | Timing] = {}

    def labels(self, **values: str) -> Count:
        """The child for these label values (keep it to skip the lookup next time)."""
        names = self.labelnames
        key = (str(values[names[0]]),) if len(names) == 1 else tuple(str(values[name]) for name in names)
        child = self.children.get(key)
        if child is None:
            child = self.children[key] = self._make()
        return child  # type: ignore[return-value]  # each family holds one kind

    def level(self, **values: str) -> Level:
        """The :class:`Level` child for these label values."""
        return self.labels(**values)  # type: ignore[return-value]

    def timing(self, **values: str) -> Timing:
        """The :class:`Timing` child for these label values."""
        return self.labels(**values)  # type: ignore[return-value]


class Instruments(Collector):
    """Makes the instruments of one engine and exposes them to a Prometheus registry."""

    def __init__(self) -> None:
        self._all: list[tuple[str, str, str, Count | Level | Timing | Labelled]] = []

    def counter(self, name: str, doc: str) -> Count:
        """A counter exposed as ``{name}_total``."""
        count = Count()
        self._all.append(("counter", name, doc, count))
        return count

    def counters(self, name: str, doc: str, labelnames: Sequence[str]) -> Labelled:
        """A counter family with labels."""
        family = Labelled(labelnames, Count)
        self._all.append(("counter", name, doc, family))
        return family

    def gauge(self, name: str, doc: str) -> Level:
        """A gauge."""
        level = Level()
        self._all.append(("gauge", name, doc, level))
        return level

    def gauges(self, name: str, doc: str, labelnames: Sequence[str]) -> Labelled:
        """A gauge family with labels."""
        family = Labelled(labelnames, Level)
        self._all.append(("gauge", name, doc, family))
        return family

    def histogram(self, name: str, doc: str, bounds: Sequence[float]) -> Timing:
        """A histogram with these bucket bounds."""
        timing = Timing(bounds)
        self._all.append(("histogram", name, doc, timing))
        return timing

    def histograms(self, name: str, doc: str, labelnames: Sequence[str], bounds: Sequence[float]) -> Labelled:
        """A histogram family with labels."""
        family = Labelled(labelnames, lambda: Timing(bounds))
        self._all.append(("histogram", name, doc, family))
        return family

    def collect(self) -> Iterator[Metric]:
        """The current values, as Prometheus metric families (called at scrape)."""
        for kind, name, doc, instrument in self._all:
            if isinstance(instrument, Labelled):
                labelnames, children = list(instrument.labelnames), sorted(instrument.children.items())
            else:
                labelnames, children = [], [((), instrument)]
            family: Metric
            if kind == "counter":
                family = CounterMetricFamily(name, doc, labels=labelnames)
                for values, child in children:
                    assert isinstance(child, Count)
                    family.add_metric(list(values), child.value)
            elif kind == "gauge":
                family = GaugeMetricFamily(name, doc, labels=labelnames)
                for values, child in children:
                    assert isinstance(child, Level)
                    family.add_metric(list(values), child.get())
            else:
                family = HistogramMetricFamily(name, doc, labels=labelnames)
                for values, child in children:
                    assert isinstance(child, Timing)
                    family.add_metric(list(values), _cumulative(child), child.total)
            yield family


def _cumulative(timing: Timing) -> list[tuple[str, float]]:
    buckets, running = [], 0
    for bound, count in zip((*timing.bounds, float("inf")), timing.counts, strict=True):
        running += count
        # Bounds are seconds below a million, so Python's repr is what Go (and Prometheus) print.
        buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(running)))
    return buckets
