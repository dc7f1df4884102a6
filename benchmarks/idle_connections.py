"""Memory held by idle terminal connections, and service while they are open.

    .venv/bin/python -m benchmarks.idle_connections --connections 10000

Starts the issuer simulators and one gateway process (demo profile, free ports), opens N idle
TCP connections to the terminal port from this process, reports the gateway's RSS per
connection, then drives closed-loop purchases for a few seconds while the idle connections
stay open and reports TPS and response codes. Loopback only; bounded in count and time.
"""

from __future__ import annotations

import argparse
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

import anyio
import orjson

from benchmarks.spine import _wait_ready, spawn_stack
from loadtest.generator import ClosedLoop, LoadConfig


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_idle(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        socks.append(s)
    return socks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.connections + 100 > hard:
        raise SystemExit(f"need {args.connections + 100} file descriptors, the limit is {hard}")
    result: dict[str, object] = {"connections": args.connections}
    with tempfile.TemporaryDirectory() as tmpdir:
        procs, gw_port, admin = spawn_stack(Path(tmpdir), "uvloop")
        gw = procs[-1]
        socks: list[socket.socket] = []
        try:
            _wait_ready(admin)
            time.sleep(0.5)
            before = rss_kib(gw.pid)
            started = time.perf_counter()
            socks = open_idle(gw_port, args.connections)
            opened_s = time.perf_counter() - started
            time.sleep(1.0)
            after = rss_kib(gw.pid)
            per_conn = (after - before) * 1024 / args.connections
            result.update(
                rss_before_mib=round(before / 1024, 1),
                rss_after_mib=round(after / 1024, 1),
                bytes_per_connection=round(per_conn),
                open_seconds=round(opened_s, 2),
            )
            print(
                f"{args.connections} idle connections: gateway RSS {before / 1024:.1f} -> "
                f"{after / 1024:.1f} MiB, {per_conn:.0f} bytes per connection",
                flush=True,
            )
            cfg = LoadConfig(
                port=gw_port,
                connections=4,
                in_flight=16,
                duration=args.duration,
                warmup=0.5,
                prefixes=("5413339",),
            )
            stats = anyio.run(
                ClosedLoop(cfg).run, backend="asyncio", backend_options={"use_uvloop": True}
            )
            summary = stats.summary()
            result["traffic_while_open"] = summary
            print(
                f"while they are open: {summary['tps']} TPS, codes {summary['response_codes']}, "
                f"p99 {summary['latency_ms']['p99']} ms, RSS now "
                f"{rss_kib(gw.pid) / 1024:.1f} MiB",
                flush=True,
            )
        finally:
            for s in socks:
                s.close()
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(timeout=10)
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
