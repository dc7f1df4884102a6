"""protocols.bounded.BoundedFifo: a dict with a cap, oldest out first, in O(1)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from protocols.bounded import BoundedFifo


class ScanCountingDict(dict[Any, Any]):
    """A dict that counts the times it is iterated (``next(iter(d))`` is one)."""

    scans = 0

    def __iter__(self) -> Any:
        self.scans += 1
        return super().__iter__()


def test_keeps_cap_and_drops_oldest_first() -> None:
    fifo: BoundedFifo[int, str] = BoundedFifo(3)
    for i in range(5):
        fifo[i] = str(i)
    assert list(fifo.items()) == [(2, "2"), (3, "3"), (4, "4")]
    assert len(fifo) == 3
    assert 1 not in fifo
    assert fifo.get(1) is None
    assert fifo.get(1, "x") == "x"
    assert fifo[4] == "4"


def test_setting_a_present_key_keeps_its_place() -> None:
    fifo: BoundedFifo[str, int] = BoundedFifo(3)
    fifo["a"], fifo["b"], fifo["c"] = 1, 2, 3
    fifo["a"] = 10  # as a dict: overwritten in place, still the oldest
    fifo["d"] = 4
    assert dict(fifo) == {"b": 2, "c": 3, "d": 4}


def test_pop_then_set_goes_last() -> None:
    fifo: BoundedFifo[str, int] = BoundedFifo(3)
    fifo["a"], fifo["b"], fifo["c"] = 1, 2, 3
    fifo["a"] = fifo.pop("a")  # the least-recently-used idiom: "b" is now the oldest
    fifo["d"] = 4
    assert list(fifo) == ["c", "a", "d"]
    fifo["e"] = 5
    assert list(fifo) == ["a", "d", "e"]


def test_pop_del_and_popitem() -> None:
    fifo: BoundedFifo[str, int] = BoundedFifo(2)
    fifo["a"], fifo["b"] = 1, 2
    assert fifo.pop("a") == 1
    assert fifo.pop("a", None) is None
    with pytest.raises(KeyError):
        fifo.pop("a")
    del fifo["b"]
    with pytest.raises(KeyError):
        del fifo["b"]
    fifo["c"], fifo["d"], fifo["e"] = 3, 4, 5
    assert fifo.popitem() == ("d", 4)
    assert list(fifo) == ["e"]
    fifo.clear()
    with pytest.raises(KeyError):
        fifo.popitem()
    nothing: BoundedFifo[str, int] = BoundedFifo(0)  # as the old idiom: kept, then dropped
    nothing["a"] = 1
    assert not nothing


def test_a_popped_key_set_again_is_not_dropped_early() -> None:
    """The popped key's old place in the deque is dead: evicting must skip it, not the key."""
    fifo: BoundedFifo[str, int] = BoundedFifo(3)
    fifo["a"], fifo["b"], fifo["c"] = 1, 2, 3
    fifo.pop("a")
    fifo["a"] = 1  # newest now
    fifo["d"] = 4  # drops "b", not "a"
    assert list(fifo) == ["c", "a", "d"]


def test_same_order_as_the_dict_it_replaces() -> None:
    """Any mix of sets, overwrites, pops and re-sets: the same entries, in the same order, as
    a dict evicted by ``del d[next(iter(d))]`` past the cap."""
    rnd = random.Random(8583)
    cap = 50
    fifo: BoundedFifo[int, int] = BoundedFifo(cap)
    ref: dict[int, int] = {}
    for step in range(20_000):
        key = rnd.randrange(120)
        roll = rnd.random()
        if roll < 0.2:
            assert fifo.pop(key, None) == ref.pop(key, None)
        elif roll < 0.3 and key in ref:
            fifo[key] = fifo.pop(key)
            ref[key] = ref.pop(key)
        else:
            fifo[key] = step
            ref[key] = step
            if len(ref) > cap:
                del ref[next(iter(ref))]
        assert len(fifo) == len(ref)
    assert list(fifo.items()) == list(ref.items())


class _OldIdiom:
    """What the call sites did: a dict, evicted by ``del d[next(iter(d))]``."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._data: dict[int, int] = {}

    def __setitem__(self, key: int, value: int) -> None:
        data = self._data
        data[key] = value
        if len(data) > self.cap:
            del data[next(iter(data))]


@pytest.mark.parametrize(
    "make",
    [
        BoundedFifo,
        pytest.param(
            _OldIdiom,
            marks=pytest.mark.xfail(strict=True, reason="scans the dict from its front"),
        ),
    ],
)
def test_evicting_never_scans_the_dict(make: Any) -> None:
    """10x the cap in insertions: no eviction iterates the dict from its front (what makes
    ``next(iter(d))`` slow down: it walks every slot freed there since the last resize)."""
    cap = 1_000
    fifo = make(cap)
    fifo._data = data = ScanCountingDict()
    for i in range(10 * cap):
        fifo[i] = i
    assert len(data) == cap
    assert data.scans == 0


def test_bookkeeping_stays_bounded_under_lru_use() -> None:
    """Pop-and-set on every hit leaves dead places in the deque; they are rebuilt away (one
    dict walk per more than ``len`` pops), so the deque stays within twice the entries."""
    cap = 1_000
    fifo: BoundedFifo[int, int] = BoundedFifo(cap)
    fifo._data = data = ScanCountingDict()
    for i in range(cap):
        fifo[i] = i
    rnd = random.Random(1)
    for _ in range(10 * cap):
        key = rnd.randrange(cap)
        fifo[key] = fifo.pop(key)
        assert len(fifo._order) <= 2 * cap + 64
        assert sum(fifo._stale.values()) == len(fifo._order) - cap
    assert data.scans <= 10  # 10 * cap pops, each rebuild after more than cap of them
    dead = dict(fifo._stale)
    live = []
    for key in fifo._order:  # what eviction would see: each key's last place is its live one
        if dead.get(key):
            dead[key] -= 1
        else:
            live.append(key)
    assert live == list(data)
