"""High-rate async load generator: open loop (fixed arrival rate) or closed loop (N in flight).

* Closed loop: ``in_flight`` requests outstanding, spread over ``connections`` pipelined
  terminal connections; a new request leaves as soon as an answer (or a timeout) frees a slot.
  Latency is measured from the moment the request is sent.
* Open loop (``rate`` > 0): request *i* is due at ``start + i / rate`` and is sent then,
  whatever happened to earlier requests; when the generator falls behind (a stall of its own
  loop, a full socket) the late requests leave in a burst. Latency is measured from the
  *scheduled* time, so a stall shows up in the percentiles instead of being hidden
  (coordinated omission). ``max_in_flight`` bounds memory: arrivals beyond it are not sent
  and are counted as errors.

Answers are matched per connection by STAN (field 11). Only requests sent (open loop:
scheduled) inside the measurement window, after ``warmup``, are counted; they may complete
during the drain after the window. The mix, the cards and the keys come from
:mod:`loadtest.mix`; QR items go to the HTTP API (:mod:`loadtest.qr_client`).
"""

from __future__ import annotations

import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from loadtest.mix import (
    ISO_KINDS,
    MixError,
    Txn,
    TxnFactory,
    Weighted,
    fresh_pan,
    load_data,
    parse_mix,
)
from loadtest.qr_client import QrClient
from loadtest.stats import Progress, RunStats
from loadtest.wire import FrameConnection, LeanCodec, WireError, connect
from protocols.dialects import get_dialect
from protocols.errors import ProtocolError
from protocols.message import Message

__all__ = [
    "ClosedLoop",
    "GeneratorError",
    "LoadConfig",
    "LoadGenerator",
    "synthetic_pan",
]

_ANSWER_FIELDS = ("11", "39")
# Latency clock: uvloop's loop time (anyio.current_time) only has millisecond resolution.
_now = time.perf_counter


def synthetic_pan(prefix: str, rnd: random.Random) -> str:
    """A Luhn-valid 16-digit PAN in a synthetic load-test range."""
    return fresh_pan(prefix, rnd)


class GeneratorError(Exception):
    """The run cannot start (nothing to send, gateway unreachable)."""


@dataclass(frozen=True)
class LoadConfig:
    host: str = "127.0.0.1"
    port: int = 8583
    connections: int = 4
    in_flight: int = 16
    """Closed loop: requests outstanding in total (spread over the connections)."""
    rate: float = 0.0
    """Open loop when > 0: arrivals per second."""
    duration: float = 10.0
    warmup: float = 1.0
    mix: str = "magstripe=1"
    """Kinds and weights (see loadtest.mix), or a scenario name: plain, pin, mixed."""
    terminal: str = "T0000001"
    prefixes: tuple[str, ...] = ()
    """Synthetic ranges to use (empty: all of the dataset's)."""
    amount: int = 100
    amount_max: int = 0
    """Amounts are drawn from amount..amount_max (0: always ``amount``)."""
    qr_verification: tuple[str, ...] = ()
    """Factors QR payments state in ``payer_verification`` (empty: left out)."""
    timeout: float = 10.0
    """An unanswered request counts as a timeout error after this many seconds."""
    drain: float = 5.0
    """After the window, wait at most this long for outstanding answers."""
    max_in_flight: int = 20_000
    """Open loop: arrivals beyond this many outstanding requests are not sent (errors)."""
    tls: ssl.SSLContext | None = None
    tls_hostname: str = "localhost"
    qr_url: str = "http://127.0.0.1:8080"
    """Base URL of the QR acquirer API; empty: the qr item is unavailable."""
    data: Path | None = None
    """Dataset with keys, terminals and synthetic ranges (default conf/demo/data.toml)."""
    seed: int | None = None


@dataclass(slots=True)
class _Pending:
    kind: str
    t0: float
    measured: bool
    original: Message | None


@dataclass(eq=False)
class _Conn:
    pending: dict[str, _Pending] = field(default_factory=dict)
    alive: bool = True
    channel: FrameConnection | None = None


class LoadGenerator:
    """One run of the generator; :meth:`run` returns the statistics."""

    def __init__(
        self,
        cfg: LoadConfig,
        factory: TxnFactory | None = None,
        *,
        qr: QrClient | None = None,
    ) -> None:
        self.cfg = cfg
        self.rnd = random.Random(cfg.seed)
        self.factory = factory or TxnFactory(
            load_data(cfg.data),
            terminal=cfg.terminal,
            prefixes=cfg.prefixes,
            amount=(cfg.amount, max(cfg.amount, cfg.amount_max)),
            rnd=self.rnd,
            qr_verification=cfg.qr_verification,
        )
        self.weights = parse_mix(cfg.mix)
        self.stats = RunStats()
        self.codec = LeanCodec(get_dialect("terminal"))
        self.in_flight = 0
        self.scheduled = 0
        """Open loop: arrivals due so far (sent or not)."""
        self.late_max = 0.0
        """Open loop: the largest delay between a request's due time and its sending."""
        self._qr = qr
        self._conns: list[_Conn] = []
        self._rr = 0
        self._window = (float("inf"), float("inf"))
        self._stop = anyio.Event()
        """Set when the schedule is done or every connection is gone."""
        self._draining = False
        self._idle = anyio.Event()
        self._closed_loop = False
        self._free = 0
        """Closed loop: requests that may still be sent (in_flight less those outstanding)."""
        self._slot_freed: anyio.Event | None = None
        """Closed loop: set (the sender resumes) when it must wait for something else than a
        free slot; slots freed by answers are refilled on the spot (see _finish)."""
        self._wake_reason = "full"
        self._tg: anyio.abc.TaskGroup | None = None
        self._draw = Weighted(self.weights)
        self._fallback = Weighted({k: w for k, w in self.weights.items() if k != "reversal"})
        self._reversals = "reversal" in self.weights

    @property
    def open_loop(self) -> bool:
        return self.cfg.rate > 0

    @property
    def window(self) -> tuple[float, float]:
        """The measured window (``perf_counter`` times), infinite until :meth:`run` starts it:
        what a sampler beside the run (``loadtest soak``) aligns its rows to."""
        return self._window

    # -- setup ------------------------------------------------------------------------

    async def _check_prerequisites(self) -> None:
        """Drop the mix items that cannot run, saying why; fail when nothing is left."""
        for kind in list(self.weights):
            why = self.factory.missing(kind)
            if why is None and kind == "qr":
                if self._qr is None:
                    why = "no QR API URL given"
                else:
                    why = await self._qr.probe()
            if why is not None:
                self.stats.unavailable[kind] = why
        iso = [k for k in self.weights if k in ISO_KINDS and k not in self.stats.unavailable]
        if iso:
            try:
                await self._connect_all()
            except (OSError, ssl.SSLError) as exc:
                why = f"gateway not reachable at {self.cfg.host}:{self.cfg.port} ({exc})"
                for kind in iso:
                    self.stats.unavailable[kind] = why
        usable = {k: w for k, w in self.weights.items() if k not in self.stats.unavailable}
        if not set(usable) - {"reversal"}:
            reasons = "; ".join(f"{k}: {v}" for k, v in self.stats.unavailable.items())
            raise GeneratorError(f"nothing to send: {reasons}")
        self.weights = usable
        self._draw = Weighted(usable)
        self._fallback = Weighted({k: w for k, w in usable.items() if k != "reversal"})
        self._reversals = "reversal" in usable

    async def _connect_all(self) -> None:
        cfg = self.cfg
        for _ in range(cfg.connections):
            conn = _Conn()
            conn.channel = await connect(
                cfg.host,
                cfg.port,
                partial(self._on_frame, conn),
                partial(self._on_lost, conn),
                tls=cfg.tls,
                tls_hostname=cfg.tls_hostname,
                max_size=8192,
                partial_timeout=30.0,
            )
            self._conns.append(conn)

    # -- the run ----------------------------------------------------------------------

    async def run(self, progress: Callable[[str], None] | None = None) -> RunStats:
        cfg = self.cfg
        stats = self.stats
        stats.info = {
            "mode": "open-loop" if self.open_loop else "closed-loop",
            "rate": cfg.rate if self.open_loop else None,
            "in_flight": None if self.open_loop else cfg.in_flight,
            "connections": cfg.connections,
            "warmup_s": cfg.warmup,
            "mix": dict(self.weights),
        }
        await self._check_prerequisites()
        stats.info["mix"] = dict(self.weights)
        try:
            async with anyio.create_task_group() as tg:
                for conn in self._conns:
                    assert conn.channel is not None
                    tg.start_soon(conn.channel.run)
                tg.start_soon(self._sweeper)
                start = _now()
                window_start = start + cfg.warmup
                end = window_start + cfg.duration
                self._window = (window_start, end)
                if progress is not None:
                    tg.start_soon(self._progress, progress, start, window_start, end)
                async with anyio.create_task_group() as senders:
                    if self.open_loop:
                        senders.start_soon(self._schedule, tg, start, end)
                    else:
                        self._free = max(1, cfg.in_flight)
                        senders.start_soon(self._closed_sender, tg)
                    # The open-loop schedule ends by itself (its last arrival is due just
                    # before the end); the margin only guards against a stuck scheduler.
                    margin = 1.0 if self.open_loop else 0.0
                    with anyio.move_on_after(max(0.0, end - _now()) + margin):
                        await self._stop.wait()
                    senders.cancel_scope.cancel()
                stopped = _now()
                stats.elapsed = max(0.0, min(end, stopped) - window_start)
                self._draining = True
                if self.in_flight > 0:
                    with anyio.move_on_after(min(cfg.drain, cfg.timeout)):
                        await self._idle.wait()
                self._unanswered()
                tg.cancel_scope.cancel()
        finally:
            self._unanswered()
            for conn in self._conns:
                if conn.channel is not None:
                    with anyio.CancelScope(shield=True):
                        await conn.channel.aclose()
        if self.open_loop:
            stats.info["scheduled"] = self.scheduled
            stats.info["late_max_ms"] = round(self.late_max * 1000, 3)
        return stats

    def _unanswered(self) -> None:
        """What is still outstanding when the run ends: no answer, and none will be read."""
        for conn in self._conns:
            for p in conn.pending.values():
                if p.measured:
                    self.stats.error("unanswered at end", p.kind)
            conn.pending.clear()

    async def _progress(
        self, emit: Callable[[str], None], start: float, window_start: float, end: float
    ) -> None:
        meter = Progress(self.stats, last_time=window_start)
        tick = start + 1.0
        while True:
            await anyio.sleep(max(0.0, tick - _now()))
            now = _now()
            if now < window_start:
                emit(f"warm-up   in flight {self.in_flight}")
            else:
                label = f"{min(now, end) - window_start:5.1f}s" if now <= end + 0.5 else "drain"
                emit(meter.line(now, self.in_flight, label=label))
            tick += 1.0

    def _measured(self, t0: float) -> bool:
        lo, hi = self._window
        return lo <= t0 < hi

    def _next_txn(self) -> Txn | None:
        kind = self._draw.draw(self.rnd)
        try:
            if kind == "reversal":
                original = self.factory.take_original()
                if original is not None:
                    return self.factory.reversal(original)
                kind = self._fallback.draw(self.rnd)
            return self.factory.build(kind)
        except (MixError, ValueError, ProtocolError) as exc:
            self.stats.error(f"build failed: {type(exc).__name__}", kind)
            return None

    async def _schedule(self, tg: anyio.abc.TaskGroup, start: float, end: float) -> None:
        interval = 1.0 / self.cfg.rate
        i = 0
        while True:
            due = start + i * interval
            if due >= end:
                self._stop.set()
                return
            now = _now()
            if due > now:
                await anyio.sleep(due - now)
                now = _now()
            # Everything due by now leaves, in schedule order (a burst after a stall).
            while due <= now and due < end:
                i += 1
                self.scheduled += 1
                self.late_max = max(self.late_max, now - due)
                self._dispatch(tg, due)
                due = start + i * interval

    def _dispatch(self, tg: anyio.abc.TaskGroup, due: float) -> None:
        measured = self._measured(due)
        if self.in_flight >= self.cfg.max_in_flight:
            if measured:
                self.stats.error("not sent: max in flight", self._draw.draw(self.rnd))
            return
        txn = self._next_txn()
        if txn is None:
            return
        if txn.kind == "qr":
            self.in_flight += 1
            tg.start_soon(self._qr_payment, txn, due, measured)
            return
        conn = self._pick()
        if conn is None:
            if measured:
                self.stats.error("not sent: no connection", txn.kind)
            return
        self._send(conn, txn, due, measured)

    def _pick(self) -> _Conn | None:
        conns = self._conns
        for _ in range(len(conns)):
            self._rr = (self._rr + 1) % len(conns)
            conn = conns[self._rr]
            if conn.alive:
                return conn
        return None

    def _fill(self, conn_hint: _Conn | None = None) -> str:
        """Closed loop: send while slots are free, without yielding (they leave in one write),
        on ``conn_hint`` when it is alive (an answer's slot is refilled on its connection: each
        keeps its share in flight, and a batch of answers becomes one write, not one per
        connection), else round robin.

        Returns why it stopped: ``full`` (no slot free), ``done`` (the window is over),
        ``retry`` (a request could not be built: yield first), ``no-conn`` (wait a little)."""
        while self._free > 0:
            self._free -= 1
            t0 = _now()
            if t0 >= self._window[1]:
                self._free += 1
                return "done"
            measured = self._measured(t0)
            txn = self._next_txn()
            if txn is None:
                self._free += 1
                return "retry"
            if txn.kind == "qr":
                assert self._tg is not None
                self.in_flight += 1
                self._tg.start_soon(self._qr_payment, txn, t0, measured)
                continue
            conn = conn_hint if conn_hint is not None and conn_hint.alive else self._pick()
            if conn is None:
                self._free += 1
                if measured:
                    self.stats.error("not sent: no connection", txn.kind)
                return "no-conn"
            self._send(conn, txn, t0, measured)
        return "full"

    async def _closed_sender(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg
        self._closed_loop = True
        try:
            why = self._fill()
            while True:
                if why == "done":
                    return
                if why == "retry":
                    await anyio.lowlevel.checkpoint()
                elif why == "no-conn":
                    await anyio.sleep(0.01)
                else:
                    # Answers refill their slots themselves (_finish): no wake-up per answer.
                    self._slot_freed = anyio.Event()
                    await self._slot_freed.wait()
                    why = self._wake_reason  # where the last refill stopped
                    continue
                why = self._fill()
        finally:
            self._closed_loop = False

    def _send(self, conn: _Conn, txn: Txn, t0: float, measured: bool) -> None:
        original = txn.original if self._reversals else None
        conn.pending[txn.stan] = _Pending(txn.kind, t0, measured, original)
        self.in_flight += 1
        payload = txn.payload
        assert conn.channel is not None
        conn.channel.send(len(payload).to_bytes(2, "big") + payload)

    def _finish(self, conn: _Conn | None = None) -> None:
        self.in_flight -= 1
        if self._closed_loop:
            self._free += 1
            freed = self._slot_freed
            if freed is not None:
                why = self._fill(conn)
                if why != "full":
                    self._wake_reason = why
                    self._slot_freed = None
                    freed.set()  # the sender task retries, waits or ends
        if self._draining and self.in_flight <= 0:
            self._idle.set()

    def _on_frame(self, conn: _Conn, frame: bytes) -> None:
        """An answer arrived on ``conn`` (called by the connection, in the event loop)."""
        now = _now()
        stats = self.stats
        try:
            _, fields = self.codec.peek(frame, _ANSWER_FIELDS)
        except WireError:
            # Its request cannot be told: it will also end as a timeout.
            stats.error("undecodable answer", "-")
            return
        p = conn.pending.pop(fields.get("11", ""), None)
        if p is None:
            stats.error("unmatched answer", "-")
            return
        rc = fields.get("39", "??")
        if p.measured:
            stats.record(now - p.t0, rc, p.kind)
        if p.original is not None and rc == "00":
            self.factory.note_approved(p.original)
        self._finish(conn)  # last: the slot it frees may send a reversal of this very purchase

    def _on_lost(self, conn: _Conn) -> None:
        """``conn`` ended (closed, broken, bad framing): what it had outstanding is lost."""
        conn.alive = False
        pending = conn.pending
        for p in pending.values():
            self._finish()
            if p.measured:
                self.stats.error("connection lost", p.kind)
        pending.clear()
        if not any(c.alive for c in self._conns):
            self._stop.set()

    async def _sweeper(self) -> None:
        timeout = self.cfg.timeout
        tick = min(0.1, timeout / 4)
        while True:
            await anyio.sleep(tick)
            stall_clock = time.monotonic()
            for conn in self._conns:
                if conn.alive and conn.channel is not None:
                    conn.channel.check_stall(stall_clock)
            limit = _now() - timeout
            for conn in self._conns:
                pending = conn.pending
                while pending:
                    stan = next(iter(pending))
                    p = pending[stan]
                    if p.t0 > limit:
                        break
                    del pending[stan]
                    self._finish()
                    if p.measured:
                        self.stats.error("timeout", p.kind)

    async def _qr_payment(self, txn: Txn, t0: float, measured: bool) -> None:
        assert self._qr is not None
        assert txn.qr_body is not None
        try:
            rc, error = await self._qr.pay(txn.qr_body)
        finally:
            self._finish()
        if not measured:
            return
        if rc is not None:
            self.stats.record(_now() - t0, rc, "qr")
        else:
            self.stats.error(error or "qr error", "qr")


# The spine's name for the closed-loop generator (bench_spine and older callers).
ClosedLoop = LoadGenerator


def summary_line(summary: dict[str, Any]) -> str:
    """One line for a finished run (used by the bench)."""
    lat = summary["latency_ms"]
    return (
        f"{summary['tps']:>9} TPS  p50 {lat['p50']} ms  p90 {lat['p90']} ms  p99 {lat['p99']} ms"
        f"  p99.9 {lat['p99.9']} ms  errors {summary['error_count']}"
    )
