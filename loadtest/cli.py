"""``loadtest``: the high-rate generator against a running gateway, and the benchmark.

    loadtest --rate 2000 --duration 30 --mix mixed --json var/run.json      # open loop
    loadtest --in-flight 64 --connections 4 --duration 30 --mix plain       # closed loop
    loadtest bench --scenario plain --duration 10                           # see loadtest.bench
    loadtest soak --minutes 60 --markdown var/soak.md                       # see loadtest.soak
    loadtest fuzz-live --stack --batches 5 --count 200                      # loadtest.fuzz_live

A progress line is printed on stderr every second; the report (TPS, p50/p90/p99/p99.9,
response codes per kind, errors, mix items left out and why) on stdout; ``--json`` writes the
same figures to a file. Exit status: 0 when every request got an answer, 1 when some got none
(errors), 2 when the run could not start.
"""

from __future__ import annotations

import argparse
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio
import orjson

from kit.runtime import tune_gc
from loadtest.generator import GeneratorError, LoadConfig
from loadtest.mix import KINDS, SCENARIOS, MixError
from loadtest.runs import backend_args, run_generator
from loadtest.stats import format_report


def add_target_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8583, help="gateway terminal port")
    parser.add_argument("--tls-ca", type=Path, default=None, help="use TLS, trusting this CA")
    parser.add_argument(
        "--qr-url", default="http://127.0.0.1:8080", help="QR acquirer API ('' for none)"
    )
    parser.add_argument("--data", type=Path, default=None, help="dataset (conf/demo/data.toml)")


def add_load_options(parser: argparse.ArgumentParser) -> None:
    loop = parser.add_mutually_exclusive_group()
    loop.add_argument(
        "--rate", type=float, default=0.0, help="open loop: arrivals per second (fixed schedule)"
    )
    loop.add_argument(
        "--in-flight", type=int, default=16, help="closed loop: requests outstanding (default)"
    )
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument(
        "--mix",
        default="plain",
        help=f"scenario ({', '.join(SCENARIOS)}) or weights, e.g. magstripe=6,pin_tpk=2,"
        f"reversal=1; kinds: {', '.join(KINDS)}",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="per request, seconds")
    parser.add_argument("--max-in-flight", type=int, default=20_000, help="open-loop cap")
    parser.add_argument("--amount", type=int, default=100, help="minor units (min)")
    parser.add_argument("--amount-max", type=int, default=5000, help="minor units (max)")
    parser.add_argument(
        "--prefix", action="append", default=[], help="synthetic range(s) to use (default: all)"
    )
    parser.add_argument(
        "--qr-verification",
        default="",
        help="qr: payer_verification factors, comma-separated (e.g. password,biometric: the "
        "two-factor tier); default: none stated",
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--backend",
        choices=("uvloop", "asyncio", "trio"),
        default="uvloop",
        help="event loop of the generator",
    )


def config_from_args(args: argparse.Namespace, *, port: int | None = None) -> LoadConfig:
    tls = None
    if args.tls_ca is not None:
        tls = ssl.create_default_context(cafile=str(args.tls_ca))
    return LoadConfig(
        host=args.host,
        port=port or args.port,
        connections=args.connections,
        in_flight=args.in_flight,
        rate=args.rate,
        duration=args.duration,
        warmup=args.warmup,
        mix=args.mix,
        prefixes=tuple(args.prefix),
        amount=args.amount,
        amount_max=args.amount_max,
        qr_verification=tuple(f for f in args.qr_verification.split(",") if f),
        timeout=args.timeout,
        max_in_flight=args.max_in_flight,
        tls=tls,
        qr_url=args.qr_url,
        data=args.data,
        seed=args.seed,
    )


def _run(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="loadtest", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_target_options(parser)
    add_load_options(parser)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        backend, options = backend_args(args.backend)
        summary = anyio.run(
            lambda: run_generator(cfg, progress=not args.quiet),
            backend=backend,
            backend_options=options,
        )
    except (GeneratorError, MixError, OSError) as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    print(format_report(summary))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    return 1 if summary["error_count"] else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    # The generator measures latency: keep GC pauses out of it, as the gateway does.
    tune_gc((50_000, 50, 1_000))
    if args[:1] == ["bench"]:
        from loadtest.bench import main as bench_main

        return bench_main(args[1:])
    if args[:1] == ["fuzz-live"]:
        from loadtest.fuzz_live import main as fuzz_live_main

        return fuzz_live_main(args[1:])
    if args[:1] == ["soak"]:
        from loadtest.soak import main as soak_main

        return soak_main(args[1:])
    if args[:1] == ["run"]:
        args = args[1:]
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
