"""What durability costs: the spine benchmark with and without the journal.

    .venv/bin/python -m benchmarks.group_commit --duration 8 --in-flight 64

Same processes as :mod:`benchmarks.spine` (issuer simulators and the gateway as separate
processes, closed-loop purchases on beta's synthetic range), once per journal mode:

* ``none``: no journal;
* ``full``: SQLite, ``synchronous=FULL`` with group commit (the default);
* ``full-no-group``: SQLite FULL, one commit (one fsync) per record (``group_commit_max_batch
  = 1``): what group commit saves;
* ``off``: SQLite ``synchronous=OFF`` (no fsync at all): the cost of the writes themselves.

Prints TPS, latency, gateway CPU per transaction, and journal records per second and per
transaction (events counted in the database afterwards). To compare two versions of the code
on this noisy machine, alternate runs of both (``PYTHONPATH`` pointing at an exported tree,
run from inside it) rather than comparing with an older figure.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import orjson

from benchmarks.spine import BIN, ROOT, _wait_ready, write_conf
from loadtest.generator import ClosedLoop, LoadConfig
from loadtest.procstat import cpu_seconds, free_port

MODES = {
    "none": None,
    "full": 'synchronous = "FULL"\n',
    "full-no-group": 'synchronous = "FULL"\ngroup_commit_max_batch = 1\n',
    "off": 'synchronous = "OFF"\n',
}


def journal_conf(tmp: Path, extra: str) -> Path:
    path = tmp / "journal.toml"
    path.write_text(
        f'[journal]\npath = "{tmp / "journal.sqlite3"}"\nactive_key_id = "b"\n'
        f'keys = [{{ id = "b", hex = "{os.urandom(32).hex()}" }}]\n'
        f'lookup_key = {{ hex = "{os.urandom(32).hex()}" }}\n'
        f'chain_key = {{ hex = "{os.urandom(32).hex()}" }}\n' + extra
    )
    return path


def run_mode(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    ports = {"alpha": free_port(), "beta": free_port(), "gamma": free_port()}
    gw_port, admin = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        write_conf(tmp, ports, gw_port, admin)
        extra = MODES[mode]
        if extra is not None:
            conf = tmp / "gateway.toml"
            conf.write_text(f'journal = "{journal_conf(tmp, extra)}"\n' + conf.read_text())
        sim_conf = str(tmp / "issuer-sim.toml")
        procs = [
            subprocess.Popen([str(BIN / "issuer-sim"), "run", "--conf", sim_conf, "--issuer", i])
            for i in ports
        ]
        time.sleep(1.0)
        gw = subprocess.Popen([str(BIN / "gateway"), "run", "--conf", str(tmp / "gateway.toml")])
        try:
            _wait_ready(admin)
            cfg = LoadConfig(
                port=gw_port,
                connections=min(4, args.in_flight),
                in_flight=args.in_flight,
                duration=args.duration,
                warmup=1.0,
                prefixes=("5413339",),
            )
            cpu0 = cpu_seconds(gw.pid)
            stats = anyio.run(
                ClosedLoop(cfg).run, backend="asyncio", backend_options={"use_uvloop": True}
            )
            cpu1 = cpu_seconds(gw.pid)
        finally:
            for p in [gw, *procs]:
                p.terminate()
            for p in [gw, *procs]:
                p.wait(timeout=30)
        summary = stats.summary()
        total = stats.count * (1 + cfg.warmup / cfg.duration)
        result: dict[str, Any] = {
            "mode": mode,
            "tps": summary["tps"],
            "latency_ms": summary["latency_ms"],
            "gateway_cpu_us_per_txn": round((cpu1 - cpu0) / total * 1e6, 1),
            "codes": summary["response_codes"],
        }
        db = tmp / "journal.sqlite3"
        if db.exists():
            con = sqlite3.connect(db)
            events = con.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            con.close()
            result["journal_records"] = events
            result["journal_records_per_s"] = round(events / (cfg.duration + cfg.warmup))
            result["journal_records_per_txn"] = round(events / max(total, 1.0), 2)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    args = parser.parse_args()
    from kit import pki

    pki.ensure_pki(
        ROOT / "var" / "certs", ["gateway", "switch", "issuer-alpha", "issuer-beta", "issuer-gamma"]
    )
    results = []
    for mode in args.modes:
        result = run_mode(mode, args)
        results.append(result)
        print(
            f"{mode:>14}: {result['tps']:>8} TPS  p50 {result['latency_ms']['p50']} ms  "
            f"p99 {result['latency_ms']['p99']} ms  gateway "
            f"{result['gateway_cpu_us_per_txn']} us/txn  "
            f"journal {result.get('journal_records_per_s', 0)} records/s "
            f"({result.get('journal_records_per_txn', 0)}/txn)",
            flush=True,
        )
    print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
