"""Benchmark: HSM commands per second through hsm_sim with the HsmClient, and the CPU each
side spends per command: CA (TPK -> ZPK) or G0 (DUKPT -> ZPK) PIN translations, M6/M8 MACs
of a 180-byte message (the issuer-link MAC), A0 key generation with export under a ZMK (what a
link's key change costs), with the keys in the variant form (``U`` + 32H) or as TR-31 key
blocks (``S`` + block, header checked on every command), or both one after the other.

    python -m benchmarks.hsm [--command CA|G0|M6|M8|A0] [--requests 20000] [--concurrency 64]
                            [--connections 2] [--backend asyncio|trio] [--repeat 1]
                            [--keys variant|block|both]
                            [--server subprocess|inprocess|core|HOST:PORT]

By default the server runs as a separate ``hsm-sim`` process on a free loopback port (as in
production: the HSM is another process), the client pipelines ``concurrency`` outstanding
requests over ``connections`` connections, and each run is bounded by ``--requests``. Prints
one line per run: rate, latency, the client's CPU per command (this process, ``process_time``;
with ``--server inprocess`` it includes the server) and the server's (a subprocess, from
/proc). ``--concurrency 1`` is the unbatched case (one write and one read per command).
Only loopback addresses are ever contacted unless HOST:PORT says so. ``--server core`` runs no
server at all: each command payload straight through ``HsmCore.process`` (decode, keys,
crypto, encode), timed in process CPU, which a busy shared machine disturbs least; the fairest
comparison of the two key forms.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio

from gateway.upstream.hsm_client import HsmClient
from hsm_sim import terminal
from hsm_sim.config import HsmConfig
from hsm_sim.core import HsmCore
from hsm_sim.keyblock import Attributes, LmkBlocks
from hsm_sim.lmk import Lmk
from hsm_sim.server import HsmServer
from protocols import hsm as proto

# Demo test keys (demo.toml): terminal T0000001's TPK and issuer alpha's ZPK.
DEMO_LMK = "ECC25208B6FD2023E9767A5489BC9415"
DEMO_TPK = "6D61BA0EAED6548F1A86086208A886AB"
DEMO_ZPK = "A179FDC85E70C4FDFE015486024654A7"
DEMO_BDK = "0123456789ABCDEFFEDCBA9876543210"  # ANSI X9.24 test BDK (terminal T0000002)
INITIAL_KSN = "FFFF9876543210E00000"
PAN = "4761730000000011"
MESSAGE = bytes(range(180))  # about an issuer request's size
DEMO_ZMK = "C1D0F8FB4958670DBA40AB1F3752EF0D"
KINDS = {
    "CA": "translations",
    "G0": "translations",
    "M6": "MACs",
    "M8": "MAC checks",
    "A0": "keys generated and exported",
}


@dataclass(frozen=True, slots=True)
class Run:
    keys: str
    elapsed: float
    client_cpu: float
    server_cpu: float | None
    p50_ms: float
    p99_ms: float
    timeouts: int


def _proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _keys(form: str) -> tuple[str, str, str, str, str]:
    """(TPK, ZPK, BDK, ZAK, ZMK) under the demo LMK in the variant or key-block form; the ZAK
    has the ZPK's value (the variant form does not tell them apart; a key block must)."""
    lmk = Lmk(DEMO_LMK)
    if form == "variant":
        tpk, zpk = lmk.encrypt(bytes.fromhex(DEMO_TPK)), lmk.encrypt(bytes.fromhex(DEMO_ZPK))
        bdk, zmk = lmk.encrypt(bytes.fromhex(DEMO_BDK)), lmk.encrypt(bytes.fromhex(DEMO_ZMK))
        return tpk, zpk, bdk, zpk, zmk
    blocks = LmkBlocks(lmk)
    return (
        blocks.wrap(Attributes("P0", mode="D"), bytes.fromhex(DEMO_TPK)),
        blocks.wrap(Attributes("P0", mode="E"), bytes.fromhex(DEMO_ZPK)),
        blocks.wrap(Attributes("B0", mode="X"), bytes.fromhex(DEMO_BDK)),
        blocks.wrap(Attributes("M3", mode="C"), bytes.fromhex(DEMO_ZPK)),
        blocks.wrap(Attributes("K0", mode="B"), bytes.fromhex(DEMO_ZMK)),
    )


async def _drive(endpoint: str, args: argparse.Namespace, server_pid: int | None) -> list[Run]:
    forms = ("variant", "block") if args.keys == "both" else (args.keys,)
    runs: list[Run] = []
    async with HsmClient([endpoint], connections=args.connections, timeout=10.0) as hsm:
        await hsm.diagnostics()  # connect and warm up before the clock starts
        for form in forms:
            runs += await _measure(hsm, form, args, server_pid)
    return runs


async def _measure(
    hsm: HsmClient, form: str, args: argparse.Namespace, server_pid: int | None
) -> list[Run]:
    tpk, zpk, bdk, zak, zmk = _keys(form)
    blocks = [terminal.pin_block_under_tpk(DEMO_TPK, f"{i:04d}", PAN) for i in range(100)]
    ksns, dukpt_blocks = [], []
    ksn = INITIAL_KSN
    for i in range(100):
        ksn = terminal.next_ksn(ksn)
        ksns.append(ksn)
        dukpt_blocks.append(terminal.pin_block_under_dukpt(DEMO_BDK, ksn, f"{i:04d}", PAN))
    mac = terminal.retail_mac(DEMO_ZPK, MESSAGE)
    runs: list[Run] = []
    for _ in range(args.repeat):
        remaining = args.requests
        timeouts = hsm.statistics().timeouts

        async def worker(offset: int) -> None:
            nonlocal remaining
            i = offset
            while remaining > 0:
                remaining -= 1
                if args.command == "G0":
                    k = i % 100
                    await hsm.translate_pin_dukpt_to_zpk(bdk, zpk, ksns[k], dukpt_blocks[k], PAN)
                elif args.command == "M6":
                    await hsm.generate_mac(zak, MESSAGE)
                elif args.command == "M8":
                    await hsm.verify_mac(zak, MESSAGE, mac)
                elif args.command == "A0" and form == "block":
                    await hsm.generate_key_block("P0", zmk=zmk)
                elif args.command == "A0":
                    await hsm.request(proto.GenerateKey("001", "1", "U", zmk, "X"))
                else:
                    await hsm.translate_pin_tpk_to_zpk(tpk, zpk, blocks[i % 100], PAN)
                i += 1

        server_before = None if server_pid is None else _proc_cpu(server_pid)
        cpu_before, started = time.process_time(), time.perf_counter()
        async with anyio.create_task_group() as tg:
            for w in range(args.concurrency):
                tg.start_soon(worker, w)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_before
        server = None if server_pid is None else _proc_cpu(server_pid) - (server_before or 0)
        stats = hsm.statistics()
        runs.append(
            Run(
                form,
                elapsed,
                cpu,
                server,
                stats.latency_p50_ms,
                stats.latency_p99_ms,
                stats.timeouts - timeouts,
            )
        )
    return runs


async def _bench_inprocess(args: argparse.Namespace) -> list[Run]:
    server = HsmServer(HsmConfig(lmk=DEMO_LMK, port=0))
    async with anyio.create_task_group() as tg:
        port = await tg.start(server.serve)
        result = await _drive(f"127.0.0.1:{port}", args, None)
        tg.cancel_scope.cancel()
    return result


def _report(args: argparse.Namespace, where: str, runs: list[Run]) -> None:
    n = args.requests
    for run in runs:
        server = "" if run.server_cpu is None else f", server {run.server_cpu / n * 1e6:.1f}"
        print(
            f"{args.command} {KINDS[args.command]}, {run.keys} keys: {n} in {run.elapsed:.2f} s = "
            f"{n / run.elapsed:,.0f}/s; CPU us/command: client {run.client_cpu / n * 1e6:.1f}"
            f"{server} (server {where}, client {args.backend}, {args.connections} connections, "
            f"{args.concurrency} in flight; latency p50 {run.p50_ms:.2f} ms, "
            f"p99 {run.p99_ms:.2f} ms; timeouts {run.timeouts})",
            flush=True,
        )


def _core_requests(form: str, command: str) -> list[proto.Request]:
    """100 requests of ``command`` with the keys of ``form`` (as _measure sends them)."""
    tpk, zpk, bdk, zak, zmk = _keys(form)
    out: list[proto.Request] = []
    ksn = INITIAL_KSN
    mac = terminal.retail_mac(DEMO_ZPK, MESSAGE).hex().upper()
    for i in range(100):
        pin = f"{i:04d}"
        if command == "G0":
            ksn = terminal.next_ksn(ksn)
            block = terminal.pin_block_under_dukpt(DEMO_BDK, ksn, pin, PAN).hex().upper()
            out.append(proto.TranslatePinDukptToZpk(bdk, zpk, ksn, block, PAN))
        elif command == "M6":
            out.append(proto.GenerateMac(zak, MESSAGE))
        elif command == "M8":
            out.append(proto.VerifyMac(zak, MESSAGE, mac))
        elif command == "A0" and form == "block":
            out.append(proto.GenerateKey("FFF", "1", "S", zmk, "S", "P0", "T", "B", "00", "E"))
        elif command == "A0":
            out.append(proto.GenerateKey("001", "1", "U", zmk, "X"))
        else:
            block = terminal.pin_block_under_tpk(DEMO_TPK, pin, PAN).hex().upper()
            out.append(proto.TranslatePinTpkToZpk(tpk, zpk, block, PAN))
    return out


def _bench_core(args: argparse.Namespace) -> None:
    """Commands through HsmCore.process only; best of ``--repeat`` (at least 3) runs."""
    core = HsmCore(DEMO_LMK)
    forms = ("variant", "block") if args.keys == "both" else (args.keys,)
    for form in forms:
        payloads = [
            proto.encode_request(f"{i:04d}", r)
            for i, r in enumerate(_core_requests(form, args.command))
        ]
        for payload in payloads:  # warm the caches (a busy HSM's steady state)
            if proto.decode_response(core.process(payload)).error_code != proto.OK:
                raise SystemExit(f"hsm-bench: {args.command} refused with {form} keys")
        best = float("inf")
        for _ in range(max(args.repeat, 3)):
            started = time.process_time()
            for i in range(args.requests):
                core.process(payloads[i % 100])
            best = min(best, (time.process_time() - started) / args.requests)
        print(
            f"{args.command} {KINDS[args.command]}, {form} keys: {best * 1e6:.1f} us of CPU per"
            f" command in HsmCore.process (= {1 / best:,.0f}/s on one core; best of"
            f" {max(args.repeat, 3)} x {args.requests})",
            flush=True,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hsm-bench", description=__doc__.splitlines()[0])
    parser.add_argument("--command", choices=tuple(KINDS), default="CA")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--repeat", type=int, default=1, help="measured runs on one client")
    parser.add_argument(
        "--keys",
        choices=("variant", "block", "both"),
        default="variant",
        help="keys as U + 32H (variant), as S + TR-31 key block, or both one after the other",
    )
    parser.add_argument(
        "--server", default="subprocess", help="subprocess, inprocess, core or HOST:PORT"
    )
    args = parser.parse_args(argv)
    if args.server == "core":
        _bench_core(args)
        return 0
    options = {"use_uvloop": True} if args.backend == "asyncio" else {}
    if args.server == "inprocess":
        runs = anyio.run(_bench_inprocess, args, backend=args.backend, backend_options=options)
        _report(args, "in-process", runs)
        return 0
    if args.server != "subprocess":
        runs = anyio.run(
            _drive, args.server, args, None, backend=args.backend, backend_options=options
        )
        _report(args, args.server, runs)
        return 0
    conf = Path(__file__).resolve().parents[1] / "conf" / "demo" / "hsm.toml"
    proc = subprocess.Popen(
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
        runs = anyio.run(
            _drive, endpoint, args, proc.pid, backend=args.backend, backend_options=options
        )
        _report(args, "subprocess (uvloop)", runs)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
