"""Evicting the oldest entry of a capped dict: ``python -m benchmarks.eviction [--cap
500000] [--old-cap 25000]``.

Fills each structure with integer keys up to 10x its cap, one eviction per insertion past the
cap, and prints the CPU time per insertion (with its eviction), the mean over the cap
insertions after 1x, before 5x and before 10x the cap (dict resizes included): flat for
:class:`BoundedFifo`, growing for ``del d[next(iter(d))]`` until the dict next resizes (each
eviction walks the slots freed since then). The old idiom runs at a smaller cap: its total
cost grows with the square of the cap (over half an hour at 500,000). Then the bytes per entry of
each structure at the small cap after 2x the cap insertions (tracemalloc, the structure only,
keys made beforehand). Clocks and tracemalloc are imported in the functions only:
``protocols`` stays free of them.
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from collections.abc import Callable, MutableMapping

from protocols.bounded import BoundedFifo

Insert = Callable[[int], None]


def old_idiom(cap: int) -> tuple[Insert, object]:
    data: dict[int, None] = {}

    def insert(key: int) -> None:
        data[key] = None
        if len(data) > cap:
            del data[next(iter(data))]

    return insert, data


def ordered_dict(cap: int) -> tuple[Insert, object]:
    data: OrderedDict[int, None] = OrderedDict()

    def insert(key: int) -> None:
        data[key] = None
        if len(data) > cap:
            data.popitem(last=False)

    return insert, data


def bounded_fifo(cap: int) -> tuple[Insert, object]:
    data: MutableMapping[int, None] = BoundedFifo(cap)

    def insert(key: int) -> None:
        data[key] = None

    return insert, data


STRUCTURES: dict[str, Callable[[int], tuple[Insert, object]]] = {
    "del d[next(iter(d))]": old_idiom,
    "OrderedDict.popitem(last=False)": ordered_dict,
    "BoundedFifo": bounded_fifo,
}


def per_eviction_us(make: Callable[[int], tuple[Insert, object]], cap: int) -> list[float]:
    """µs per insertion-with-eviction over ``cap`` insertions: after 1x, before 5x and 10x."""
    from time import process_time

    insert, _ = make(cap)
    window = cap
    marks = (cap, 4 * cap, 9 * cap)
    figures: list[float] = []
    key = 0
    for mark in marks:
        while key < mark:
            insert(key)
            key += 1
        t0 = process_time()
        for k in range(key, key + window):
            insert(k)
        figures.append((process_time() - t0) / window * 1e6)
        key += window
    return figures


def bytes_per_entry(make: Callable[[int], tuple[Insert, object]], cap: int) -> float:
    import tracemalloc

    keys = list(range(1_000_000, 1_000_000 + 2 * cap))  # made outside the measurement
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        insert, structure = make(cap)
        for k in keys:
            insert(k)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del structure
    return (after - before) / cap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cap", type=int, default=500_000)
    parser.add_argument("--old-cap", type=int, default=25_000, help="cap of the old idiom")
    args = parser.parse_args()
    print("µs per insertion with eviction (CPU), mean of cap insertions after 1x, before 5x, 10x:")
    runs = [
        ("del d[next(iter(d))]", args.old_cap),
        ("BoundedFifo", args.old_cap),
        ("OrderedDict.popitem(last=False)", args.cap),
        ("BoundedFifo", args.cap),
    ]
    for name, cap in runs:
        at1, at5, at10 = per_eviction_us(STRUCTURES[name], cap)
        print(f"  {name:32} cap {cap:>9,}: {at1:7.3f} {at5:7.3f} {at10:7.3f}")
    print(f"bytes per entry at cap {args.old_cap:,} after 2x cap insertions (tracemalloc):")
    for name, make in STRUCTURES.items():
        print(f"  {name:32} {bytes_per_entry(make, args.old_cap):6.1f}")


if __name__ == "__main__":
    main()
