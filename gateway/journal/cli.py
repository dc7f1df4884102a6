"""``gateway journal ...``: verify, archive, restore, settlement, reconcile, rebuild-index, saf.

Every command reads the journal config from ``--conf FILE`` (a TOML file with a ``[journal]``
table, or a bare journal document) and prints JSON on stdout.

A gateway with ``workers > 1`` on SQLite writes one file per worker node next to the configured
path (``journal-node0.sqlite3``, ...). ``--node N`` picks one; without it ``settlement`` and
``saf`` merge every node's file (totals and depths summed: the merge view), ``reconcile``
reads every node's file and ``verify`` checks each (one result per file); ``archive``,
``restore`` and ``rebuild-index`` then need ``--node``.

``reconcile --date D --issuer ID --file POSTINGS.csv`` compares the day's transactions of
the issuer with its posting file (:mod:`gateway.journal.reconcile`): counts per category and
every exception (masked PAN only). Exit status: 0 success (reconcile: every transaction
matched), 1 verification failed or reconciliation exceptions, 2 bad usage, configuration or
posting file, 3 journal error (message on stderr, never card data or keys).

``--audit-file PATH`` (default: the environment variable ``PAYSWITCH_AUDIT_FILE``, else no
file) records each command that changes or reveals the books (archive, restore,
rebuild-index, reconcile, settlement) in that hash-chained audit file (:mod:`gateway.ops.audit`,
checked by ``gateway audit verify``): the OS user, the command, its arguments (paths, dates,
issuer, node; never key material), the exit status and, for archive and restore, the counts
moved. A file that cannot be opened for appending stops the command before it runs (exit 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import orjson

from gateway.journal import SafDepth, SettlementTotal, open_journal
from gateway.journal.archive import verify_archive
from gateway.journal.config import (
    JournalConfig,
    load_config,
    node_path,
    node_paths,
    resolve_keys,
)
from gateway.journal.errors import JournalConfigError, JournalError
from gateway.journal.reconcile import DAY_MARGIN, PostingFileError, Reconciler, read_postings
from gateway.ops.audit import AuditLog, os_user

_MERGED = frozenset({"settlement", "saf", "verify", "reconcile"})
AUDITED = frozenset({"archive", "restore", "rebuild-index", "reconcile", "settlement"})
"""Commands that change or reveal the books: recorded with ``--audit-file``."""
AUDIT_ENV = "PAYSWITCH_AUDIT_FILE"
_OUTCOMES = {0: "ok", 1: "failed check", 2: "usage or configuration error", 3: "journal error"}


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--conf", required=True, type=Path, help="TOML file with [journal]")
    common.add_argument(
        "--node", type=int, default=None, help="SQLite with workers: this node's file only"
    )
    common.add_argument(
        "--audit-file",
        type=Path,
        default=None,
        help=f"hash-chained audit file for archive, restore, rebuild-index, reconcile and "
        f"settlement (default: ${AUDIT_ENV}, else none)",
    )
    parser = argparse.ArgumentParser(prog="gateway journal", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", parents=[common], help="check the tamper-evidence chain")
    verify.add_argument("--archive", type=Path, help="verify this archive file instead")
    archive = sub.add_parser("archive", parents=[common], help="move old records to a file")
    archive.add_argument(
        "--older-than-days", type=int, default=None, help="default: retention_days"
    )
    archive.add_argument("--out", required=True, type=Path, help="directory for the archive")
    restore = sub.add_parser("restore", parents=[common], help="bring an archive back")
    restore.add_argument("file", type=Path)
    settlement = sub.add_parser("settlement", parents=[common], help="totals of one day")
    which = settlement.add_mutually_exclusive_group(required=True)
    which.add_argument("--date", type=date.fromisoformat, dest="day", help="YYYY-MM-DD")
    which.add_argument(
        "--business-date",
        type=date.fromisoformat,
        dest="business_day",
        help="YYYY-MM-DD: the same as --date D --by business",
    )
    settlement.add_argument(
        "--by",
        choices=("calendar", "business"),
        default=None,
        help="calendar: transactions created on the UTC day (default); business: of that "
        "business date (the switch's cutover, [switch] in the gateway config)",
    )
    reconcile = sub.add_parser(
        "reconcile", parents=[common], help="one day of an issuer against its posting file"
    )
    reconcile.add_argument("--date", required=True, type=date.fromisoformat, dest="day")
    reconcile.add_argument("--issuer", required=True, help="issuer id")
    reconcile.add_argument(
        "--file", required=True, type=Path, help="the issuer's posting file (CSV)"
    )
    sub.add_parser("rebuild-index", parents=[common], help="rebuild the current-state index")
    sub.add_parser("saf", parents=[common], help="store-and-forward queue depth per issuer")
    return parser


def _print(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def _node_configs(config: JournalConfig, args: argparse.Namespace) -> list[JournalConfig]:
    """The journals a command runs on: the configured one, or (SQLite, workers) its nodes'."""
    if config.backend != "sqlite":
        if args.node is not None:
            raise JournalConfigError("--node applies to SQLite journals (PostgreSQL is shared)")
        return [config]
    if args.node is not None:
        path = node_path(config.path, args.node)
        if not Path(path).exists():
            raise JournalConfigError(f"no journal file for node {args.node}: {path}")
        return [dataclasses.replace(config, path=path)]
    nodes = node_paths(config.path)
    if not nodes:
        return [config]
    if args.command not in _MERGED:
        raise JournalConfigError(
            f"{len(nodes)} per-node journal files (nodes {', '.join(map(str, nodes))}): "
            "pass --node N"
        )
    paths = ([config.path] if Path(config.path).exists() else []) + list(nodes.values())
    return [dataclasses.replace(config, path=path) for path in paths]


def merge_settlement(parts: list[list[SettlementTotal]]) -> list[SettlementTotal]:
    """Totals of several journals summed per day, issuer and currency (the merge view)."""
    merged: dict[tuple[object, str, str], SettlementTotal] = {}
    for totals in parts:
        for t in totals:
            key = (t.day, t.issuer_id, t.currency)
            seen = merged.get(key)
            merged[key] = (
                t
                if seen is None
                else SettlementTotal(
                    t.day,
                    t.issuer_id,
                    t.currency,
                    seen.debit_count + t.debit_count,
                    seen.debit_amount + t.debit_amount,
                    seen.credit_count + t.credit_count,
                    seen.credit_amount + t.credit_amount,
                )
            )
    return [merged[k] for k in sorted(merged, key=lambda k: (k[1], k[2]))]


def merge_saf(parts: list[list[SafDepth]]) -> list[SafDepth]:
    """Queue depths of several journals: summed per issuer, the oldest of all."""
    merged: dict[str, SafDepth] = {}
    for depths in parts:
        for d in depths:
            seen = merged.get(d.issuer_id)
            if seen is None:
                merged[d.issuer_id] = d
                continue
            olds = [o for o in (seen.oldest_created_at, d.oldest_created_at) if o is not None]
            merged[d.issuer_id] = SafDepth(
                d.issuer_id, seen.depth + d.depth, min(olds) if olds else None
            )
    return [merged[k] for k in sorted(merged)]


async def _execute(config: JournalConfig, args: argparse.Namespace) -> int:
    if args.command == "verify" and args.archive is not None:
        keys = resolve_keys(config)
        result, _ = await anyio.to_thread.run_sync(verify_archive, args.archive, keys.chain)
        _print(result.as_dict())
        return 0 if result.ok else 1
    configs = _node_configs(config, args)
    if args.command == "reconcile":
        return await _reconcile(configs, args)
    if len(configs) == 1:
        return await _execute_one(configs[0], args)
    if args.command == "verify":
        results = []
        for one in configs:
            async with open_journal(one) as journal:
                results.append({"path": one.path, **(await journal.verify()).as_dict()})
        _print(results)
        return 0 if all(r["ok"] for r in results) else 1
    if args.command == "settlement":
        totals = []
        for one in configs:
            async with open_journal(one) as journal:
                totals.append(await journal.settlement(args.day, by=args.by))
        _print([t.as_dict() for t in merge_settlement(totals)])
        return 0
    depths = []
    for one in configs:
        async with open_journal(one) as journal:
            depths.append(await journal.saf_depths())
    _print_saf(merge_saf(depths))
    return 0


def _load_postings(args: argparse.Namespace) -> Reconciler:
    rec = Reconciler(args.day, args.issuer)
    for posting in read_postings(args.file):
        rec.add_posting(posting)
    return rec


async def _reconcile(configs: list[JournalConfig], args: argparse.Namespace) -> int:
    """The issuer's postings in memory, then every node's transactions of the day (and a
    margin around it, see :data:`DAY_MARGIN`) page by page."""
    rec = await anyio.to_thread.run_sync(_load_postings, args)
    start = datetime.combine(args.day, datetime.min.time(), tzinfo=UTC)
    since, until = start - DAY_MARGIN, start + timedelta(days=1) + DAY_MARGIN
    for one in configs:
        async with open_journal(one) as journal:
            async for page in journal.txn_pages(since, until, issuer_id=args.issuer):
                for stored in page:
                    rec.add_stored(stored)
    report = rec.finish()
    _print(report.as_dict())
    return 0 if report.ok else 1


def _print_saf(depths: list[SafDepth]) -> None:
    now = datetime.now(UTC)
    _print(
        [
            {
                "issuer_id": d.issuer_id,
                "depth": d.depth,
                "oldest_age_seconds": None
                if (age := d.oldest_age(now)) is None
                else age.total_seconds(),
            }
            for d in depths
        ]
    )


async def _execute_one(config: JournalConfig, args: argparse.Namespace) -> int:
    async with open_journal(config) as journal:
        if args.command == "verify":
            result = await journal.verify()
            _print(result.as_dict())
            return 0 if result.ok else 1
        if args.command == "archive":
            moved = await journal.archive(
                args.out, now=datetime.now(UTC), older_than_days=args.older_than_days
            )
            args.moved = moved.as_dict()
            _print(args.moved)
        elif args.command == "restore":
            args.moved = (await journal.restore(args.file)).as_dict()
            _print(args.moved)
        elif args.command == "settlement":
            totals = await journal.settlement(args.day, by=args.by)
            _print([total.as_dict() for total in totals])
        elif args.command == "rebuild-index":
            _print({"events_replayed": await journal.rebuild_index()})
        else:
            _print_saf(await journal.saf_depths())
    return 0


def _audit_fields(args: argparse.Namespace, status: int) -> dict[str, Any]:
    """The record of one command: its arguments (paths, dates, issuer; the journal's keys
    live in the --conf file and never appear here) and its exit status."""
    arguments: dict[str, Any] = {"conf": str(args.conf), "node": args.node}
    for name in ("out", "older_than_days", "file", "day", "by", "issuer"):
        value = getattr(args, name, None)
        if value is not None:
            arguments[name] = value if isinstance(value, int) else str(value)
    record: dict[str, Any] = {
        "actor": os_user(),
        "pid": os.getpid(),
        "command": f"journal {args.command}",
        "arguments": arguments,
        "exit_status": status,
        "outcome": _OUTCOMES.get(status, "error"),
    }
    moved = getattr(args, "moved", None)
    if moved is not None:
        record["moved"] = moved
    return record


def run(argv: list[str]) -> int:
    """Run one journal command; returns the exit status (see module docstring)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and on usage errors
        return exc.code if isinstance(exc.code, int) else 2
    if args.command == "settlement":
        if args.business_day is not None:
            if args.by == "calendar":
                sys.stderr.write("gateway journal: --business-date with --by calendar\n")
                return 2
            args.day, args.by = args.business_day, "business"
        args.by = args.by or "calendar"
    audit: AuditLog | None = None
    if args.command in AUDITED:
        path = args.audit_file or (Path(p) if (p := os.environ.get(AUDIT_ENV)) else None)
        if path is not None:
            audit = AuditLog(path)
            try:
                audit.check_writable()
            except OSError as exc:  # fail closed: nothing runs that could not be recorded
                sys.stderr.write(
                    f"gateway journal: audit file {path}: {exc.strerror or exc}; "
                    f"{args.command} not run\n"
                )
                return 2
    status = _run(args)
    if audit is not None:
        try:
            audit.append_sync(_audit_fields(args, status))
        except OSError as exc:  # it ran already: say so loudly, keep its exit status
            sys.stderr.write(
                f"gateway journal: ERROR audit record of {args.command} not written to "
                f"{audit.path}: {exc.strerror or exc}\n"
            )
    return status


def _run(args: argparse.Namespace) -> int:
    try:
        # One-shot commands write in this process (archive, restore and rebuild are long
        # transactions that run here), whatever writer the gateway uses.
        config = dataclasses.replace(load_config(args.conf), writer="loop")
        return anyio.run(_execute, config, args)
    except (JournalConfigError, PostingFileError) as exc:
        sys.stderr.write(f"gateway journal: {exc}\n")
        return 2
    except JournalError as exc:
        sys.stderr.write(f"gateway journal {args.command}: {exc}\n")
        return 3
    except OSError as exc:
        sys.stderr.write(f"gateway journal {args.command}: {type(exc).__name__}: {exc.strerror}\n")
        return 3
    except Exception as exc:  # database driver errors: report the kind, not a traceback
        sys.stderr.write(f"gateway journal {args.command}: {type(exc).__name__}\n")
        return 3


def main() -> None:  # pragma: no cover - thin wrapper for python -m
    raise SystemExit(run(sys.argv[1:]))


if __name__ == "__main__":  # pragma: no cover
    main()
