"""Latency and response-code statistics for load runs (pure, tested on scripted data)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class RunStats:
    latencies: list[float] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0

    def record(self, latency: float, rc: str) -> None:
        self.latencies.append(latency)
        self.codes[rc] += 1

    @property
    def count(self) -> int:
        return len(self.latencies)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        ms = {f"p{q:g}": round(percentile(lat, q) * 1000, 3) for q in (50, 90, 99, 99.9)}
        return {
            "transactions": self.count,
            "elapsed_s": round(self.elapsed, 3),
            "tps": round(self.count / self.elapsed, 1) if self.elapsed else 0.0,
            "latency_ms": ms,
            "response_codes": dict(sorted(self.codes.items())),
            "errors": dict(self.errors),
        }
