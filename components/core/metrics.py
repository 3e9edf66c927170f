"""Prometheus metrics: one registry per server, served as text at ``/metrics``.

Each server keeps its own registry (not the library's global one) so that two servers in one
process, as in the tests, never share or double-register a metric. Counts a server already
keeps for itself (sessions, streams) are read at scrape time through :class:`LiveValues`
rather than kept twice; what happens in between scrapes (audio received, errors, latencies) is
recorded as it happens with the library's counters and histograms.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0)
"""Seconds, for caption latencies: fine where captions should be (under two seconds)."""

CONTENT_TYPE = CONTENT_TYPE_LATEST


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


class LiveValues(Collector):
    """Metrics computed from a server's own live counts whenever the registry is scraped."""

    def __init__(self, read: Callable[[], Iterable[Metric]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        yield from self._read()


class Registry(CollectorRegistry):
    """A server's own registry, with short ways to declare what it records."""

    def __init__(self) -> None:
        super().__init__(auto_describe=True)

    def counter(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(name, documentation, labels, registry=self)

    def histogram(self, name: str, documentation: str) -> Histogram:
        """Seconds of a caption latency, in :data:`LATENCY_BUCKETS`."""
        return Histogram(name, documentation, buckets=LATENCY_BUCKETS, registry=self)

    def live(self, read: Callable[[], Iterable[Metric]]) -> None:
        """Expose what ``read()`` yields at each scrape (see :class:`LiveValues`)."""
        self.register(LiveValues(read))


def render(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus's text format."""
    return generate_latest(registry)
