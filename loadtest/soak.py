"""``loadtest soak``: the demo stack at a steady open-loop rate for a long time, past every
cache cap, with a row of figures per interval and a verdict.

    loadtest soak --minutes 60 --markdown var/soak.md           # rate: 60 % of a probed max
    loadtest soak --minutes 0.5 --interval-seconds 5 --rate 40  # CI smoke

It starts the demo profile as ``loadtest bench`` does (``loadtest.bench.start_stack``: separate
processes on free loopback ports, a throw-away journal), with the in-memory caches' caps lowered
so that each fills within the first sixth of the run (see :func:`lowered_caps`); a cap that is
never reached in a short run would hide exactly the slowdowns and leaks a soak is for (the dict
eviction of issue "Defects found from outside" showed only after a million transactions).

Without ``--rate`` a short closed-loop probe on a stack of its own (default caps) measures the
maximum first; the soak runs at ``--rate-fraction`` (60 %) of it. Each row: TPS, p50/p99 of the
answers that arrived in the interval, errors (no usable answer) and non-00 answers, RSS and open
file descriptors of every process (gateway, its journal writer, each issuer-sim, hsm-sim),
journal size on disk, SAF depth (``switch_saf_depth`` from /metrics) and the duplicate window's
size (/status). The verdict compares the first and last ten minutes (a third each in runs under
half an hour): throughput and p99 within the tolerances, RSS flat from the end of the first
third (every cap reached) to the end, no file-descriptor growth, zero errors, no 91/96 answer,
every process alive. Exit status 0 when it passes, 1 when not, 2 when the stack could not start.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import orjson

from loadtest.bench import DEMO, ROOT, BenchError, Stack, start_stack
from loadtest.generator import GeneratorError, LoadConfig, LoadGenerator
from loadtest.mix import ISO_KINDS, SCENARIOS, MixError, TxnFactory, load_data, parse_mix
from loadtest.procstat import descendants
from loadtest.qr_client import QrClient
from loadtest.runs import backend_args, run_generator
from loadtest.stats import percentile

SYSTEM_CODES = frozenset({"91", "96"})
"""Answers that say the switch or an issuer link failed: errors for the verdict, not declines."""
FILL_SHARE = 6
"""Caps are set to a sixth of what the run sends of their kind: reached in its first third."""

# -- the caps ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Cap:
    file: str
    path: tuple[str, ...]
    value: int | float
    default: int | float
    what: str

    @property
    def key(self) -> str:
        return f"{self.file} {'.'.join(self.path)}"


def lowered_caps(mix: str, rate: float, seconds: float) -> list[Cap]:
    """Every cap of an in-memory cache the soak's traffic fills, lowered to a sixth of what the
    run sends of that kind (never above the profile's default, at least 10).

    Not lowered, because the soak cannot reach them: per-peer tables (the admin API's poll
    slots, the HTTP auth-failure peers, the logs' per-address rate limiter: one load client is
    one address), the stand-in's ATC memory (no issuer is down) and the QR step-up challenges
    (no payment needs a one-time code)."""
    weights = parse_mix(mix)
    total = sum(weights.values()) or 1.0
    sent = rate * seconds

    def share(*kinds: str) -> float:
        return sent * sum(weights.get(k, 0.0) for k in kinds) / total

    iso = share(*ISO_KINDS)
    cards = share(*(ISO_KINDS - {"reversal"}), "qr")
    issuers = 3  # the demo's alpha, beta and gamma share the synthetic ranges

    def cap(amount: float, default: int, divisor: int = 1) -> int:
        return int(max(10, min(default, amount / FILL_SHARE / divisor)))

    caps = [
        Cap("gateway.toml", ("duplicate_max_entries",), cap(iso, 500_000), 500_000,
            "recent transactions in memory (duplicates, reversals' originals)"),
        Cap("risk.toml", ("memory_max_cards",), cap(cards, 1_000_000), 1_000_000,
            "risk engine's per-card state (memory backend)"),
        Cap("issuer-sim.toml", ("max_records",), cap(iso, 1_000_000, issuers), 1_000_000,
            "issuer-sim postings and answers, per issuer"),
        Cap("issuer-sim.toml", ("max_synthetic_accounts",), cap(iso, 1_000_000, issuers),
            1_000_000, "issuer-sim accounts of synthetic cards, per issuer"),
    ]  # fmt: skip
    if weights.get("pin_dukpt"):
        caps.append(
            Cap("gateway.toml", ("ksn_memory",), cap(share("pin_dukpt"), 500_000), 500_000,
                "DUKPT KSNs remembered against replay")
        )  # fmt: skip
    if weights.get("qr"):
        caps += [
            Cap("gateway.toml", ("qr_api", "max_payments"), cap(share("qr"), 1_000_000),
                1_000_000, "QR payments and dynamic codes kept (store)"),
            Cap("gateway.toml", ("qr_api", "idempotency_window"),
                round(max(1.0, min(86_400.0, seconds / FILL_SHARE)), 1), 86_400.0,
                "QR idempotency keys kept, seconds (the store bounds them by age)"),
        ]  # fmt: skip
    return caps


LIFT_FACTOR = 4
"""A lifted daily count is this many times a card's mean use in the run."""


def lifted_limits(
    mix: str, rate: float, seconds: float, cards: int, ranges: int, risk: dict[str, Any]
) -> list[Cap]:
    """With a card population (``--cards``) each card comes back about ``uses`` times in the
    run, all on one business day. A daily count per card not well above that turns the run's
    second half into a limits test: the first 1-hour soak (2026-12-07, 100,000 cards at 669
    TPS, about 24 uses each) went from 0 to 672 declines ``65`` a minute by its middle, so
    the compared segments did different work (a decline never reaches the issuer or the
    journal's durable path). Lifted to ``LIFT_FACTOR`` times the mean use, never lowered;
    the limits themselves have their own tests."""
    current = risk.get("daily_count_per_card")
    if cards <= 0 or ranges <= 0 or not isinstance(current, int):
        return []
    weights = parse_mix(mix)
    total = sum(weights.values()) or 1.0
    card_kinds = ISO_KINDS - {"reversal"}
    sent = rate * seconds * sum(weights.get(k, 0.0) for k in card_kinds) / total
    uses = sent / (cards * ranges)
    wanted = math.ceil(uses * LIFT_FACTOR)
    if wanted <= current:
        return []
    what = (
        f"daily count per card: each of {cards * ranges} cards is used about {uses:.0f}"
        " times in the run (a soak is not a limits test)"
    )
    return [Cap("risk.toml", ("daily_count_per_card",), wanted, current, what)]


def overrides(caps: Sequence[Cap]) -> dict[str, dict[str, Any]]:
    """``start_stack``'s overrides: file -> nested keys."""
    out: dict[str, dict[str, Any]] = {}
    for c in caps:
        node = out.setdefault(c.file, {})
        for part in c.path[:-1]:
            node = node.setdefault(part, {})
        node[c.path[-1]] = c.value
    return out


# -- the rows ---------------------------------------------------------------------------


@dataclass
class Row:
    until: float
    """Seconds since the measured window started, at the end of this row."""
    seconds: float
    count: int
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    non_00: int
    system: int
    """91/96 answers."""
    rss_mib: dict[str, float]
    fds: dict[str, int]
    journal_mib: float
    saf_depth: int | None
    recent: int | None

    @property
    def tps(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Soak:
    stack: Stack
    journal_dir: Path
    rows: list[Row] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    head: list[list[float]] = field(default_factory=list)
    """Latencies (s) of the first segment's rows."""
    tail: deque[list[float]] = field(default_factory=deque)
    """Latencies of the last ``segment_rows`` rows so far."""
    segment_rows: int = 1
    gone: list[str] = field(default_factory=list)
    """Processes that exited during the soak."""


def processes(stack: Stack) -> dict[str, int]:
    """Every process of the stack by a short name: services and their children."""
    out: dict[str, int] = {}
    for svc in stack.services:
        name = short_name(svc.name)
        out[name] = svc.proc.pid
        for i, child in enumerate(descendants(svc.proc.pid)):
            out[f"{name}/{_child_role(child)}{'' if i == 0 else i}"] = child
    return out


def short_name(service: str) -> str:
    if service.startswith("issuer-sim "):
        return service.split(" ", 1)[1]
    return {"gateway": "gw", "hsm-sim": "hsm"}.get(service, service)


def _child_role(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "child"
    if b"gateway.journal.writer" in cmd:
        return "jw"
    return "worker" if b"--worker" in cmd else "child"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def journal_mib(directory: Path) -> float:
    size = 0
    for f in directory.glob("journal.sqlite3*"):
        try:
            size += f.stat().st_size
        except OSError:
            continue
    return size / 2**20


def saf_depth(metrics_text: str) -> int:
    """Sum of ``switch_saf_depth`` over the issuers in a Prometheus exposition."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(("switch_saf_depth{", "switch_saf_depth ")):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


async def _gateway_figures(stack: Stack) -> tuple[int | None, int | None]:
    """(SAF depth, duplicate window size) from the admin API; None when it does not answer."""
    import httpx

    base = f"http://127.0.0.1:{stack.admin_port}"
    headers = {"Authorization": f"Bearer {stack.admin_token}"}
    depth = recent = None
    async with httpx.AsyncClient(timeout=5) as client:
        try:
            depth = saf_depth((await client.get(f"{base}/metrics", headers=headers)).text)
            body = (await client.get(f"{base}/status", headers=headers)).json()
            recent = body.get("recent_transactions")
        except (httpx.HTTPError, ValueError):
            pass
    return depth, recent


async def take_row(soak: Soak, gen: LoadGenerator, until: float, seconds: float) -> Row:
    """The figures since the last row; the generator's latencies are taken out (a run of an
    hour would otherwise keep every one of them)."""
    stats = gen.stats
    lat = stats.latencies[:]
    stats.latencies.clear()
    for ks in stats.by_kind.values():
        ks.latencies.clear()
    codes = stats.codes - soak.codes
    errors = stats.errors - soak.errors
    soak.codes, soak.errors = Counter(stats.codes), Counter(stats.errors)
    rss: dict[str, float] = {}
    fds: dict[str, int] = {}
    for name, pid in processes(soak.stack).items():
        try:
            rss[name] = round(rss_mib(pid), 1)
            fds[name] = open_fds(pid)
        except OSError:
            continue  # ended between the listing and the reading: the next row says so
    for svc in soak.stack.services:
        if svc.proc.poll() is not None and svc.name not in soak.gone:
            soak.gone.append(svc.name)
    depth, recent = await _gateway_figures(soak.stack)
    ordered = sorted(lat)
    row = Row(
        until=round(until, 1),
        seconds=seconds,
        count=len(lat),
        p50_ms=round(percentile(ordered, 50) * 1000, 2) if ordered else None,
        p99_ms=round(percentile(ordered, 99) * 1000, 2) if ordered else None,
        errors=sum(errors.values()),
        non_00=sum(n for c, n in codes.items() if c != "00"),
        system=sum(n for c, n in codes.items() if c in SYSTEM_CODES),
        rss_mib=rss,
        fds=fds,
        journal_mib=round(journal_mib(soak.journal_dir), 1),
        saf_depth=depth,
        recent=recent,
    )
    soak.rows.append(row)
    if len(soak.head) < soak.segment_rows:
        soak.head.append(lat)
    soak.tail.append(lat)
    return row


async def drive(
    soak: Soak, cfg: LoadConfig, interval: float, emit: Any, factory: TxnFactory
) -> LoadGenerator:
    """The open-loop run with a row every ``interval`` seconds of its measured window; the
    last row is taken when the run has drained."""
    qr_cm = QrClient(cfg.qr_url, factory.qr_api_key, connections=16, timeout=cfg.timeout)
    async with qr_cm as qr:
        gen = LoadGenerator(cfg, factory, qr=qr if cfg.qr_url else None)
        done = anyio.Event()
        failed: list[GeneratorError] = []

        async def run() -> None:
            try:
                await gen.run(None)
            except GeneratorError as exc:
                failed.append(exc)  # raised below, not as a task group's exception group
            finally:
                done.set()

        async def sampler() -> None:
            while math.isinf(gen.window[0]):
                if done.is_set():
                    return
                await anyio.sleep(0.05)
            start, end = gen.window
            k = 1
            while start + k * interval < end - 1e-6:
                await anyio.sleep(max(0.0, start + k * interval - time.perf_counter()))
                if done.is_set():
                    return
                emit(format_row(await take_row(soak, gen, k * interval, interval), soak))
                k += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(sampler)
            await run()
            tg.cancel_scope.cancel()
        if failed:
            raise failed[0]
        start, end = gen.window
        last = (end - start) - (soak.rows[-1].until if soak.rows else 0.0)
        emit(format_row(await take_row(soak, gen, end - start, last), soak))
    return gen


# -- the table --------------------------------------------------------------------------


def _names(rows: Sequence[Row]) -> list[str]:
    seen: dict[str, None] = {}
    for r in rows:
        seen.update(dict.fromkeys(r.rss_mib))
    return list(seen)


def _cells(row: Row, names: Sequence[str]) -> list[str]:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    m, s = divmod(round(row.until), 60)
    return [
        f"{m}:{s:02d}",
        f"{row.tps:.0f}",
        ms(row.p50_ms),
        ms(row.p99_ms),
        str(row.errors),
        str(row.non_00),
        *(f"{row.rss_mib[n]:.0f}" if n in row.rss_mib else "gone" for n in names),
        *(str(row.fds[n]) if n in row.fds else "gone" for n in names),
        f"{row.journal_mib:.1f}",
        "-" if row.saf_depth is None else str(row.saf_depth),
        "-" if row.recent is None else str(row.recent),
    ]


def headers(names: Sequence[str]) -> list[str]:
    return [
        "until",
        "TPS",
        "p50 ms",
        "p99 ms",
        "errors",
        "non-00",
        *(f"RSS {n}" for n in names),
        *(f"FDs {n}" for n in names),
        "journal MiB",
        "SAF",
        "recent",
    ]


def format_row(row: Row, soak: Soak) -> str:
    names = _names(soak.rows)
    first = len(soak.rows) == 1
    line = "  ".join(f"{c:>8}" for c in _cells(row, names))
    if first:
        return "  ".join(f"{h:>8}" for h in headers(names)) + "\n" + line
    return line


def text_table(rows: Sequence[Row]) -> str:
    names = _names(rows)
    lines = ["  ".join(f"{h:>8}" for h in headers(names))]
    lines += ["  ".join(f"{c:>8}" for c in _cells(r, names)) for r in rows]
    return "\n".join(lines)


def markdown_table(rows: Sequence[Row]) -> str:
    names = _names(rows)
    head = headers(names)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cells(r, names)) + " |" for r in rows]
    return "\n".join(lines)


# -- the verdict ------------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerances:
    tps: float = 0.05
    """Last segment's TPS within this fraction of the first's."""
    p99: float = 0.5
    """Last segment's p99 at most this fraction above the first's ..."""
    p99_slack_ms: float = 5.0
    """... or this many ms above it, whichever is larger (a few ms is noise at low p99s)."""
    rss: float = 0.10
    """RSS growth from the caps-reached row to the last, fraction ..."""
    rss_slack_mib: float = 16.0
    """... or MiB, whichever is larger (allocator arenas, SQLite page cache)."""
    fd_slack: int = 4
    """Open files a process may gain from the first row to the last."""


def segment_rows(total: float, interval: float) -> int:
    """Rows of the compared segments: ten minutes, or a third of a run under half an hour."""
    seconds = 600.0 if total >= 1800.0 else total / 3
    return max(1, round(seconds / interval))


def verdict(soak: Soak, total: float, tol: Tolerances) -> tuple[bool, list[str]]:
    rows = soak.rows
    k = soak.segment_rows
    lines: list[str] = []
    ok = True

    def check(passed: bool, text: str) -> None:
        nonlocal ok
        ok = ok and passed
        lines.append(f"{'PASS' if passed else 'FAIL'}  {text}")

    first, last = rows[:k], rows[-k:]
    first_lat = sorted(x for lat in soak.head for x in lat)
    last_lat = sorted(x for lat in soak.tail for x in lat)

    def tps(rs: Sequence[Row]) -> float:
        secs = sum(r.seconds for r in rs)
        return sum(r.count for r in rs) / secs if secs else 0.0

    span = f"first {sum(r.seconds for r in first):g} s vs last {sum(r.seconds for r in last):g} s"
    t0, t1 = tps(first), tps(last)
    check(
        t0 > 0 and abs(t1 - t0) <= tol.tps * t0,
        f"throughput {span}: {t0:.1f} -> {t1:.1f} TPS (within {tol.tps:.0%})",
    )
    if first_lat and last_lat:
        p0, p1 = percentile(first_lat, 99) * 1000, percentile(last_lat, 99) * 1000
        allowed = max(p0 * (1 + tol.p99), p0 + tol.p99_slack_ms)
        check(p1 <= allowed, f"p99 {span}: {p0:.2f} -> {p1:.2f} ms (at most {allowed:.2f})")
    else:
        check(False, "p99: no answers in a compared segment")
    # Every cap is reached within the first third (lowered_caps): RSS from there on.
    cap_row = next((i for i, r in enumerate(rows) if r.until >= total / 3 - 1e-6), 0)
    at_cap, end = rows[cap_row], rows[-1]
    for name in _names(rows):
        if name not in at_cap.rss_mib or name not in end.rss_mib:
            check(False, f"RSS {name}: process gone")
            continue
        a, b = at_cap.rss_mib[name], end.rss_mib[name]
        allowed = max(a * tol.rss, tol.rss_slack_mib)
        check(
            b - a <= allowed,
            f"RSS {name} from {at_cap.until:g} s (caps reached) to the end: {a:.1f} -> {b:.1f}"
            f" MiB (growth at most {allowed:.1f})",
        )
    for name in _names(rows):
        if name in rows[0].fds and name in end.fds:
            a2, b2 = rows[0].fds[name], end.fds[name]
            check(
                b2 - a2 <= tol.fd_slack, f"FDs {name}: {a2} -> {b2} (growth at most {tol.fd_slack})"
            )
    errors = sum(r.errors for r in rows)
    system = sum(r.system for r in rows)
    named = ", ".join(f"{k2} {n}" for k2, n in soak.errors.most_common()) or "none"
    check(errors == 0, f"errors (no usable answer): {errors} ({named})")
    check(system == 0, f"91/96 answers: {system}")
    codes = ", ".join(f"{c} {n}" for c, n in sorted(soak.codes.items()))
    lines.append(f"info  answers by response code: {codes or 'none'}")
    check(
        not soak.gone,
        f"processes alive: {'all' if not soak.gone else 'gone: ' + ', '.join(soak.gone)}",
    )
    return ok, lines


# -- the command ------------------------------------------------------------------------


def probe_max(args: argparse.Namespace, tmp: Path) -> float:
    """Closed-loop maximum TPS of the stack with default caps (short: it only sets a rate)."""
    with start_stack(args.conf, tmp, backend=args.backend) as stack:
        cfg = LoadConfig(
            port=stack.terminal_port,
            connections=args.connections,
            in_flight=args.probe_in_flight,
            duration=args.probe_seconds,
            warmup=2.0,
            mix=args.mix,
            timeout=args.timeout,
            data=args.conf / "data.toml",
            qr_url=stack.qr_url,
        )
        name, options = backend_args(args.backend)
        summary = anyio.run(
            lambda: run_generator(cfg, progress=False), backend=name, backend_options=options
        )
    tps = float(summary["tps"])
    lat = summary["latency_ms"]
    print(
        f"probe: closed loop, {args.probe_in_flight} in flight, {args.probe_seconds:g} s:"
        f" {tps:.0f} TPS, p99 {lat['p99']} ms, errors {summary['error_count']}",
        flush=True,
    )
    if tps <= 0:
        raise BenchError("the probe got no answers")
    return tps


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def run_soak(args: argparse.Namespace, tmp: Path) -> int:
    total = args.minutes * 60.0
    interval = min(args.interval_seconds, total)
    rate = args.rate
    if rate <= 0:
        (tmp / "probe").mkdir()
        rate = round(probe_max(args, tmp / "probe") * args.rate_fraction, 1)
    caps = lowered_caps(args.mix, rate, total)
    ranges = len(TxnFactory(load_data(args.conf / "data.toml")).ranges)
    risk = tomllib.loads((args.conf / "risk.toml").read_text()) if args.cards else {}
    lifted = lifted_limits(args.mix, rate, total, args.cards, ranges, risk)
    print(f"soak: {rate:g} TPS open loop, {args.mix}, {total:g} s, a row every {interval:g} s")
    print("caps lowered so that each is reached in the first third of the run:")
    for c in caps:
        print(f"  {c.key} = {c.value:g} (default {c.default:g}): {c.what}")
    if lifted:
        print("limits lifted for the reused card population:")
    for c in lifted:
        print(f"  {c.key} = {c.value:g} (profile {c.default:g}): {c.what}")
    started = dt.datetime.now(dt.UTC)
    load = os.getloadavg()
    (tmp / "soak").mkdir()
    with start_stack(
        args.conf, tmp / "soak", backend=args.backend, overrides=overrides([*caps, *lifted])
    ) as stack:
        soak = Soak(stack, tmp / "soak", segment_rows=segment_rows(total, interval))
        soak.tail = deque(maxlen=soak.segment_rows)
        cfg = LoadConfig(
            port=stack.terminal_port,
            connections=args.connections,
            rate=rate,
            duration=total,
            warmup=args.warmup,
            mix=args.mix,
            timeout=args.timeout,
            max_in_flight=args.max_in_flight,
            data=args.conf / "data.toml",
            qr_url=stack.qr_url,
            seed=args.seed,
        )
        import random

        factory = TxnFactory(
            load_data(cfg.data),
            terminal=cfg.terminal,
            prefixes=cfg.prefixes,
            amount=(100, 5000),
            rnd=random.Random(cfg.seed),
            cards=args.cards,
        )
        # Reversals take the oldest approved purchase still queued: a queue of one second of
        # traffic keeps their originals within the issuer-sim's lowered max_records (a longer
        # one has them answered 25, original forgotten, once the caps are reached).
        factory.approved = collections.deque(maxlen=max(10, int(rate)))
        name, options = backend_args(args.backend)
        emit = (lambda line: print(line, flush=True)) if not args.quiet else (lambda line: None)
        gen = anyio.run(
            lambda: drive(soak, replace(cfg), interval, emit, factory),
            backend=name,
            backend_options=options,
        )
    unavailable = gen.stats.unavailable
    declines = [
        f"{kind} {code} {n}"
        for kind, ks in sorted(gen.stats.by_kind.items())
        for code, n in sorted(ks.codes.items())
        if code != "00"
    ]
    ok, lines = verdict(soak, total, args.tolerances)
    if unavailable:
        ok = False
        lines.append(
            "FAIL  mix items left out: " + "; ".join(f"{k}: {v}" for k, v in unavailable.items())
        )
    lines.append(f"info  non-00 answers by kind: {', '.join(declines) or 'none'}")
    print(f"\nverdict: {'PASS' if ok else 'FAIL'}")
    print("\n".join(lines), flush=True)
    report = {
        "started": started.isoformat(timespec="seconds"),
        "commit": _commit(),
        "load_average_before": [round(x, 2) for x in load],
        "rate": rate,
        "mix": args.mix,
        "seconds": total,
        "interval_seconds": interval,
        "caps": [
            {"key": c.key, "value": c.value, "default": c.default, "what": c.what} for c in caps
        ],
        "cards": args.cards,
        "lifted": [
            {"key": c.key, "value": c.value, "profile": c.default, "what": c.what} for c in lifted
        ],
        "rows": [{**r.__dict__, "tps": round(r.tps, 1)} for r in soak.rows],
        "verdict": {"pass": ok, "checks": lines},
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown_report(report, soak.rows))
    return 0 if ok else 1


def markdown_report(report: Mapping[str, Any], rows: Sequence[Row]) -> str:
    la = report["load_average_before"]
    caps = ", ".join(f"`{c['key']}` {c['value']:g}" for c in report["caps"])
    lines = [
        f"Soak {report['started']} UTC, commit {report['commit']}: {report['rate']:g} TPS open"
        f" loop, mix `{report['mix']}`, {report['seconds']:g} s, a row every"
        f" {report['interval_seconds']:g} s, load average before {la[0]} {la[1]} {la[2]}."
        f" Caps lowered: {caps}.{_population(report)}",
        "",
        markdown_table(rows),
        "",
        f"Verdict: **{'pass' if report['verdict']['pass'] else 'FAIL'}**",
        "",
        *(f"- {line}" for line in report["verdict"]["checks"]),
        "",
    ]
    return "\n".join(lines)


def _population(report: Mapping[str, Any]) -> str:
    if not report.get("cards"):
        return " A fresh card per request."
    lifted = ", ".join(
        f"`{c['key']}` {c['value']:g} (profile {c['profile']:g})" for c in report["lifted"]
    )
    text = f" {report['cards']:,} cards per synthetic range, reused at random."
    return text + (f" Limits lifted for them: {lifted}." if lifted else "")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="loadtest soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--minutes", type=float, default=60.0, help="measured minutes")
    parser.add_argument(
        "--interval-seconds", type=float, default=60.0, help="one row per this many seconds"
    )
    parser.add_argument(
        "--rate", type=float, default=0.0, help="TPS (default: --rate-fraction of a probe)"
    )
    parser.add_argument("--rate-fraction", type=float, default=0.6)
    parser.add_argument("--probe-seconds", type=float, default=10.0)
    parser.add_argument("--probe-in-flight", type=int, default=64)
    parser.add_argument(
        "--mix", default="mixed", help=f"scenario ({', '.join(SCENARIOS)}) or weights"
    )
    parser.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds first")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--max-in-flight", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--cards",
        type=int,
        default=0,
        help="card numbers per synthetic range, reused at random (0: a fresh one per request)",
    )
    parser.add_argument("--backend", choices=("uvloop", "asyncio", "trio"), default="uvloop")
    parser.add_argument("--conf", type=Path, default=DEMO, help="profile directory")
    parser.add_argument("--tps-tolerance", type=float, default=Tolerances.tps)
    parser.add_argument("--p99-tolerance", type=float, default=Tolerances.p99)
    parser.add_argument("--p99-slack-ms", type=float, default=Tolerances.p99_slack_ms)
    parser.add_argument("--rss-tolerance", type=float, default=Tolerances.rss)
    parser.add_argument("--rss-slack-mib", type=float, default=Tolerances.rss_slack_mib)
    parser.add_argument("--fd-slack", type=int, default=Tolerances.fd_slack)
    parser.add_argument("--markdown", type=Path, default=None, help="write the table here")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    parser.add_argument("--quiet", action="store_true", help="no rows while running")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.interval_seconds <= 0:
        parser.error("--minutes and --interval-seconds must be > 0")
    args.conf = args.conf.resolve()
    args.tolerances = Tolerances(
        args.tps_tolerance,
        args.p99_tolerance,
        args.p99_slack_ms,
        args.rss_tolerance,
        args.rss_slack_mib,
        args.fd_slack,
    )
    tmp = Path(tempfile.mkdtemp(prefix="payswitch-soak-"))
    try:
        return run_soak(args, tmp)
    except (BenchError, GeneratorError, MixError) as exc:
        print(f"loadtest soak: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
