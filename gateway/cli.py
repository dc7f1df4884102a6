"""``gateway`` command: run, check-config, certs, init-conf, demo, journal, audit."""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
from pathlib import Path

import anyio

from gateway.config import load_gateway_config
from kit import pki
from kit.conf import ConfigError
from kit.dataset import load_dataset
from kit.logs import configure
from kit.runtime import default_backend, tune_gc


def _cmd_run(args: argparse.Namespace) -> int:
    from gateway.app import Gateway

    cfg, base = load_gateway_config(args.conf)
    configure(cfg.log.level)
    if args.worker is None and cfg.workers > 1:
        from gateway.edge.workers import supervise

        anyio.run(supervise, args.conf, cfg.workers, args.backend)
        return 0
    if args.worker is not None:
        from gateway.edge.workers import worker_config

        cfg = worker_config(cfg, args.worker)
    gateway = Gateway(cfg, base, worker=args.worker or 0)
    tune_gc(cfg.gc_threshold)

    async def reload_on_sighup() -> None:
        with anyio.open_signal_receiver(signal.SIGHUP) as signals:
            async for _ in signals:
                await gateway.reload_risk_on_signal("SIGHUP")  # audited

    async def stop_on_signal() -> None:
        # SIGTERM/SIGINT: graceful (drain, sign off, flush the journal); a second one: now.
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
            async with anyio.create_task_group() as stopping:
                stopping.start_soon(gateway.shutdown)
                async for _ in signals:
                    stopping.cancel_scope.cancel()
                    break
            gateway.abort()

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(reload_on_sighup)
            tg.start_soon(stop_on_signal)
            await gateway.run()
            tg.cancel_scope.cancel()

    backend = args.backend or default_backend()
    if backend == "uvloop":
        anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True})
    else:
        anyio.run(main, backend=backend)
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    cfg, base = load_gateway_config(args.conf)
    data = load_dataset(base / cfg.data)
    issuers = {i.id for i in data.issuers}
    missing = [link.issuer for link in cfg.links if link.issuer not in issuers]
    if missing:
        raise ConfigError(f"{args.conf}: links name issuers not in the dataset: {missing}")
    # Every file the gateway reads at start is validated here, without side effects.
    from gateway.flow.standin import check_limit_currency
    from gateway.journal import JournalConfigError
    from gateway.journal import load_config as load_journal_config
    from gateway.risk import RiskConfig
    from gateway.risk import load_config as load_risk_config
    from kit.keys import load_keys

    dialects = ", ".join(f"{link.issuer} {link.dialect}" for link in cfg.links)
    parts = [
        f"{len(cfg.links)} issuer links" + (f" ({dialects})" if dialects else ""),
        f"{len(data.terminals)} terminals",
    ]
    load_keys(data)
    risk: RiskConfig | None = None
    if cfg.risk:
        risk = load_risk_config(base / cfg.risk)
        parts.append(f"risk on {risk.backend}")
    if cfg.journal:
        try:
            journal = load_journal_config(base / cfg.journal)
        except JournalConfigError as exc:
            raise ConfigError(str(exc)) from None
        check_limit_currency(cfg.standin, risk)  # stand-in runs with the journal
        parts.append(f"journal on {journal.backend}")
        if cfg.workers > 1 and journal.backend == "sqlite" and not cfg.card_affinity:
            print(
                f"{args.conf}: warning: {cfg.workers} workers with SQLite keep one journal per "
                "worker: duplicates and stand-in counts are per worker "
                "(use card_affinity or PostgreSQL)",
                file=sys.stderr,
            )
    if cfg.workers > 1 and risk is not None and risk.backend == "memory" and not cfg.card_affinity:
        print(
            f"{args.conf}: warning: {cfg.workers} workers with in-memory risk counters: "
            "limits are per worker (use card_affinity or the Redis backend)",
            file=sys.stderr,
        )
    print(f"{args.conf}: ok ({', '.join(parts)})")
    return 0


def _cmd_certs(args: argparse.Namespace) -> int:
    from gateway.app import Gateway

    cfg, base = load_gateway_config(args.conf)
    names = [*Gateway.certificate_names(cfg), *(f"issuer-{lk.issuer}" for lk in cfg.links)]
    out = pki.ensure_pki((base / cfg.pki_dir).resolve(), names)
    print(f"certificates in {out}")
    return 0


def _cmd_init_conf(args: argparse.Namespace) -> int:
    """Copy the packaged conf templates (demo and scale-out profiles) into ``DIR/conf``: the
    layout of a checkout, so their relative paths (``../../var/certs``) land in ``DIR/var``."""
    from importlib.resources import as_file, files

    target: Path = args.dir / "conf"
    with as_file(files("gateway") / "conf_templates") as templates:
        copies = [
            (source, target / source.relative_to(templates))
            for source in sorted(templates.glob("*/*"))
            if source.is_file()
        ]
        existing = [str(dest) for _, dest in copies if dest.exists()]
        if existing:
            raise ConfigError(f"not overwriting {', '.join(existing)}")
        for source, dest in copies:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)
    print(f"{len(copies)} files in {target}: edit them, then gateway check-config --conf ...")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    async def main() -> int:
        return await run_demo(args.conf)

    return anyio.run(main)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["journal"]:
        from gateway.journal.cli import run as journal_run

        code: int = journal_run(argv[1:])
        return code
    if argv[:1] == ["audit"]:
        from gateway.ops.audit import run as audit_run

        return audit_run(argv[1:])
    parser = argparse.ArgumentParser(prog="gateway", description="payswitch gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    conf = Path("conf/demo/gateway.toml")
    p = sub.add_parser("run", help="run the gateway in the foreground")
    p.add_argument("--conf", type=Path, default=conf)
    p.add_argument("--backend", choices=["asyncio", "uvloop", "trio"], default=None)
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_run)
    p = sub.add_parser("check-config", help="validate the configuration and exit")
    p.add_argument("--conf", type=Path, default=conf)
    p.set_defaults(func=_cmd_check)
    p = sub.add_parser("certs", help="generate the demo CA and certificates")
    p.add_argument("--conf", type=Path, default=conf)
    p.set_defaults(func=_cmd_certs)
    p = sub.add_parser("init-conf", help="write the conf templates into DIR/conf")
    p.add_argument("dir", type=Path, metavar="DIR")
    p.set_defaults(func=_cmd_init_conf)
    p = sub.add_parser("demo", help="run the whole demo stack in the foreground")
    p.add_argument("--conf", type=Path, default=Path("conf/demo"))
    p.set_defaults(func=_cmd_demo)
    sub.add_parser("journal", help="journal tools: verify, archive, restore, settlement")
    sub.add_parser("audit", help="admin audit log tools: verify FILE (hash chain)")
    args = parser.parse_args(argv)
    from gateway.risk import ConfigError as RiskConfigError

    try:
        result: int = args.func(args)
    except (ConfigError, RiskConfigError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    return result
