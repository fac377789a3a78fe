"""Prometheus metrics of one WCS process, in a registry of its own (so several apps can
live in one test process without colliding).

One family is not this process's own: `webconf_restarts{component}`, the restarts that the
`webconf serve` supervisor made of each server process of the node (the WCS's included, which
is why it cannot be counted in memory). It is read at each scrape from what the supervisor
publishes (`report_restarts`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CONTENT_TYPE_LATEST as PROMETHEUS_CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_SECONDS_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "webconf_http_requests", "HTTP requests handled", ["method", "route", "status"],
            registry=self.registry)
        self.bytes_in = Counter(
            "webconf_http_bytes_in", "Request body bytes received", registry=self.registry)
        self.bytes_out = Counter(
            "webconf_http_bytes_out", "Response body bytes sent", registry=self.registry)
        self.active_channels = Gauge(
            "webconf_active_channels", "Open data channels", registry=self.registry)
        self.encrypt_seconds = Histogram(
            "webconf_encrypt_seconds", "Time spent encrypting one upload",
            buckets=_SECONDS_BUCKETS, registry=self.registry)
        self.decrypt_seconds = Histogram(
            "webconf_decrypt_seconds", "Time spent unwrapping keys",
            buckets=_SECONDS_BUCKETS, registry=self.registry)
        self.items_shared = Counter(
            "webconf_items_shared", "Items shared", registry=self.registry)
        self.participants_admitted = Counter(
            "webconf_participants_admitted", "Participants admitted", registry=self.registry)
        self.revocations_purged = Counter(
            "webconf_revocations_purged",
            "Revoked-cookie rows dropped once their cookies had expired",
            registry=self.registry)
        self.cookie_cache_hits = Counter(
            "webconf_cookie_cache_hits",
            "Requests whose cookie was found in the verified-cookie cache",
            registry=self.registry)
        self.cookie_cache_misses = Counter(
            "webconf_cookie_cache_misses",
            "Requests whose cookie took the full check (signature and store)",
            registry=self.registry)
        self.documents_tampered = Counter(
            "webconf_documents_tampered",
            "Decrypting downloads (/document) cut short or refused because the blob on the "
            "share failed verification, by what failed (docs/protocol.md §8.3)",
            ["kind"], registry=self.registry)
        self.focus_leases_expired = Counter(
            "webconf_focus_leases_expired",
            "Focus leases this process found stale and whose participants it revoked",
            registry=self.registry)

        self.conversions = Counter(
            "webconf_conversions",
            "Deck conversions to PDF (docs/protocol.md §9.4) by outcome: converted, "
            "unreadable, crashed, timeout, queue_full, unavailable, interrupted, refused "
            "(the PDF was not stored: too large, quota, key), corrupt (the deck's blob "
            "failed verification), dropped (the deck or its conference went meanwhile), "
            "error (a bug or a store outage)",
            ["outcome"], registry=self.registry)
        self.conversion_seconds = Histogram(
            "webconf_conversion_seconds", "Time LibreOffice took for one deck",
            buckets=_SECONDS_BUCKETS, registry=self.registry)

    def report_restarts(self, read: Callable[[], Mapping[str, int]]) -> None:
        """Expose `read()` (component -> restarts) as `webconf_restarts` at each scrape."""
        self.registry.register(_RestartsCollector(read))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _RestartsCollector(Collector):
    """Reads the restart counts when scraped, so a restart made after this process started
    (the focus's) shows at once."""

    def __init__(self, read: Callable[[], Mapping[str, int]]) -> None:
        self.read = read

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily("webconf_restarts",
                                 "Restarts of each server process of this node by its supervisor",
                                 labels=["component"])

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        for component, count in sorted(self.read().items()):
            family.add_metric([component], count)
        return [family]


__all__ = ["PROMETHEUS_CONTENT_TYPE", "Metrics"]
