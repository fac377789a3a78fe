"""Prometheus metrics of one WCS process, in a registry of its own (so several apps can
live in one test process without colliding)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as PROMETHEUS_CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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

    def render(self) -> bytes:
        return generate_latest(self.registry)


__all__ = ["PROMETHEUS_CONTENT_TYPE", "Metrics"]
