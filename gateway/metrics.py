"""Prometheus metrics of one gateway instance (its own registry, so instances never clash).

The per-transaction metrics (answers by MTI and code, switch and issuer latency) are batched:
an observation is appended to a list and applied to the Prometheus children every
``_FLUSH_AT`` observations and before every collection (a collector registered first flushes),
so a scrape sees every transaction. Prometheus' own ``inc``/``observe`` take a lock and walk
the buckets per call: about 1.6 us per transaction against a list append.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_FLUSH_AT = 256


def observe_all(child: Any, values: list[float]) -> None:
    """``child.observe(v)`` for each value, as one update per bucket and one of the sum.

    Uses the histogram child's value holders (``_upper_bounds``, ``_buckets``, ``_sum``:
    prometheus_client 0.x); without them, observes one by one."""
    bounds = getattr(child, "_upper_bounds", None)
    buckets = getattr(child, "_buckets", None)
    total = getattr(child, "_sum", None)
    if bounds is None or buckets is None or total is None:
        for value in values:
            child.observe(value)
        return
    counts = [0] * len(bounds)
    last = len(bounds)
    for value in values:
        i = bisect_left(bounds, value)  # the first bound >= value, as observe's loop finds
        if i < last:
            counts[i] += 1
    total.inc(sum(values))
    for i, n in enumerate(counts):
        if n:
            buckets[i].inc(n)


class _Flush(Collector):
    """Registered before every other collector: a collection first applies what is batched."""

    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush

    def collect(self) -> Iterator[GaugeMetricFamily]:
        self._flush()
        return iter(())


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


def hsm_healthy(hsm: Mapping[str, Any]) -> bool:
    """The HSM client's status (``Gateway.status()["hsm"]``) shows a live connection."""
    connections = hsm.get("connections")
    live = isinstance(connections, int | float) and connections > 0
    return hsm.get("endpoint") is not None and live


class _StatusCollector(Collector):
    """What operators alert on that the gateway knows as state, not as events: read from
    ``Gateway.status()`` at scrape time. Each family is yielded even without samples, so a
    scrape always names it (the Grafana dashboard's check compares names with a scrape)."""

    def __init__(self, status: Callable[[], Mapping[str, Any]]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        st = self._status()
        hsm_up = GaugeMetricFamily(
            "switch_hsm_up", "1 when the HSM client has a live connection (absent: no HSM)"
        )
        hsm = st.get("hsm")
        if isinstance(hsm, Mapping):
            hsm_up.add_metric([], hsm_healthy(hsm))
        journal = st.get("journal")
        journal = journal if isinstance(journal, Mapping) else {}
        breaker_open = GaugeMetricFamily(
            "switch_breaker_open",
            "1 while the issuer's circuit breaker is open or half-open (stand-in answers)",
            labels=["issuer"],
        )
        for issuer, breaker in sorted(journal.get("breakers", {}).items()):
            breaker_open.add_metric([issuer], breaker.get("state") != "closed")
        standin = CounterMetricFamily(
            "switch_standin_approvals", "Requests approved by stand-in on an issuer's behalf"
        )
        standin.add_metric([], journal.get("stand_in_approved", 0))
        yield hsm_up
        yield breaker_open
        yield standin


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._pending: list[tuple[str, str, float]] = []
        self._issuer_pending: list[tuple[str, float]] = []
        r.register(_Flush(self.flush))
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
        self.translation_fallbacks = Counter(
            "switch_translation_fallbacks",
            "Codes an issuer link's translation table lacks, replaced by the fallback"
            " (direction from_link/to_link; field 39, 22, ...; code as received or 'dropped')",
            ["issuer", "direction", "field", "code"],
            registry=r,
        )
        self.cutovers = Counter(
            "switch_cutover_messages",
            "Cutover messages (0800/201) sent to issuers, by outcome (ok, refused, no_answer)",
            ["issuer", "outcome"],
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
        self.affinity = Counter(
            "switch_affinity_requests",
            "Requests by where their card's worker is (workers > 1): local, remote (handed to "
            "the owner), served (taken from another worker), unavailable (owner unreachable: 96)",
            ["route"],
            registry=r,
        )
        self.http_rejected = Counter(
            "switch_http_rejected",
            "HTTP requests refused by a limit (QR and admin APIs)",
            ["api", "reason"],
            registry=r,
        )
        self.duplicates = Counter(
            "switch_duplicate_transmissions", "Duplicates answered from the original", registry=r
        )
        self.audit_write_failures = Counter(
            "switch_audit_write_failures",
            "Audit records that could not be written to the audit file (alert on any increase)",
            registry=r,
        )
        self.admin_auth_blocked = Counter(
            "switch_admin_auth_blocked",
            "Admin requests refused (429) from an address with too many failed authentications",
            registry=r,
        )
        self.certificate_expiry = Gauge(
            "switch_certificate_expiry_timestamp_seconds",
            "notAfter of each certificate the gateway loads, in Unix seconds",
            ["name"],
            registry=r,
        )
        self._txn_children: dict[tuple[str, str], Any] = {}
        self._lat_children: dict[str, Any] = {}
        self._issuer_children: dict[str, Any] = {}

    def watch_links(self, statuses: Callable[[], Iterable[dict[str, Any]]]) -> None:
        self.registry.register(_LinkCollector(statuses))

    def watch_status(self, status: Callable[[], Mapping[str, Any]]) -> None:
        self.registry.register(_StatusCollector(status))

    def observe_transaction(self, mti: str, rc: str, seconds: float) -> None:
        pending = self._pending
        pending.append((mti, rc, seconds))
        if len(pending) >= _FLUSH_AT:
            self.flush()

    def observe_issuer(self, issuer: str, seconds: float) -> None:
        pending = self._issuer_pending
        pending.append((issuer, seconds))
        if len(pending) >= _FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        """Apply the batched observations to the Prometheus metrics."""
        pending, self._pending = self._pending, []
        issuer_pending, self._issuer_pending = self._issuer_pending, []
        counts: dict[tuple[str, str], int] = {}
        latencies: dict[str, list[float]] = {}
        for mti, rc, seconds in pending:
            counts[mti, rc] = counts.get((mti, rc), 0) + 1
            latencies.setdefault(mti, []).append(seconds)
        # Labelled children cached: .labels() costs more than the update itself.
        for key, n in counts.items():
            child = self._txn_children.get(key)
            if child is None:
                child = self._txn_children[key] = self.transactions.labels(*key)
            child.inc(n)
        for mti, values in latencies.items():
            lat = self._lat_children.get(mti)
            if lat is None:
                lat = self._lat_children[mti] = self.latency.labels(mti)
            observe_all(lat, values)
        by_issuer: dict[str, list[float]] = {}
        for issuer, seconds in issuer_pending:
            by_issuer.setdefault(issuer, []).append(seconds)
        for issuer, values in by_issuer.items():
            child = self._issuer_children.get(issuer)
            if child is None:
                child = self._issuer_children[issuer] = self.issuer_latency.labels(issuer)
            observe_all(child, values)

    def render(self) -> bytes:
        self.flush()
        return generate_latest(self.registry)
