"""Benchmark: CA (TPK -> ZPK) or G0 (DUKPT -> ZPK) PIN translations per second through hsm_sim
with the HsmClient.

    python -m hsm_sim.bench [--command CA|G0] [--requests 20000] [--concurrency 64]
                            [--connections 2] [--backend asyncio|trio]
                            [--server subprocess|inprocess|HOST:PORT]

By default the server runs as a separate ``hsm-sim`` process on a free loopback port (as in
production: the HSM is another process), the client pipelines ``concurrency`` outstanding
requests over ``connections`` connections, and the run is bounded by ``--requests``. Prints
one line of results; only loopback addresses are ever contacted unless HOST:PORT says so.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import anyio

from gateway.hsm_client import HsmClient
from hsm_sim import terminal
from hsm_sim.config import HsmConfig
from hsm_sim.lmk import Lmk
from hsm_sim.server import HsmServer

# Demo test keys (demo.toml): terminal T0000001's TPK and issuer alpha's ZPK.
DEMO_LMK = "ECC25208B6FD2023E9767A5489BC9415"
DEMO_TPK = "6D61BA0EAED6548F1A86086208A886AB"
DEMO_ZPK = "A179FDC85E70C4FDFE015486024654A7"
DEMO_BDK = "0123456789ABCDEFFEDCBA9876543210"  # ANSI X9.24 test BDK (terminal T0000002)
INITIAL_KSN = "FFFF9876543210E00000"
PAN = "4761730000000011"


async def _drive(endpoint: str, args: argparse.Namespace) -> tuple[float, HsmClient]:
    lmk = Lmk(DEMO_LMK)
    tpk, zpk = lmk.encrypt(bytes.fromhex(DEMO_TPK)), lmk.encrypt(bytes.fromhex(DEMO_ZPK))
    bdk = lmk.encrypt(bytes.fromhex(DEMO_BDK))
    blocks = [terminal.pin_block_under_tpk(DEMO_TPK, f"{i:04d}", PAN) for i in range(100)]
    ksns, dukpt_blocks = [], []
    ksn = INITIAL_KSN
    for i in range(100):
        ksn = terminal.next_ksn(ksn)
        ksns.append(ksn)
        dukpt_blocks.append(terminal.pin_block_under_dukpt(DEMO_BDK, ksn, f"{i:04d}", PAN))
    remaining = args.requests
    async with HsmClient([endpoint], connections=args.connections, timeout=10.0) as hsm:
        await hsm.diagnostics()  # connect and warm up before the clock starts

        async def worker(offset: int) -> None:
            nonlocal remaining
            i = offset
            while remaining > 0:
                remaining -= 1
                if args.command == "G0":
                    k = i % 100
                    await hsm.translate_pin_dukpt_to_zpk(bdk, zpk, ksns[k], dukpt_blocks[k], PAN)
                else:
                    await hsm.translate_pin_tpk_to_zpk(tpk, zpk, blocks[i % 100], PAN)
                i += 1

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for w in range(args.concurrency):
                tg.start_soon(worker, w)
        return time.perf_counter() - started, hsm


async def _bench_inprocess(args: argparse.Namespace) -> tuple[float, HsmClient]:
    server = HsmServer(HsmConfig(lmk=DEMO_LMK, port=0))
    async with anyio.create_task_group() as tg:
        port = await tg.start(server.serve)
        result = await _drive(f"127.0.0.1:{port}", args)
        tg.cancel_scope.cancel()
    return result


def _report(args: argparse.Namespace, where: str, elapsed: float, hsm: HsmClient) -> None:
    stats = hsm.statistics()
    print(
        f"{args.command} translations: {args.requests} in {elapsed:.2f} s = "
        f"{args.requests / elapsed:,.0f}/s "
        f"(server {where}, client {args.backend}, {args.connections} connections, "
        f"{args.concurrency} in flight; latency p50 {stats.latency_p50_ms:.2f} ms, "
        f"p99 {stats.latency_p99_ms:.2f} ms; timeouts {stats.timeouts})",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hsm-bench", description=__doc__.splitlines()[0])
    parser.add_argument("--command", choices=("CA", "G0"), default="CA")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--server", default="subprocess", help="subprocess, inprocess or HOST:PORT")
    args = parser.parse_args(argv)
    options = {"use_uvloop": True} if args.backend == "asyncio" else {}
    if args.server == "inprocess":
        elapsed, hsm = anyio.run(
            _bench_inprocess, args, backend=args.backend, backend_options=options
        )
        _report(args, "in-process", elapsed, hsm)
        return 0
    if args.server != "subprocess":
        elapsed, hsm = anyio.run(
            _drive, args.server, args, backend=args.backend, backend_options=options
        )
        _report(args, args.server, elapsed, hsm)
        return 0
    conf = Path(__file__).resolve().parents[1] / "conf" / "demo" / "hsm.toml"
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module, fixed arguments
        [
            sys.executable,
            "-m",
            "hsm_sim.cli",
            "--log-level",
            "warning",
            "run",
            "--conf",
            str(conf),
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        if not line.startswith("hsm-sim listening on "):
            print("hsm-bench: the server did not start", file=sys.stderr)
            return 1
        endpoint = line.rsplit(" ", 1)[1].strip()
        elapsed, hsm = anyio.run(
            _drive, endpoint, args, backend=args.backend, backend_options=options
        )
        _report(args, "subprocess (uvloop)", elapsed, hsm)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
