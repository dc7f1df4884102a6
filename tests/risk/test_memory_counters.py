"""The in-memory counter store keeps what it must and no more: a past day's counters go once
the day (and its grace for late reversals) is over; a card's state stays small."""

from __future__ import annotations

import pytest

from gateway.risk.counters import MemoryCounterStore, ReserveRequest

pytestmark = pytest.mark.anyio

DAY_1, DAY_2, DAY_4 = "20261127", "20261128", "20261130"
# Epoch seconds: day 1 starts at T1; its counters may go after the end of day 2 (one day grace).
T1 = 1_795_708_800
EXPIRES_1 = T1 + 2 * 86_400
EXPIRES_2 = EXPIRES_1 + 86_400
EXPIRES_4 = EXPIRES_2 + 2 * 86_400


def request(
    card: str, txn: str, day: str, expires: int, now_s: int, **kw: object
) -> ReserveRequest:
    values: dict[str, object] = {
        "card_key": card,
        "txn_id": txn,
        "currency": "156",
        "day": day,
        "day_expires_at": expires,
        "now_ms": now_s * 1000,
        "amount": 1000,
        "country": "156",
        "reserve": True,
        "daily_amount_limit": 100_000,
        "daily_count_limit": 20,
        "velocity_count": 5,
        "velocity_window_ms": 60_000,
        "velocity_keep_ms": 60_000,
        "travel_window_ms": 3_600_000,
    }
    values.update(kw)
    return ReserveRequest(**values)  # type: ignore[arg-type]


async def test_a_past_days_counters_are_dropped_once_it_expires() -> None:
    store = MemoryCounterStore()
    for i in range(3):
        await store.reserve(request(f"card{i}", f"t{i}", DAY_1, EXPIRES_1, T1 + 3600))
    assert await store.usage("card0", "156", DAY_1) == (1000, 1)
    assert store.statistics()["days"] == 1

    # The next day: yesterday's counters stay for its grace (a late reversal gives back).
    await store.reserve(request("card0", "t3", DAY_2, EXPIRES_2, T1 + 86_400 + 60))
    assert store.statistics()["days"] == 2
    await store.release("card1", "156", DAY_1, 1000, 1)
    assert await store.usage("card1", "156", DAY_1) == (0, 0)
    assert await store.usage("card2", "156", DAY_1) == (1000, 1)

    # Past day 1's expiry: its counters are gone at the next reserve, day 2's are not yet.
    await store.reserve(request("card5", "t5", DAY_2, EXPIRES_2, EXPIRES_1 + 1))
    assert store.statistics()["days"] == 1
    assert await store.usage("card2", "156", DAY_1) == (0, 0)
    assert await store.usage("card0", "156", DAY_2) == (1000, 1)
    await store.release("card2", "156", DAY_1, 1000, 1)  # a dropped day is ignored

    # Days later: nothing of the old days is kept, whatever the cards.
    await store.reserve(request("card6", "t6", DAY_4, EXPIRES_4, EXPIRES_2 + 86_400))
    assert store.statistics()["days"] == 1
    assert await store.usage("card0", "156", DAY_2) == (0, 0)
    assert await store.usage("card6", "156", DAY_4) == (1000, 1)


async def test_a_total_given_back_to_zero_leaves_nothing_in_the_day() -> None:
    """A flood of made-up card numbers, each reserved then released (declined by the issuer),
    must not grow the day's memory: totals back at zero are dropped (a missing one reads 0);
    a card still owing something stays, and the limits do not move."""
    store = MemoryCounterStore(max_cards=10)
    for i in range(500):
        await store.reserve(request(f"fake{i}", f"t{i}", DAY_1, EXPIRES_1, T1 + i))
        await store.release(f"fake{i}", "156", DAY_1, 1000, 1)
    await store.reserve(request("real", "r1", DAY_1, EXPIRES_1, T1 + 600))
    await store.reserve(request("real", "r2", DAY_1, EXPIRES_1, T1 + 601))
    await store.release("real", "156", DAY_1, 1000, 1)  # one of two given back
    bucket = store._days[DAY_1]
    assert bucket.amounts == {("real", "156"): 1000}
    assert bucket.counts == {"real": 1}
    assert await store.usage("fake7", "156", DAY_1) == (0, 0)
    assert await store.usage("real", "156", DAY_1) == (1000, 1)
    await store.release("real", "156", DAY_1, 5000, 3)  # more than held: floors at zero
    assert await store.usage("real", "156", DAY_1) == (0, 0)
    assert bucket.amounts == {}
    assert bucket.counts == {}


async def test_a_card_made_on_first_use_reports_as_before() -> None:
    store = MemoryCounterStore()
    # No velocity and no travel rules: nothing recorded for them.
    quiet = request("card", "t0", DAY_1, EXPIRES_1, T1, velocity_keep_ms=0, travel_window_ms=None)
    outcome = await store.reserve(quiet)
    assert (outcome.reserved, outcome.attempts, outcome.travel_country) == (True, 0, None)
    assert not outcome.country_known

    first = await store.reserve(request("card", "t1", DAY_1, EXPIRES_1, T1 + 1))
    assert (first.attempts, first.travel_country) == (1, None)
    await store.record_approval("card", "156", 1000, 50, 86_400)
    await store.record_approval("card", "156", 3000, 50, 86_400)
    await store.record_approval("card", "344", 2000, 50, 86_400)
    abroad = await store.reserve(request("card", "t2", DAY_1, EXPIRES_1, T1 + 2, country="344"))
    assert (abroad.attempts, abroad.travel_country) == (2, "156")
    assert abroad.country_known
    assert abroad.profile.n == 3
    assert abroad.profile.mean == pytest.approx(2000.0)
    elsewhere = await store.reserve(request("card", "t3", DAY_1, EXPIRES_1, T1 + 3, country="392"))
    assert not elsewhere.country_known
    # Each country once, in the order of the first approval there.
    assert store._cards["card"].countries == ("156", "344")
