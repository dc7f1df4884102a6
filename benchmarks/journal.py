"""Journal write throughput: ``python -m benchmarks.journal [--dsn DSN] [--runs 3]``.

Modes (each: ``--writers`` concurrent tasks appending ``received`` events with an encrypted
PAN and payload, durable=True), the median of ``--runs`` runs in writes per second:

- ``sqlite-full-group``: synchronous=FULL with group commit (the default configuration);
- ``sqlite-full-single``: synchronous=FULL, one commit (one fsync) per write;
- ``sqlite-off-group``: synchronous=OFF with group commit (no fsync: an upper bound, not safe);
- ``postgres-group``: PostgreSQL with group commit (with ``--dsn``; skipped if unreachable).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import anyio

from gateway.journal import JournalEvent, TxnState, open_journal
from gateway.journal.config import JournalConfig, config_from_mapping

PAN = "4761730000000011"


def _keys() -> dict[str, Any]:
    return {
        "active_key_id": "bench",
        "keys": [{"id": "bench", "hex": os.urandom(32).hex()}],
        "lookup_key": {"hex": os.urandom(32).hex()},
        "chain_key": {"hex": os.urandom(32).hex()},
    }


def _event(i: int, now: datetime) -> JournalEvent:
    return JournalEvent(
        txn_id=f"b{i}",
        state=TxnState.RECEIVED,
        at=now,
        mti="0200",
        processing_code="000000",
        amount=1500,
        currency="156",
        terminal_id="TERM0001",
        merchant_id="MERCHANT000001",
        stan=f"{i % 1_000_000:06d}",
        transmission="0314120000",
        issuer_id="alpha",
        pan=PAN,
        request={"t": "0200", "2": PAN, "3": "000000", "4": "000000001500", "11": "000001"},
    )


async def _one_run(config: JournalConfig, records: int, writers: int) -> tuple[float, float]:
    """(writes per second, mean batch size)."""
    now = datetime.now(UTC)
    events = [_event(i, now) for i in range(records)]
    async with open_journal(config) as journal:
        counter = iter(range(records))

        async def writer() -> None:
            for i in counter:
                await journal.append(events[i])

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(writers):
                tg.start_soon(writer)
        elapsed = time.perf_counter() - start
        stats = journal.statistics()
    return records / elapsed, stats.ops / max(1, stats.batches)


async def _drop_schema(dsn: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def _pg_reachable(dsn: str) -> bool:
    import asyncpg

    try:
        with anyio.fail_after(3):
            conn = await asyncpg.connect(dsn)
    except (OSError, TimeoutError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


async def _bench(args: argparse.Namespace) -> None:
    modes: list[tuple[str, dict[str, Any], int]] = [
        ("sqlite-full-group", {"synchronous": "FULL"}, args.records),
        ("sqlite-full-single", {"synchronous": "FULL", "group_commit_max_batch": 1}, args.single),
        ("sqlite-off-group", {"synchronous": "OFF"}, args.records),
    ]
    if args.dsn and await _pg_reachable(args.dsn):
        modes.append(("postgres-group", {"backend": "postgres", "dsn": args.dsn}, args.records))
    elif args.dsn:
        print(f"postgres-group: skipped ({args.dsn} unreachable)")
    for name, overrides, records in modes:
        rates, batches = [], []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="journal-bench-") as tmp:
                schema = f"bench_{uuid.uuid4().hex[:12]}"
                table = {**_keys(), "path": f"{tmp}/j.sqlite3", "schema": schema, **overrides}
                try:
                    rate, batch = await _one_run(config_from_mapping(table), records, args.writers)
                finally:
                    if overrides.get("backend") == "postgres":
                        await _drop_schema(args.dsn, schema)
            rates.append(rate)
            batches.append(batch)
        print(
            f"{name:20s} {statistics.median(rates):9.0f} writes/s  "
            f"(median of {args.runs}; runs {', '.join(f'{r:.0f}' for r in rates)}; "
            f"mean batch {statistics.median(batches):.1f}; {records} records, "
            f"{args.writers} writers)"
        )
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=5000, help="records per group run")
    parser.add_argument("--single", type=int, default=300, help="records per single-commit run")
    parser.add_argument("--writers", type=int, default=200, help="concurrent writer tasks")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dsn", default=os.environ.get("POSTGRES_DSN", ""))
    parser.add_argument("--uvloop", action="store_true", help="asyncio with uvloop")
    args = parser.parse_args(argv)
    anyio.run(_bench, args, backend="asyncio", backend_options={"use_uvloop": args.uvloop})


if __name__ == "__main__":
    main()
