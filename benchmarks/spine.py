"""Throughput of one purchase flow through gateway + issuer simulator (separate processes).

    .venv/bin/python -m benchmarks.spine --duration 10 --in-flight 1 16 64

Starts the demo issuer simulator (beta, alpha) and the gateway on free ports from the demo
profile, drives closed-loop purchases on the synthetic card ranges, and prints TPS, latency
percentiles and the gateway's CPU microseconds per transaction for each in-flight level.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import orjson

from loadtest.generator import ClosedLoop, LoadConfig
from loadtest.procstat import cpu_seconds, free_port, peak_rss_kib

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def write_conf(tmp: Path, ports: dict[str, int], gw_port: int, admin: int) -> None:
    demo = ROOT / "conf" / "demo"
    pki = (ROOT / "var" / "certs").resolve()
    (tmp / "gateway.toml").write_text(
        f'data = "{demo / "data.toml"}"\npki_dir = "{pki}"\nrisk = "{demo / "risk.toml"}"\n'
        f"[terminal]\nport = {gw_port}\ntls_port = -1\n"
        # benchmarks.idle_connections opens its thousands from one address: no caps here.
        "max_connections = 100000\nmax_connections_per_address = 100000\n"
        f"[admin]\nport = {admin}\n"
        "[qr_api]\nport = -1\n[hsm]\nendpoints = []\n"
        '[log]\nlevel = "warning"\ntransactions = false\n'
        + "".join(
            f'[[links]]\nissuer = "{i}"\nendpoints = ["127.0.0.1:{p}"]\nconnections = 2\n'
            for i, p in ports.items()
        )
    )
    (tmp / "issuer-sim.toml").write_text(
        f'data = "{demo / "data.toml"}"\npki_dir = "{pki}"\nlog_level = "warning"\n'
        + "".join(
            f'[[issuers]]\nid = "{i}"\nport = {p}\nallowed_clients = ["switch"]\n'
            for i, p in ports.items()
        )
    )


def spawn_stack(tmp: Path, backend: str) -> tuple[list[subprocess.Popen[bytes]], int, int]:
    """Issuer simulators and a gateway (last in the list) on free ports; (procs, port, admin)."""
    from kit import pki

    names = ["gateway", "switch", "issuer-alpha", "issuer-beta", "issuer-gamma"]
    pki.ensure_pki(ROOT / "var" / "certs", names)
    ports = {"alpha": free_port(), "beta": free_port(), "gamma": free_port()}
    gw_port, admin = free_port(), free_port()
    write_conf(tmp, ports, gw_port, admin)
    sim = [str(BIN / "issuer-sim"), "run", "--conf", str(tmp / "issuer-sim.toml")]
    procs = [subprocess.Popen([*sim, "--issuer", i, "--backend", backend]) for i in ports]
    time.sleep(1.0)
    gw = [str(BIN / "gateway"), "run", "--conf", str(tmp / "gateway.toml"), "--backend", backend]
    procs.append(subprocess.Popen(gw))
    return procs, gw_port, admin


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--backend", default="uvloop")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmpdir:
        procs, gw_port, admin = spawn_stack(Path(tmpdir), args.backend)
        gw = procs[-1]
        try:
            _wait_ready(admin)
            for n in args.in_flight:
                conns = min(args.connections, n)
                cfg = LoadConfig(
                    port=gw_port,
                    connections=conns,
                    in_flight=n,
                    duration=args.duration,
                    warmup=1.0,
                    prefixes=("5413339",),  # beta: no issuer-link MAC, so no HSM on this path
                )
                loop = ClosedLoop(cfg)
                cpu0 = cpu_seconds(gw.pid)
                sims0 = sum(cpu_seconds(p.pid) for p in procs[:-1])
                stats = anyio.run(loop.run, backend="asyncio", backend_options={"use_uvloop": True})
                cpu1 = cpu_seconds(gw.pid)
                sims1 = sum(cpu_seconds(p.pid) for p in procs[:-1])
                summary = stats.summary()
                # CPU includes the 1 s warm-up: divide by every answered request in the window.
                total = stats.count * (1 + cfg.warmup / cfg.duration)
                summary["in_flight"] = n
                summary["connections"] = conns
                summary["gateway_cpu_us_per_txn"] = round((cpu1 - cpu0) / total * 1e6, 1)
                summary["issuer_sim_cpu_us_per_txn"] = round((sims1 - sims0) / total * 1e6, 1)
                summary["gateway_peak_rss_mib"] = round(peak_rss_kib(gw.pid) / 1024, 1)
                results.append(summary)
                lat = summary["latency_ms"]
                print(
                    f"in-flight {n:>3}: {summary['tps']:>8} TPS  p50 {lat['p50']} ms"
                    f"  p99 {lat['p99']} ms  gateway {summary['gateway_cpu_us_per_txn']} us/txn"
                    f"  codes {summary['response_codes']}",
                    flush=True,
                )
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(timeout=10)
    print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
    return 0


def _wait_ready(admin: int) -> None:
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{admin}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit("gateway not ready within 30 s")


if __name__ == "__main__":
    raise SystemExit(main())
