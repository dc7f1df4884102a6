"""What the in-memory counter store keeps per card, and that a past day's counters go.

    .venv/bin/python -m benchmarks.risk_memory [--n 100000]

``n`` distinct cards each make one purchase (assess + confirm, the demo rules: daily limits,
velocity, travel, score profile) through an engine on :class:`MemoryCounterStore`. Printed:
the bytes ``tracemalloc`` still counts per card once the inputs are dropped, then the same
after one more purchase past the day's expiry (the day's counters dropped, the per-card
velocity, travel and profile state kept), and the store's statistics at both points.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import tracemalloc
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import anyio
from prometheus_client import CollectorRegistry

from benchmarks.risk import _inputs
from gateway.risk.counters import MemoryCounterStore
from gateway.risk.engine import RiskEngine
from gateway.risk.model import RiskInput

DEMO_CONF = Path(__file__).resolve().parents[1] / "conf" / "demo" / "risk.toml"


async def _purchase(engine: RiskEngine, inp: RiskInput) -> None:
    decision = await engine.assess(inp)
    await engine.confirm(decision)


def measure(n: int) -> dict[str, float]:
    store = MemoryCounterStore()
    engine = RiskEngine.from_file(DEMO_CONF, store=store, registry=CollectorRegistry())
    key = engine.config.pan_key()

    async def run(inputs: list[RiskInput]) -> None:
        for inp in inputs:
            await _purchase(engine, inp)

    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    # Made while traced: what the store keeps of an input (its card key, its id) counts.
    inputs = _inputs(n + 1, key, 0)
    later = inputs.pop()
    anyio.run(run, inputs)
    day_cards = store.statistics()
    del inputs
    gc.collect()
    per_card = (tracemalloc.get_traced_memory()[0] - base) / n
    # Two days later: the first day's counters are past their expiry (day + grace).
    future = later.now + timedelta(days=2, hours=1)
    anyio.run(_purchase, engine, dataclasses.replace(later, now=future))
    gc.collect()
    after = (tracemalloc.get_traced_memory()[0] - base) / n
    tracemalloc.stop()
    return {
        "per_card": per_card,
        "per_card_after_expiry": after,
        "days": day_cards["days"],
        "days_after_expiry": store.statistics()["days"],
        "cards": store.statistics()["cards"],
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=100_000)
    args = parser.parse_args(argv)
    got = measure(args.n)
    print(
        f"{args.n} cards: {got['per_card']:.0f} bytes per card ({got['days']:.0f} day"
        f" buckets); past the day's expiry: {got['per_card_after_expiry']:.0f} bytes per card"
        f" ({got['days_after_expiry']:.0f} day buckets, {got['cards']:.0f} cards kept)"
    )


if __name__ == "__main__":
    main()
