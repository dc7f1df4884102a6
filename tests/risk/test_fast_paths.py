"""The hot path's shortcuts give exactly what the general code gives.

- :class:`CardKeyer` (HMAC key schedule done once) equals :func:`card_key`;
- :func:`looks_clear` (regex on ASCII) equals the digit-run definition on any text;
- the engine's no-await path on :class:`MemoryCounterStore` equals its coroutine path (taken
  for any other store, here a subclass of the memory store), decision for decision.
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from gateway.risk import MemoryCounterStore, RiskDecision, RiskEngine, TxnKind, card_key
from gateway.risk.cardkey import CardKeyer, PanError, looks_clear
from tests.risk.conftest import KEY, T0, base_config, txn


@given(
    key=st.binary(min_size=16, max_size=200),
    pan=st.text(alphabet="0123456789", min_size=12, max_size=19),
)
def test_card_keyer_equals_card_key(key: bytes, pan: str) -> None:
    assert CardKeyer(key)(pan) == card_key(pan, key)


def test_card_keyer_refuses_what_card_key_refuses() -> None:
    keyer = CardKeyer(KEY)
    for bad in ("", "12345678901", "1" * 20, "4761-730000000011", "476173000000001x"):
        with pytest.raises(PanError):
            keyer(bad)
    with pytest.raises(PanError):
        CardKeyer(b"short")


def _digit_run(value: str) -> bool:
    run = 0
    for ch in value:
        run = run + 1 if ch.isdigit() else 0
        if run >= 12:
            return True
    return False


@given(st.text(alphabet=st.sampled_from("0123456789*- a٣²１"), max_size=40))
def test_looks_clear_is_a_run_of_twelve_digits(value: str) -> None:
    assert looks_clear(value) == _digit_run(value)


class _CoroutineMemoryStore(MemoryCounterStore):
    """Same counters, but not exactly the memory store: the engine awaits its coroutines."""


def _view(d: RiskDecision) -> tuple[object, ...]:
    return d.rc, d.score, [h.to_dict() for h in d.hits], d.reservation is not None, d.to_log()


CONFIGS: list[dict[str, Any]] = [
    {},
    {"score": {"enabled": True, "velocity_attempts": 2, "mcc_points": {"4829": 90}}},
    {
        "daily_amount_per_card": 30_000,
        "daily_count_per_card": 3,
        "velocity": {"count": 2, "seconds": 60},
        "actions": {"daily_amount": "alert", "impossible_travel": "alert"},
        "currency_limits": [{"currency": "840", "max_single_amount": 15_000}],
        "card_ranges": [{"prefix": "4761", "daily_count_per_card": 2}],
        "score": {"enabled": True, "night_points": 60, "alert_at": 10, "decline_at": 60},
        "timezone": "America/New_York",
    },
    # profiles forgotten after a day without approval (some steps are longer than that)
    {
        "profile_ttl_days": 1,
        "score": {"enabled": True, "new_country_points": 60, "alert_at": 30, "decline_at": 90},
    },
]


@pytest.mark.anyio
@pytest.mark.parametrize("overrides", CONFIGS)
async def test_memory_fast_path_equals_coroutine_path(overrides: dict[str, Any]) -> None:
    config = base_config(**overrides)
    ttl = config.profile_ttl_days * 86_400
    fast = RiskEngine(
        config, store=MemoryCounterStore(profile_ttl_seconds=ttl), registry=CollectorRegistry()
    )
    slow = RiskEngine(
        config, store=_CoroutineMemoryStore(profile_ttl_seconds=ttl), registry=CollectorRegistry()
    )
    rnd = random.Random(5)
    pans = ["4761730000000011", "5413330000000019"]
    now = T0
    for n in range(300):
        now += timedelta(seconds=rnd.choice([1, 20, 600, 7200, 7200, 100_000]))
        pan = rnd.choice(pans)
        kind, counts = rnd.choice([(TxnKind.PURCHASE, True)] * 4 + [(TxnKind.REFUND, False)])
        inp = txn(
            n,
            pan=pan,
            amount=rnd.choice([100, 10_000, 20_000]),
            currency=rnd.choice(["156", "840"]),
            mcc=rnd.choice(["5411", "5411", "7995", "4829"]),
            merchant_country=rnd.choice(["156", "156", "392"]),
            counts=counts,
            kind=kind,
            now=now,
        )
        a, b = await fast.assess(inp), await slow.assess(inp)
        assert _view(a) == _view(b)
        then = rnd.choice(["confirm", "release", "hold", "reverse"])
        if then == "reverse":
            await fast.confirm(a)
            await slow.confirm(b)
            for engine in (fast, slow):
                await engine.reverse(card_key(pan, KEY), 50, now, currency=inp.currency)
        elif then != "hold":
            await getattr(fast, then)(a)
            await getattr(slow, then)(b)
        for p in pans:
            for cur in ("156", "840"):
                key = card_key(p, KEY)
                assert await fast.usage(key, cur, now) == await slow.usage(key, cur, now)
    assert fast.recent_alerts() == slow.recent_alerts()
