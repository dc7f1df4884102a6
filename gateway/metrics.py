"""Prometheus metrics of one gateway instance (its own registry, so instances never clash)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _LinkCollector(Collector):
    def __init__(self, statuses: Callable[[], Iterable[dict[str, Any]]]) -> None:
        self._statuses = statuses

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "switch_link_up", "1 when the issuer connection is signed on", labels=["issuer", "conn"]
        )
        for status in self._statuses():
            for conn in status["connections"]:
                up.add_metric([status["issuer"], str(conn["index"])], conn["state"] == "up")
        yield up


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.transactions = Counter(
            "switch_transactions", "Terminal requests answered", ["mti", "rc"], registry=r
        )
        self.latency = Histogram(
            "switch_transaction_seconds",
            "Time from request decoded to response built",
            ["mti"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.issuer_latency = Histogram(
            "switch_issuer_seconds",
            "Issuer round trip",
            ["issuer"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.issuer_failures = Counter(
            "switch_issuer_failures",
            "Issuer timeouts and unavailable links",
            ["issuer", "kind"],
            registry=r,
        )
        self.late_responses = Counter(
            "switch_issuer_late_responses",
            "Issuer answers after the timeout",
            ["issuer"],
            registry=r,
        )
        self.connections = Gauge(
            "switch_terminal_connections", "Open terminal connections", ["listener"], registry=r
        )
        self.rejected = Counter(
            "switch_terminal_rejected", "Frames or connections refused", ["reason"], registry=r
        )
        self.duplicates = Counter(
            "switch_duplicate_transmissions", "Duplicates answered from the original", registry=r
        )
        self._txn_children: dict[tuple[str, str], Any] = {}
        self._lat_children: dict[str, Any] = {}
        self._issuer_children: dict[str, Any] = {}

    def watch_links(self, statuses: Callable[[], Iterable[dict[str, Any]]]) -> None:
        self.registry.register(_LinkCollector(statuses))

    def observe_transaction(self, mti: str, rc: str, seconds: float) -> None:
        # Cache labelled children: .labels() costs more than the increment itself.
        key = (mti, rc)
        child = self._txn_children.get(key)
        if child is None:
            child = self._txn_children[key] = self.transactions.labels(mti, rc)
        child.inc()
        lat = self._lat_children.get(mti)
        if lat is None:
            lat = self._lat_children[mti] = self.latency.labels(mti)
        lat.observe(seconds)

    def observe_issuer(self, issuer: str, seconds: float) -> None:
        child = self._issuer_children.get(issuer)
        if child is None:
            child = self._issuer_children[issuer] = self.issuer_latency.labels(issuer)
        child.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
