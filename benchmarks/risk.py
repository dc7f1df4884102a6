"""What the risk stage adds per transaction: assess + confirm, memory and Redis backends.

    .venv/bin/python -m benchmarks.risk [--n 2000] [--runs 5] [--redis-url URL] [--loop uvloop]

Each run pushes ``n`` purchases through one engine, one after another (the latency the stage
adds to one transaction), then with ``--concurrency`` tasks at once (cost per transaction under
load), then through the pipeline participant (``CheckRisk.prepare`` + ``commit`` with a
purchase's context: card key, mask and input included). Printed: medians of the runs in
microseconds, wall clock and this process's CPU time (on a shared machine the CPU figure is the
steadier one; Redis's own CPU is not in it). Cards are fresh per transaction, as in a load test,
so no limit trips; the score is on. Redis keys go under a unique prefix deleted afterwards.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
from prometheus_client import CollectorRegistry

from gateway.flow.pipeline import Context
from gateway.flow.risk_stage import CheckRisk
from gateway.risk.cardkey import card_key, mask_pan
from gateway.risk.config import RiskConfig, load_config
from gateway.risk.counters import CounterStore, MemoryCounterStore
from gateway.risk.engine import RiskEngine
from gateway.risk.model import RiskInput
from gateway.risk.redis_counters import RedisCounterStore
from kit.dataset import Merchant
from protocols.message import Message

DEMO_CONF = Path(__file__).resolve().parents[1] / "conf" / "demo" / "risk.toml"
T0 = datetime(2024, 5, 1, 4, 0, tzinfo=UTC)


def _inputs(n: int, key: bytes, run: int) -> list[RiskInput]:
    """Fresh cards per run: nothing of an earlier run (velocity, profile) changes the path."""
    out = []
    for i in range(n):
        pan = f"5413339{run:03d}{i:06d}"
        out.append(
            RiskInput(
                txn_id=uuid.uuid4().hex,
                card_key=card_key(pan, key),
                masked_pan=mask_pan(pan),
                pan_prefix=pan[:8],
                amount=10_000 + i % 97,
                currency="156",
                mcc="5411",
                merchant_id="M00000000000001",
                terminal_id="T0000001",
                merchant_country="156",
                card_country="156",
                counts=True,
                now=T0 + timedelta(milliseconds=i * 20),
            )
        )
    return out


def _contexts(n: int, run: int) -> list[Context]:
    """Purchases as the pipeline hands them to the risk stage (fields checked, merchant known)."""
    merchant = Merchant(id="M00000000000001", name="Bench", mcc="5411", country="156", city="SH")
    out = []
    for i in range(n):
        pan = f"5413339{run:03d}{i:06d}"
        fields = {"2": pan, "3": "000000", "4": f"{10_000 + i % 97:012d}", "41": "T0000001"}
        fields["49"] = "156"
        ctx = Context(
            request=Message("0200", fields),
            received=0.0,
            deadline=1.0,
            now=T0 + timedelta(milliseconds=i * 20),
            rrn=f"{run:04d}{i:08d}",
        )
        ctx.merchant, ctx.pan = merchant, pan
        out.append(ctx)
    return out


async def _stage_run(stage: CheckRisk, contexts: list[Context]) -> tuple[float, float]:
    start, cpu = time.perf_counter(), time.process_time()
    for ctx in contexts:
        await stage.prepare(ctx)
        await stage.commit(ctx)
    return _per_txn(start, cpu, len(contexts))


async def _one_run(
    engine: RiskEngine, inputs: list[RiskInput], concurrency: int
) -> tuple[float, float]:
    """Microseconds per transaction: wall clock, and CPU time of this process."""
    start, cpu = time.perf_counter(), time.process_time()
    if concurrency <= 1:
        for inp in inputs:
            decision = await engine.assess(inp)
            await engine.confirm(decision)
        return _per_txn(start, cpu, len(inputs))
    send, receive = anyio.create_memory_object_stream[RiskInput](len(inputs))
    for inp in inputs:
        send.send_nowait(inp)
    send.close()

    async def worker() -> None:
        async with receive.clone() as mine:
            async for inp in mine:
                decision = await engine.assess(inp)
                await engine.confirm(decision)

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    receive.close()
    return _per_txn(start, cpu, len(inputs))


def _print(name: str, label: str, what: str, figures: list[tuple[float, float]]) -> None:
    wall = [w for w, _ in figures]
    cpu = [c for _, c in figures]
    print(
        f"{name:6s} {label:10s} {what} µs/txn: wall median "
        f"{statistics.median(wall):7.1f}, own CPU median {statistics.median(cpu):7.1f}"
        f"  (wall runs: {', '.join(f'{f:.0f}' for f in wall)})"
    )


def _per_txn(start: float, cpu: float, n: int) -> tuple[float, float]:
    return (time.perf_counter() - start) * 1e6 / n, (time.process_time() - cpu) * 1e6 / n


async def _delete_prefix(store: RedisCounterStore) -> None:
    cursor = "0"
    while True:
        reply = await store.client.execute(
            "SCAN", cursor, "MATCH", f"{store.prefix}*", "COUNT", 1000
        )
        assert isinstance(reply, list)
        cursor_raw, keys = reply
        assert isinstance(cursor_raw, bytes)
        assert isinstance(keys, list)
        if keys:
            await store.client.execute("DEL", *[k for k in keys if isinstance(k, bytes)])
        cursor = cursor_raw.decode()
        if cursor == "0":
            return


async def _bench(
    name: str, config: RiskConfig, store: CounterStore, n: int, runs: int, concurrency: int
) -> None:
    engine = RiskEngine(config, store=store, registry=CollectorRegistry())
    key = config.pan_key()
    try:
        await _one_run(engine, _inputs(min(n, 200), key, 999), 1)  # warm up: connections
        for c, conc in enumerate((1, concurrency)):
            figures = [
                await _one_run(engine, _inputs(n, key, c * runs + r), conc) for r in range(runs)
            ]
            label = "sequential" if conc == 1 else f"{conc} tasks"
            _print(name, label, "assess+confirm", figures)
        stage = CheckRisk(engine)
        figures = [await _stage_run(stage, _contexts(n, 2 * runs + r)) for r in range(runs)]
        _print(name, "stage", "prepare+commit", figures)
    finally:
        if isinstance(store, RedisCounterStore):
            await _delete_prefix(store)
        await engine.aclose()


async def _main(args: argparse.Namespace) -> None:
    config = load_config(args.conf)
    await _bench("memory", config, MemoryCounterStore(), args.n, args.runs, args.concurrency)
    if args.redis_url:  # an empty string: memory only
        store = RedisCounterStore.from_url(
            args.redis_url, prefix=f"bench:risk:{uuid.uuid4().hex}:", timeout=5.0
        )
        await _bench("redis", config, store, args.n, args.runs, args.concurrency)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.risk", description=__doc__)
    parser.add_argument("--conf", default=str(DEMO_CONF), help="risk.toml (default: demo)")
    parser.add_argument("--n", type=int, default=2000, help="transactions per run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--redis-url", default="redis://127.0.0.1:6379/15", help="empty string: memory only"
    )
    parser.add_argument("--loop", choices=["asyncio", "uvloop", "trio"], default="asyncio")
    args = parser.parse_args(argv)
    if args.loop == "trio":
        anyio.run(_main, args, backend="trio")
    else:
        anyio.run(
            _main, args, backend="asyncio", backend_options={"use_uvloop": args.loop == "uvloop"}
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
