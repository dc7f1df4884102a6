"""Keys evicted from the duplicate window: no false negatives, few false positives, forgotten
after the window, blind (always "maybe") rather than wrong when memory runs out."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.flow.evicted import EvictedKeys
from gateway.flow.recent import RecentTransactions
from protocols.keys import key_of


def _key(i: int) -> str:
    return key_of("2", f"T{i % 1000:07d}", f"{i % 1_000_000:06d}", f"{i:010d}"[-10:])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=300, unique=True))
def test_every_added_key_is_found(keys: list[str]) -> None:
    f = EvictedKeys(window=100.0, first_capacity=7, max_bytes=1 << 20)
    for i, k in enumerate(keys):
        f.add(k, float(i) / 10)
    assert all(f.may_contain(k, 30.0) for k in keys)


def test_false_positives_stay_rare_across_generations() -> None:
    f = EvictedKeys(window=1e9, first_capacity=10_000, max_bytes=1 << 24)
    for i in range(70_000):  # generations of 10k, 20k, 40k (the last part full)
        f.add(_key(i), 0.0)
    assert len(f._gens) == 3
    assert all(f.may_contain(_key(i), 1.0) for i in range(0, 70_000, 7))
    rnd = random.Random(1)
    strangers = [_key(rnd.randrange(10**9, 10**10)) for _ in range(20_000)]
    rate = sum(f.may_contain(k, 1.0) for k in strangers) / len(strangers)
    assert rate < 0.012, rate  # 0.3 % per full generation, three generations


def test_generations_past_the_window_are_forgotten() -> None:
    f = EvictedKeys(window=60.0, first_capacity=2, max_bytes=1 << 20)
    f.add("a", 0.0)
    f.add("b", 1.0)
    f.add("c", 70.0)  # a new generation; the first's newest (1.0) is 69 s old
    assert len(f._gens) == 1
    assert not f.may_contain("a", 70.0)
    assert f.may_contain("c", 70.0)
    # A generation past the window is not consulted even before it is dropped.
    assert not f.may_contain("c", 131.0)


def test_out_of_memory_goes_blind_until_the_dropped_keys_leave_the_window() -> None:
    f = EvictedKeys(window=60.0, first_capacity=100, max_bytes=400)  # one generation fits
    for i in range(100):
        f.add(_key(i), 1.0)
    f.add(_key(100), 2.0)  # a second generation: the first (newest 1.0) dropped for memory
    assert f.dropped_for_memory == 1
    assert f.blind_until == 61.0
    assert f.may_contain("never added", 30.0)  # blind: every key may be an evicted one
    assert not f.may_contain("never added", 61.5)
    assert f.may_contain(_key(100), 61.5)


def test_count_evictions_are_remembered_age_evictions_are_not() -> None:
    evicted = EvictedKeys(window=10.0, first_capacity=8, max_bytes=1 << 16)
    recent = RecentTransactions(window=10.0, max_entries=2, evicted=evicted)
    recent.begin("k1", 0.0)
    recent.begin("k2", 1.0)
    recent.begin("k3", 2.0)  # k1 out by count, inside the window
    assert recent.get("k1", 2.0) is None
    assert evicted.may_contain("k1", 2.0)
    recent.begin("k4", 20.0)  # k2 and k3 out by age: the journal need not be asked
    assert len(evicted) == 1
    assert not evicted.may_contain("k2", 20.0)
    assert not evicted.may_contain("k1", 20.0)  # k1 itself is past the window now
