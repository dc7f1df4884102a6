"""``hsm-sim``: run the HSM simulator, or print the demo keys in LMK form.

    hsm-sim run --conf conf/demo/hsm.toml [--host H] [--port P] [--backend asyncio|trio]
    hsm-sim encrypt-key --lmk <32 hex> <clear key 32 hex>    # prints U + 32 hex and the KCV

``run`` prints one line ``hsm-sim listening on HOST:PORT`` on stdout when ready (logs go to
stderr), and stops cleanly on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any, TextIO, cast

import anyio
import anyio.abc
import structlog

from hsm_sim.config import HsmConfig, HsmConfigError, load_config
from hsm_sim.errors import HsmCryptoError
from hsm_sim.keyblock import VERSION_AES, Attributes, LmkBlocks, check_value
from hsm_sim.lmk import Lmk, kcv_hex, parse_clear_key
from hsm_sim.server import HsmServer

log = structlog.get_logger("hsm_sim.cli")


class _Stderr:
    """``sys.stderr`` looked up at every write (loggers are cached on first use)."""

    def write(self, text: str) -> None:
        sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _configure_logging(level: str) -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(cast(TextIO, _Stderr())),
        cache_logger_on_first_use=True,
    )


async def _watch_signals(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("hsm.stopping", signal=signal.Signals(signum).name)
            scope.cancel()
            return


async def run_server(config: HsmConfig) -> None:
    """Serve until SIGINT/SIGTERM."""
    server = HsmServer(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_watch_signals, tg.cancel_scope)
        port = await tg.start(server.serve)
        print(f"hsm-sim listening on {config.host}:{port}", flush=True)
    stats = server.statistics()
    log.info("hsm.stopped", connections=stats.connections_total, frames=stats.frames)


def _run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.conf) if args.conf else HsmConfig()
        overrides: dict[str, Any] = {
            k: v
            for k, v in (("host", args.host), ("port", args.port), ("backend", args.backend))
            if v is not None
        }
        if args.lmk_env:
            overrides.update(lmk="", lmk_env=args.lmk_env)
        config = dataclasses.replace(config, **overrides)
        config.load_lmk()  # fail early, before binding
    except HsmConfigError as exc:
        print(f"hsm-sim: {exc}", file=sys.stderr)
        return 2
    backend_options = {"use_uvloop": True} if config.backend == "asyncio" and _has_uvloop() else {}
    try:
        anyio.run(run_server, config, backend=config.backend, backend_options=backend_options)
    except HsmConfigError as exc:
        print(f"hsm-sim: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"hsm-sim: cannot listen: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def _encrypt_key(args: argparse.Namespace) -> int:
    try:
        clear = parse_clear_key(args.key)
        lmk = Lmk(args.lmk)
        if args.block is None:
            print(lmk.encrypt(clear), kcv_hex(clear))
            return 0
        usage, mode, algorithm, export = [*args.block.upper().split(":"), "", "", "", ""][:4]
        attributes = Attributes(usage, algorithm or "T", mode or "B", "00", export or "N")
        attributes.header(VERSION_AES)  # a malformed field is refused before anything is made
        print(LmkBlocks(lmk).wrap(attributes, clear), check_value(attributes.algorithm, clear))
    except HsmCryptoError as exc:
        print(f"hsm-sim: {exc.reason}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hsm-sim", description="payShield-style HSM simulator")
    parser.add_argument("--log-level", default="info")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve host commands")
    run.add_argument("--conf", help="TOML configuration (conf/demo/hsm.toml)")
    run.add_argument("--host")
    run.add_argument("--port", type=int)
    run.add_argument("--backend", choices=("asyncio", "trio"))
    run.add_argument("--lmk-env", help="environment variable holding the LMK (32 hex)")
    enc = sub.add_parser("encrypt-key", help="print a clear test key under the LMK, and its KCV")
    enc.add_argument("--lmk", required=True, help="the LMK, 32 hex (test LMKs only)")
    enc.add_argument("key", help="clear key, 32 hex")
    enc.add_argument(
        "--block",
        metavar="USAGE[:MODE[:ALGORITHM[:EXPORT]]]",
        help="as S + a TR-31 key block (version D) with this header, e.g. P0:B, M3:C, K0:B,"
        " B0:X:A (defaults: mode B, algorithm T, not exportable)",
    )
    args = parser.parse_args(argv)
    _configure_logging(args.log_level)
    if args.command == "run":
        return _run(args)
    return _encrypt_key(args)


if __name__ == "__main__":
    sys.exit(main())
