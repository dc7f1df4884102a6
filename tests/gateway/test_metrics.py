"""Batched transaction metrics: what a scrape shows is what per-call updates would show."""

from __future__ import annotations

import random
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gateway.metrics import _LATENCY_BUCKETS, Metrics


def _without_created(text: bytes) -> list[str]:
    return [line for line in text.decode().splitlines() if "_created" not in line]


def _reference(
    observations: list[tuple[str, str, float]], issuer: list[tuple[str, float]]
) -> bytes:
    """The same metrics updated one call at a time, as before batching."""
    r = CollectorRegistry()
    txns = Counter("switch_transactions", "Terminal requests answered", ["mti", "rc"], registry=r)
    lat = Histogram(
        "switch_transaction_seconds",
        "Time from request decoded to response built",
        ["mti"],
        buckets=_LATENCY_BUCKETS,
        registry=r,
    )
    iss = Histogram(
        "switch_issuer_seconds",
        "Issuer round trip",
        ["issuer"],
        buckets=_LATENCY_BUCKETS,
        registry=r,
    )
    for mti, rc, seconds in observations:
        txns.labels(mti, rc).inc()
        lat.labels(mti).observe(seconds)
    for name, seconds in issuer:
        iss.labels(name).observe(seconds)
    return generate_latest(r)


def test_scrape_equals_per_call_updates() -> None:
    rnd = random.Random(7)
    values = [*_LATENCY_BUCKETS, 0.0, 0.0005, 11.0, *(rnd.uniform(0, 0.3) for _ in range(900))]
    observations = [
        (rnd.choice(["0200", "0100", "0400"]), rnd.choice(["00", "51", "91"]), v) for v in values
    ]
    issuer = [(rnd.choice(["alpha", "beta"]), v / 2) for v in values]
    m = Metrics()
    for mti, rc, seconds in observations:
        m.observe_transaction(mti, rc, seconds)
    for name, seconds in issuer:
        m.observe_issuer(name, seconds)
    ours = _samples(m.render())
    ref = _samples(_reference(observations, issuer))
    assert {k: v for k, v in ours.items() if "_sum" not in k} == {
        k: v for k, v in ref.items() if "_sum" not in k
    }
    # Sums: the same up to float rounding (added as one batch, not one by one).
    sums = [k for k in ref if "_sum" in k]
    assert len(sums) == 5
    for key in sums:
        assert ours[key] == pytest.approx(ref[key], rel=1e-12)


def _samples(text: bytes) -> dict[str, float]:
    out = {}
    for line in _without_created(text):
        if line.startswith(("switch_transaction", "switch_issuer_seconds")):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_one_observation_shows_at_the_next_scrape() -> None:
    m = Metrics()
    m.observe_transaction("0200", "00", 0.003)
    m.observe_issuer("beta", 0.001)
    text = m.render().decode()
    assert 'switch_transactions_total{mti="0200",rc="00"} 1.0' in text
    assert 'switch_transaction_seconds_bucket{le="0.005",mti="0200"} 1.0' in text
    assert 'switch_transaction_seconds_bucket{le="0.002",mti="0200"} 0.0' in text
    assert 'switch_issuer_seconds_bucket{issuer="beta",le="0.001"} 1.0' in text
    m.observe_transaction("0200", "00", 0.004)
    # A collection by any path (here the registry itself) applies what is batched first.
    assert m.registry.get_sample_value("switch_transaction_seconds_count", {"mti": "0200"}) == 2


def test_observe_all_falls_back_to_observe() -> None:
    from gateway.metrics import observe_all

    class Plain:
        def __init__(self) -> None:
            self.seen: list[float] = []

        def observe(self, value: float) -> None:
            self.seen.append(value)

    child = Plain()
    observe_all(child, [0.1, 0.2])
    assert child.seen == [0.1, 0.2]


def _gauges(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in m.registry.collect()
        for s in f.samples
        if s.name in {"switch_hsm_up", "switch_breaker_open", "switch_standin_approvals_total"}
    }


def test_status_gauges_show_hsm_breakers_and_stand_in() -> None:
    status: dict[str, Any] = {
        "hsm": {"endpoint": "127.0.0.1:1500", "connections": 2},
        "journal": {
            "breakers": {"alpha": {"state": "open"}, "beta": {"state": "closed"}},
            "stand_in_approved": 7,
        },
    }
    m = Metrics()
    m.watch_status(lambda: status)
    assert _gauges(m) == {
        ("switch_hsm_up", ()): 1.0,
        ("switch_breaker_open", (("issuer", "alpha"),)): 1.0,
        ("switch_breaker_open", (("issuer", "beta"),)): 0.0,
        ("switch_standin_approvals_total", ()): 7.0,
    }
    # The HSM lost its connections (half-open breakers answer stand-in too); no journal, no
    # HSM configured: no breakers, and no HSM sample at all rather than a false 0.
    status["hsm"] = {"endpoint": None, "connections": 0}
    status["journal"]["breakers"]["beta"]["state"] = "half_open"
    assert _gauges(m)[("switch_hsm_up", ())] == 0.0
    assert _gauges(m)[("switch_breaker_open", (("issuer", "beta"),))] == 1.0
    status.clear()
    status.update({"hsm": None, "journal": None})
    assert _gauges(m) == {("switch_standin_approvals_total", ()): 0.0}
