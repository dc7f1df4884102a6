"""Fixtures of the risk tests: engines over the in-memory and the Redis counter store."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from gateway.risk import RiskConfig, RiskEngine, RiskInput, card_key, mask_pan
from gateway.risk.alerts import AlertSink
from gateway.risk.counters import CounterStore, MemoryCounterStore
from gateway.risk.redis_counters import RedisCounterStore

KEY_HEX = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
KEY = bytes.fromhex(KEY_HEX)
PAN = "4761730000000011"
CARD = card_key(PAN, KEY)
# 2024-05-01 12:00 in Asia/Shanghai: daytime, mid-day.
T0 = datetime(2024, 5, 1, 4, 0, tzinfo=UTC)


def base_config(**overrides: Any) -> RiskConfig:
    """Demo-like limits; score off unless a test turns it on (it has its own tests)."""
    values: dict[str, Any] = {
        "pan_hash_key": KEY_HEX,
        "max_single_amount": 5_000_000,
        "daily_amount_per_card": 10_000_000,
        "daily_count_per_card": 20,
        "velocity": {"count": 5, "seconds": 60},
        "blocked_mccs": ["7995"],
        "impossible_travel_minutes": 60,
        "score": {"enabled": False},
        "limit_currency": "156",
        "rates": {"840": "7.1"},
    }
    values.update(overrides)
    return RiskConfig(**values)


def txn(n: int = 0, *, pan: str = PAN, **overrides: Any) -> RiskInput:
    values: dict[str, Any] = {
        "txn_id": f"t{n}-{uuid.uuid4().hex[:8]}",
        "card_key": card_key(pan, KEY),
        "masked_pan": mask_pan(pan),
        "pan_prefix": pan[:8],
        "amount": 10_000,
        "currency": "156",
        "mcc": "5411",
        "merchant_id": "M00000000000001",
        "terminal_id": "T0000001",
        "merchant_country": "156",
        "card_country": "156",
        "counts": True,
        "now": T0,
    }
    values.update(overrides)
    return RiskInput(**values)


def later(inp: RiskInput, **changes: Any) -> RiskInput:
    return replace(inp, **changes)


EngineFactory = Callable[..., RiskEngine]


class Stores:
    """Builds counter stores of one backend; Redis ones on a prefix unique to the test."""

    def __init__(self, kind: str, redis_url: str | None) -> None:
        self.kind = kind
        self.redis_url = redis_url
        self.prefix = f"test:risk:{uuid.uuid4().hex}:"

    def new(self) -> CounterStore:
        if self.kind == "memory":
            return MemoryCounterStore()
        assert self.redis_url is not None
        # each call is a separate client with its own pool: stands for another process
        return RedisCounterStore.from_url(self.redis_url, prefix=self.prefix, timeout=5.0)

    def engine(
        self,
        config: RiskConfig | None = None,
        *,
        store: CounterStore | None = None,
        sinks: tuple[AlertSink, ...] = (),
    ) -> RiskEngine:
        return RiskEngine(
            config or base_config(),
            store=store or self.new(),
            sinks=sinks,
            registry=CollectorRegistry(),
        )

    def cleanup(self) -> None:
        if self.redis_url is None:
            return
        client = redis.Redis.from_url(self.redis_url)
        try:
            keys = list(client.scan_iter(match=f"{self.prefix}*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


@pytest.fixture(params=["memory", "redis"])
def stores(request: pytest.FixtureRequest) -> Iterator[Stores]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    made = Stores(request.param, url)
    yield made
    made.cleanup()


@pytest.fixture
def redis_stores(redis_url: str) -> Iterator[Stores]:
    made = Stores("redis", redis_url)
    yield made
    made.cleanup()
