"""What the recent-transaction window costs: bytes per entry and CPU per transaction.

    .venv/bin/python -m benchmarks.recent [--n 100000] [--runs 5]

Each transaction is made as on the hot path: a purchase decoded from its wire bytes (fresh
strings, as the terminal driver has them), the duplicate stage's ``begin``, the fields the
issuer stage records on the entry (issuer, its STAN and time, RRN, amount), the answer built by
the switch from a decoded issuer answer, then the duplicate stage's ``finish``. Printed:

* bytes per entry: what ``tracemalloc`` still counts once ``n`` transactions went through and
  everything but the window was dropped, divided by ``n``;
* a full garbage collection's time with the window filled;
* CPU per transaction (``time.process_time``) of ``begin`` + the issuer fields + ``finish``:
  the loop that decodes and answers each transaction with the stage minus the same loop
  without it (medians of ``runs`` alternated runs), with the collector off, then at the
  gateway's thresholds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import statistics
import time
import tracemalloc
from collections.abc import Sequence

from gateway.flow.participants import CheckDuplicate
from gateway.flow.pipeline import Context
from gateway.flow.recent import RecentTransactions
from gateway.flow.rrn import RrnGenerator
from gateway.flow.switch import Switch
from gateway.metrics import Metrics
from gateway.upstream.links import transmission_time
from protocols.dialects import get_dialect
from protocols.fastcodec import best_codec
from protocols.message import Message
from protocols.validate import card_of

CODEC = best_codec(get_dialect("terminal"))
T0 = dt.datetime(2026, 11, 27, 8, 0, tzinfo=dt.UTC)


def _request_bytes(i: int) -> bytes:
    now = T0 + dt.timedelta(milliseconds=i)
    return CODEC.encode(
        Message(
            "0200",
            {
                "2": f"4761730{i:09d}",
                "3": "000000",
                "4": f"{1000 + i % 5000:012d}",
                "7": now.strftime("%m%d%H%M%S"),
                "11": f"{i % 1_000_000:06d}",
                "12": now.strftime("%H%M%S"),
                "13": now.strftime("%m%d"),
                "14": "2812",
                "22": "021",
                "41": f"T{i % 500:07d}",
                "42": "M00000000000001",
                "49": "156",
            },
        )
    )


def _answer_bytes(i: int) -> bytes:
    return CODEC.encode(
        Message("0210", {"11": f"{i % 1_000_000:06d}", "38": f"{i:06d}"[-6:], "39": "00"})
    )


def _context(i: int, wire: bytes, answer: bytes, rrn: RrnGenerator, now: float) -> Context:
    req = CODEC.decode(wire)
    wall = T0 + dt.timedelta(milliseconds=i)
    ctx = Context(
        request=req,
        received=now,
        deadline=now + 30.0,
        now=wall,
        rrn=rrn.next(int(wall.timestamp() * 1_000_000)),
    )
    ctx.pan, ctx.expiry = card_of(req)
    ctx.issuer_response = CODEC.decode(answer)
    ctx.rc = "00"
    return ctx


def _issuer_fields(ctx: Context) -> None:
    """What QueryIssuer records on the entry once the issuer request is made."""
    entry = ctx.entry
    assert entry is not None
    entry.issuer = "alpha"
    entry.issuer_mti = ctx.request.mti
    entry.issuer_stan = ctx.request.fields["11"]
    entry.issuer_time = transmission_time(ctx.now)
    entry.rrn = ctx.rrn
    entry.amount = int(ctx.request.fields.get("4", "0"))


def _inputs(n: int) -> tuple[list[bytes], list[bytes]]:
    return [_request_bytes(i) for i in range(n)], [_answer_bytes(i) for i in range(n)]


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def bytes_per_entry(n: int, *, traced: bool) -> float:
    """Per entry once ``n`` transactions went through: what ``tracemalloc`` counts
    (``traced``), else the growth of this process's RSS (the inputs made beforehand)."""
    wires, answers = _inputs(n)
    switch = Switch([], Metrics())
    rrn = RrnGenerator(0, 0)
    recent = RecentTransactions(window=86_400.0)
    stage = CheckDuplicate(recent, Metrics())
    gc.collect()
    rss = _rss()
    if traced:
        tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        ctx = _context(i, wires[i], answers[i], rrn, float(i) / 1000)
        stage.prepare_now(ctx)
        _issuer_fields(ctx)
        ctx.response = switch._build_response(ctx)
        stage.commit_now(ctx)
        del ctx
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base if traced else _rss() - rss
    tracemalloc.stop()
    assert len(recent) == n
    return used / n


def cpu_per_transaction(n: int, runs: int, *, collect: bool) -> tuple[float, float]:
    """(median CPU of a transaction without the stage, with it) in microseconds, in the
    steady state of a full window: it holds ``n`` entries (its ``max_entries``) before the
    clock starts, so each of the ``n`` measured transactions evicts the oldest (what an
    entry costs to free is paid there). Each transaction is decoded and answered in the loop,
    so its answer is as fresh in the CPU's caches as in the switch; the stage's cost is the
    difference. ``collect``: the garbage collector runs at the gateway's thresholds (what the
    window holds costs collections), else it is off."""
    wires, answers = _inputs(2 * n)
    switch = Switch([], Metrics())
    build = switch._build_response
    rrn = RrnGenerator(0, 0)
    without: list[float] = []
    with_stage: list[float] = []
    thresholds = gc.get_threshold()
    for run in range(runs * 2):
        measured = run % 2 == 0
        stage = CheckDuplicate(RecentTransactions(window=86_400.0, max_entries=n), Metrics())
        begin, finish = stage.prepare_now, stage.commit_now
        for i in range(n):  # fill the window
            ctx = _context(i, wires[i], answers[i], rrn, i / 1000)
            begin(ctx)
            _issuer_fields(ctx)
            ctx.response = build(ctx)
            finish(ctx)
        gc.collect()
        if collect:
            gc.freeze()  # as the gateway after start-up; the window is frozen with it
            gc.set_threshold(50_000, 50, 1_000)
        else:
            gc.disable()
        start = time.process_time()
        if measured:
            for i in range(n, 2 * n):
                ctx = _context(i, wires[i], answers[i], rrn, i / 1000)
                begin(ctx)
                _issuer_fields(ctx)
                ctx.response = build(ctx)
                finish(ctx)
        else:
            for i in range(n, 2 * n):
                ctx = _context(i, wires[i], answers[i], rrn, i / 1000)
                ctx.response = build(ctx)
        (with_stage if measured else without).append((time.process_time() - start) / n * 1e6)
        gc.enable()
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        del stage, begin, finish, ctx
    return statistics.median(without), statistics.median(with_stage)


def full_collection_ms(n: int) -> float:
    """A full garbage collection with ``n`` entries in the window (what sets the p99)."""
    wires, answers = _inputs(n)
    switch = Switch([], Metrics())
    rrn = RrnGenerator(0, 0)
    recent = RecentTransactions(window=86_400.0)
    stage = CheckDuplicate(recent, Metrics())
    for i in range(n):
        ctx = _context(i, wires[i], answers[i], rrn, i / 1000)
        stage.prepare_now(ctx)
        _issuer_fields(ctx)
        ctx.response = switch._build_response(ctx)
        stage.commit_now(ctx)
    del ctx, wires, answers
    out = []
    for _ in range(5):
        start = time.process_time()
        gc.collect()
        out.append((time.process_time() - start) * 1000)
    return statistics.median(out)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    rss = bytes_per_entry(args.n, traced=False)
    traced = bytes_per_entry(args.n, traced=True)
    print(
        f"bytes per entry ({args.n} entries): {traced:.0f} (tracemalloc), "
        f"{rss:.0f} (RSS growth of this process)"
    )
    print(f"full gc.collect() with {args.n} entries: {full_collection_ms(args.n):.1f} ms")
    for collect in (False, True):
        base, total = cpu_per_transaction(args.n, args.runs, collect=collect)
        label = "gc at the gateway's thresholds" if collect else "gc off"
        print(
            f"begin + finish CPU per transaction, {label} (medians of {args.runs}): "
            f"{total - base:.2f} us ({total:.2f} with the stage - {base:.2f} without)"
        )


if __name__ == "__main__":
    main()
