"""Latency and response-code statistics for load runs (pure, tested on scripted data).

Latencies are kept exactly (one float per answered request) so percentiles are exact nearest-rank
values; a 60 s run at 10,000 TPS holds 600,000 floats, a few MiB.

Vocabulary: a *response code* is field 39 (or the QR API's ``response_code``) of an answer that
arrived: it goes to the code table whatever it says. An *error* is a request that got no usable
answer (timeout, connection lost, undecodable answer, HTTP error, not sent): it goes to the error
table under a short name and has no latency.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100); NaN when empty."""
    if not sorted_values:
        return math.nan
    # The epsilon keeps float noise from bumping the rank (99.9 / 100 * 1000 = 999.0000000001).
    rank = max(1, math.ceil(q * len(sorted_values) / 100 - 1e-9))
    return sorted_values[rank - 1]


def latency_summary(latencies: list[float]) -> dict[str, float | None]:
    """p50/p90/p99/p99.9, max and mean in milliseconds (3 decimals); ``None`` when empty."""
    lat = sorted(latencies)
    out: dict[str, float | None] = {}
    for q in PERCENTILES:
        out[f"p{q:g}"] = round(percentile(lat, q) * 1000, 3) if lat else None
    out["max"] = round(lat[-1] * 1000, 3) if lat else None
    out["mean"] = round(sum(lat) / len(lat) * 1000, 3) if lat else None
    return out


@dataclass
class KindStats:
    """The same figures for one kind of transaction (mix item)."""

    latencies: list[float] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    def summary(self, elapsed: float) -> dict[str, Any]:
        n = len(self.latencies)
        return {
            "transactions": n,
            "tps": round(n / elapsed, 1) if elapsed else 0.0,
            "latency_ms": latency_summary(self.latencies),
            "response_codes": dict(sorted(self.codes.items())),
            "errors": dict(sorted(self.errors.items())),
        }


@dataclass
class RunStats:
    latencies: list[float] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0
    by_kind: dict[str, KindStats] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    """Mix items left out because a prerequisite is missing: kind -> why."""
    info: dict[str, Any] = field(default_factory=dict)
    """How the run was made (mode, rate, connections, mix), copied into the summary."""

    def record(self, latency: float, rc: str, kind: str = "purchase") -> None:
        """An answer arrived after ``latency`` seconds with response code ``rc``."""
        self.latencies.append(latency)
        self.codes[rc] += 1
        ks = self.by_kind.get(kind)
        if ks is None:
            ks = self.by_kind[kind] = KindStats()
        ks.latencies.append(latency)
        ks.codes[rc] += 1

    def error(self, name: str, kind: str = "purchase") -> None:
        """A request of ``kind`` got no usable answer, for the reason ``name``."""
        self.errors[name] += 1
        ks = self.by_kind.get(kind)
        if ks is None:
            ks = self.by_kind[kind] = KindStats()
        ks.errors[name] += 1

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def summary(self) -> dict[str, Any]:
        return {
            **self.info,
            "transactions": self.count,
            "elapsed_s": round(self.elapsed, 3),
            "tps": round(self.count / self.elapsed, 1) if self.elapsed else 0.0,
            "latency_ms": latency_summary(self.latencies),
            "response_codes": dict(sorted(self.codes.items())),
            "errors": dict(sorted(self.errors.items())),
            "error_count": self.error_count,
            "by_kind": {k: v.summary(self.elapsed) for k, v in sorted(self.by_kind.items())},
            "unavailable": dict(self.unavailable),
        }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_report(summary: dict[str, Any]) -> str:
    """The human-readable report of :meth:`RunStats.summary` (what the CLI prints)."""
    lines: list[str] = []
    lat = summary["latency_ms"]
    total = summary["transactions"]
    lines.append(
        f"transactions {total}  in {summary['elapsed_s']} s  TPS {summary['tps']}"
        f"  errors {summary['error_count']}"
    )
    lines.append(
        "latency ms   "
        + "  ".join(f"{k} {_ms(lat[k])}" for k in ("p50", "p90", "p99", "p99.9", "max"))
    )
    by_kind = summary.get("by_kind", {})
    if by_kind:
        lines.append("")
        lines.append(
            f"{'kind':<12} {'count':>8} {'TPS':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}  codes"
        )
        for kind, ks in by_kind.items():
            codes = " ".join(f"{c}:{n}" for c, n in ks["response_codes"].items())
            klat = ks["latency_ms"]
            lines.append(
                f"{kind:<12} {ks['transactions']:>8} {ks['tps']:>9} {_ms(klat['p50']):>8}"
                f" {_ms(klat['p99']):>8} {sum(ks['errors'].values()):>7}  {codes}"
            )
    lines.append("")
    lines.append("response code     count   share")
    for code, n in summary["response_codes"].items():
        share = 100.0 * n / total if total else 0.0
        lines.append(f"  {code:<12} {n:>9} {share:>6.2f}%")
    if not summary["response_codes"]:
        lines.append("  (no answers)")
    if summary["errors"]:
        lines.append("")
        lines.append("errors            count")
        lines.extend(f"  {name:<15} {n:>6}" for name, n in summary["errors"].items())
    for kind, why in summary.get("unavailable", {}).items():
        lines.append(f"unavailable: {kind}: {why}")
    return "\n".join(lines)


@dataclass
class Progress:
    """Per-second progress figures from a :class:`RunStats` that is still growing."""

    stats: RunStats
    last_time: float
    """When the previous line was printed (or the run started)."""
    last_count: int = 0

    def line(self, now: float, in_flight: int, *, label: str = "") -> str:
        stats = self.stats
        count, errors = stats.count, stats.error_count
        dt = now - self.last_time
        recent = sorted(stats.latencies[self.last_count : count])
        tps = (count - self.last_count) / dt if dt > 0 else 0.0
        p99 = percentile(recent, 99) * 1000 if recent else math.nan
        self.last_count, self.last_time = count, now
        return (
            f"{label:<8} {tps:>9.0f} TPS  in flight {in_flight:>6}  errors {errors:>6}"
            f"  p99(1s) {p99:>7.2f} ms"
        )
