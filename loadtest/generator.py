"""Closed-loop async load: N requests in flight over C pipelined terminal connections.

Each connection keeps its share of requests outstanding; answers are matched by STAN, so
latency is measured per request even when answers come back out of order.
"""

from __future__ import annotations

import itertools
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from gateway.framed import FramedStream
from loadtest.stats import RunStats
from loadtest.terminal_client import build_request, transmission_now
from protocols.codec import Codec
from protocols.dialects import get_dialect
from protocols.message import Message
from protocols.validate import luhn_ok

CODEC = Codec(get_dialect("terminal"))


def synthetic_pan(prefix: str, rnd: random.Random) -> str:
    """A Luhn-valid 16-digit PAN in a synthetic load-test range."""
    body = prefix + "".join(rnd.choice("0123456789") for _ in range(15 - len(prefix)))
    for check in "0123456789":
        if luhn_ok(body + check):
            return body + check
    raise AssertionError("unreachable: one check digit always fits")


@dataclass(frozen=True)
class LoadConfig:
    host: str = "127.0.0.1"
    port: int = 8583
    connections: int = 4
    in_flight: int = 16
    duration: float = 10.0
    warmup: float = 1.0
    terminal: str = "T0000001"
    merchant: str = "M00000000000001"
    prefixes: tuple[str, ...] = ("5413339", "4761739")
    amount: int = 100
    tls: ssl.SSLContext | None = None


RequestFactory = Callable[[str, str], Message]


class ClosedLoop:
    def __init__(self, cfg: LoadConfig, factory: RequestFactory | None = None) -> None:
        self.cfg = cfg
        self.stats = RunStats()
        self._stan = itertools.count(random.randrange(999999))
        self._rnd = random.Random()
        self._factory = factory or self._purchase
        self._measuring = False

    def _purchase(self, stan: str, transmission: str) -> Message:
        cfg = self.cfg
        pan = synthetic_pan(self._rnd.choice(cfg.prefixes), self._rnd)
        return build_request(
            "0200",
            terminal=cfg.terminal,
            merchant=cfg.merchant,
            pan=pan,
            amount=cfg.amount,
            stan=stan,
            transmission=transmission,
        )

    def _next_stan(self) -> str:
        return f"{next(self._stan) % 999999 + 1:06d}"

    async def run(self, progress: Callable[[RunStats, float], None] | None = None) -> RunStats:
        cfg = self.cfg
        per_conn = max(1, cfg.in_flight // cfg.connections)
        async with anyio.create_task_group() as tg:
            for _ in range(cfg.connections):
                tg.start_soon(self._connection, per_conn)
            await anyio.sleep(cfg.warmup)
            self._measuring = True
            started = anyio.current_time()
            end = started + cfg.duration
            while (now := anyio.current_time()) < end:
                await anyio.sleep(min(1.0, end - now))
                if progress is not None:
                    progress(self.stats, anyio.current_time() - started)
            self.stats.elapsed = anyio.current_time() - started
            self._measuring = False
            tg.cancel_scope.cancel()
        return self.stats

    async def _connection(self, per_conn: int) -> None:
        cfg = self.cfg
        if cfg.tls is None:
            stream: anyio.abc.ByteStream = await anyio.connect_tcp(cfg.host, cfg.port)
        else:
            stream = await anyio.connect_tcp(
                cfg.host,
                cfg.port,
                ssl_context=cfg.tls,
                tls_hostname="localhost",
                tls_standard_compatible=False,
            )
        framed = FramedStream(stream, max_size=8192, partial_timeout=30.0)
        window = anyio.Semaphore(per_conn)
        sent: dict[str, float] = {}
        async with framed.stream, anyio.create_task_group() as tg:
            tg.start_soon(self._reader, framed, window, sent)
            while True:
                await window.acquire()
                stan = self._next_stan()
                msg = self._factory(stan, transmission_now())
                sent[stan] = anyio.current_time()
                await framed.send_frame(CODEC.encode(msg))

    async def _reader(
        self, framed: FramedStream, window: anyio.Semaphore, sent: dict[str, float]
    ) -> None:
        while True:
            frame = await framed.receive_frame()
            now = anyio.current_time()
            msg = CODEC.decode(frame)
            started = sent.pop(msg.fields.get("11", ""), None)
            window.release()
            if started is None:
                self.stats.errors["unmatched"] += 1
            elif self._measuring:
                self.stats.record(now - started, msg.fields.get("39", "??"))
