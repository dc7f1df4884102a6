"""A card's profile (amount statistics, countries with approvals) is forgotten ``profile_ttl_days``
after its last approval, on both backends alike; the memory store drops idle cards lazily (a few
per new card) and keeps ``memory_max_cards`` as a hard cap."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry

from gateway.risk import MemoryCounterStore, RiskEngine
from gateway.risk.counters import CounterStore, ReserveOutcome, ReserveRequest
from gateway.risk.redis_counters import RedisCounterStore
from tests.risk.conftest import T0, Stores, base_config, txn

pytestmark = pytest.mark.anyio

DAY = 86_400
T1 = 1_795_708_800_000  # ms


def request(card: str, txn_id: str, now_ms: int, **kw: Any) -> ReserveRequest:
    values: dict[str, Any] = {
        "card_key": card,
        "txn_id": txn_id,
        "currency": "156",
        "day": "20261127",
        "day_expires_at": now_ms // 1000 + 2 * DAY,
        "now_ms": now_ms,
        "amount": 1000,
        "country": "156",
        "reserve": True,
        "daily_amount_limit": 10_000_000,
        "daily_count_limit": 1000,
        "velocity_count": 5,
        "velocity_window_ms": 60_000,
        "velocity_keep_ms": 60_000,
        "travel_window_ms": 3_600_000,
    }
    values.update(kw)
    return ReserveRequest(**values)


async def test_a_card_idle_past_the_ttl_is_forgotten_and_one_used_within_is_kept() -> None:
    store = MemoryCounterStore(profile_ttl_seconds=DAY)
    await store.reserve(request("idle", "i0", T1, country="392"))
    await store.record_approval("idle", "392", 5000, 50, DAY)
    await store.reserve(request("busy", "b0", T1))
    await store.record_approval("busy", "392", 5000, 50, DAY)

    # Within the TTL: both profiles apply; an approval renews "busy" for another day.
    half = T1 + DAY * 1000 // 2
    kept = await store.reserve(request("busy", "b1", half, country="392"))
    assert kept.country_known
    assert kept.profile.n == 1
    await store.record_approval("busy", "392", 7000, 50, DAY)

    # A day and a bit after: "idle" has nothing left (no known country, no profile, and its
    # last location no longer counts for travel); "busy" keeps its renewed profile.
    late = T1 + DAY * 1000 + 1
    gone = await store.reserve(request("idle", "i1", late, country="156"))
    assert (gone.country_known, gone.profile.n, gone.travel_country) == (False, 0, None)
    assert store._cards["idle"].countries == ()
    kept = await store.reserve(request("busy", "b2", late, country="392"))
    assert kept.country_known
    assert kept.profile.n == 2
    assert kept.profile.mean == pytest.approx(6000.0)


async def test_attempts_without_approval_do_not_renew_the_profile() -> None:
    # As the Redis keys: only an approval sets the profile's TTL again.
    store = MemoryCounterStore(profile_ttl_seconds=DAY)
    await store.reserve(request("card", "t0", T1))
    await store.record_approval("card", "156", 5000, 50, DAY)
    for hour in range(1, 25):
        outcome = await store.reserve(request("card", f"t{hour}", T1 + hour * 3_600_000))
    assert (outcome.country_known, outcome.profile.n) == (True, 1)  # exactly a day: still kept
    after = await store.reserve(request("card", "t25", T1 + DAY * 1000 + 1))
    assert (after.country_known, after.profile.n) == (False, 0)
    # a fresh approval starts a fresh profile
    await store.record_approval("card", "344", 3000, 50, DAY)
    again = await store.reserve(request("card", "t26", T1 + DAY * 1000 + 2, country="344"))
    assert (again.country_known, again.profile.n, again.profile.mean) == (True, 1, 3000.0)
    assert store._cards["card"].countries == ("344",)


async def test_the_ttl_of_each_approval_applies() -> None:
    # record_approval's ttl_seconds (the config's, passed by the engine) wins over the default
    store = MemoryCounterStore(profile_ttl_seconds=DAY)
    await store.reserve(request("card", "t0", T1))
    await store.record_approval("card", "156", 5000, 50, 3 * DAY)
    two_days = await store.reserve(request("card", "t1", T1 + 2 * DAY * 1000))
    assert two_days.profile.n == 1
    store.record_approval_now("card", "156", 5000, 50)  # the store's default: one day
    three_days = await store.reserve(request("card", "t2", T1 + 3 * DAY * 1000 + 1))
    assert three_days.profile.n == 0


async def test_idle_cards_are_dropped_a_few_per_new_card() -> None:
    store = MemoryCounterStore(profile_ttl_seconds=DAY)
    for i in range(10):
        await store.reserve(request(f"old{i}", f"o{i}", T1 + i))
        await store.record_approval(f"old{i}", "156", 1000, 50, DAY)
    # attempts only (no approval): the card lives as long as its windows (an hour here)
    await store.reserve(request("brief", "b0", T1 + 20))
    assert store.statistics()["cards"] == 11

    # Within the TTL nothing goes, whatever arrives.
    for i in range(5):
        await store.reserve(request(f"new{i}", f"n{i}", T1 + DAY * 1000 // 2 + i))
        await store.record_approval(f"new{i}", "156", 1000, 50, DAY)
    assert store.statistics()["cards"] == 16

    # Past it: each new card drops at most two of the idle ones, oldest first; cards used
    # since (new0..new4) stay.
    late = T1 + DAY * 1000 + 100
    await store.reserve(request("late0", "l0", late))
    assert store.statistics()["cards"] == 15
    assert "old0" not in store._cards
    assert "old1" not in store._cards
    assert "old2" in store._cards
    for i in range(1, 6):
        await store.reserve(request(f"late{i}", f"l{i}", late + i))
    assert store.statistics()["cards"] == 5 + 6
    assert all(f"new{i}" in store._cards for i in range(5))
    assert not any(f"old{i}" in store._cards for i in range(10))
    assert "brief" not in store._cards

    # A used card keeps its place: reusing it moves it to the young end.
    await store.reserve(request("new0", "n5", late + 10))
    assert next(reversed(store._cards)) == "new0"


async def test_a_dropped_card_answers_as_a_forgotten_one() -> None:
    kept = MemoryCounterStore(profile_ttl_seconds=DAY)
    dropped = MemoryCounterStore(profile_ttl_seconds=DAY)
    for store in (kept, dropped):
        await store.reserve(request("card", "t0", T1, country="392"))
        await store.record_approval("card", "392", 5000, 50, DAY)
    late = T1 + DAY * 1000 + 5
    await dropped.reserve(request("other", "x0", late))
    await dropped.reserve(request("other2", "x1", late))
    assert "card" not in dropped._cards
    a = await kept.reserve(request("card", "t1", late + 1))
    b = await dropped.reserve(request("card", "t1", late + 1))
    assert a == b


async def test_the_hard_cap_still_holds() -> None:
    store = MemoryCounterStore(max_cards=3, profile_ttl_seconds=DAY)
    for i in range(6):
        await store.reserve(request(f"card{i}", f"t{i}", T1 + i))
        await store.record_approval(f"card{i}", "156", 1000, 50, DAY)
        assert store.statistics()["cards"] == min(i + 1, 3)
    assert list(store._cards) == ["card3", "card4", "card5"]


@pytest.mark.parametrize("given", [True, False], ids=["store-given", "store-from-config"])
async def test_engine_forgets_a_profile_after_profile_ttl_days(given: bool) -> None:
    # new_country scores again once the card's approvals there are older than the TTL; the
    # engine's own memory store takes profile_ttl_days from the config
    config = base_config(
        profile_ttl_days=2,
        score={"enabled": True, "new_country_points": 60, "alert_at": 50, "decline_at": 90},
    )
    engine = RiskEngine(
        config,
        store=MemoryCounterStore(profile_ttl_seconds=2 * DAY) if given else None,
        registry=CollectorRegistry(),
    )
    first = await engine.assess(txn(0, merchant_country="392"))
    assert first.score == 60
    await engine.confirm(first)
    day_later = await engine.assess(txn(1, merchant_country="392", now=T0 + timedelta(days=1)))
    assert day_later.score == 0
    await engine.release(day_later)  # attempts do not renew the profile
    later = await engine.assess(
        txn(2, merchant_country="392", now=T0 + timedelta(days=2, milliseconds=1))
    )
    assert later.score == 60


async def _script(store: CounterStore, card: str, now_ms: int) -> list[ReserveOutcome]:
    """The same steps on either backend; real sleeps stand for the Redis server's clock."""
    seen = [await store.reserve(request(card, "t0", now_ms, country="392"))]
    await store.record_approval(card, "392", 5000, 50, 1)  # a one-second TTL
    await store.record_approval(card, "344", 2000, 50, 1)
    seen.append(await store.reserve(request(card, "t1", now_ms + 200, travel_window_ms=500)))
    await anyio.sleep(0.6)
    # within the TTL, the travel window over: known countries kept, no travel
    seen.append(
        await store.reserve(request(card, "t2", now_ms + 900, country="392", travel_window_ms=500))
    )
    await anyio.sleep(0.9)
    # past the TTL of the last approval (1 s from it): forgotten
    seen.append(
        await store.reserve(
            request(card, "t3", now_ms + 1600, country="344", travel_window_ms=None)
        )
    )
    await store.record_approval(card, "156", 8000, 50, 1)
    seen.append(await store.reserve(request(card, "t4", now_ms + 1700, travel_window_ms=None)))
    return seen


async def test_memory_and_redis_agree_on_expiry(redis_stores: Stores) -> None:
    redis_store = redis_stores.new()
    assert isinstance(redis_store, RedisCounterStore)
    now_ms = T1
    try:
        with anyio.fail_after(30):
            memory = await _script(MemoryCounterStore(), "card", now_ms)
            remote = await _script(redis_store, "card", now_ms)
    finally:
        await redis_store.aclose()
    assert memory == remote
    assert [(o.country_known, o.profile.n) for o in memory] == [
        (False, 0),
        (False, 2),
        (True, 2),
        (False, 0),
        (True, 1),
    ]
    assert memory[2].travel_country is None
    assert memory[1].travel_country == "392"
