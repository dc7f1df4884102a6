"""``gateway journal ...``: verify, archive, restore, settlement, rebuild-index, saf.

Every command reads the journal config from ``--conf FILE`` (a TOML file with a ``[journal]``
table, or a bare journal document) and prints JSON on stdout. Exit status: 0 success,
1 verification failed, 2 bad usage or configuration, 3 journal error (message on stderr,
never card data or keys).
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import anyio
import orjson

from gateway.journal import open_journal
from gateway.journal.archive import verify_archive
from gateway.journal.config import JournalConfig, load_config, resolve_keys
from gateway.journal.errors import JournalConfigError, JournalError


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--conf", required=True, type=Path, help="TOML file with [journal]")
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
    settlement.add_argument("--date", required=True, type=date.fromisoformat, dest="day")
    sub.add_parser("rebuild-index", parents=[common], help="rebuild the current-state index")
    sub.add_parser("saf", parents=[common], help="store-and-forward queue depth per issuer")
    return parser


def _print(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


async def _execute(config: JournalConfig, args: argparse.Namespace) -> int:
    if args.command == "verify" and args.archive is not None:
        keys = resolve_keys(config)
        result, _ = await anyio.to_thread.run_sync(verify_archive, args.archive, keys.chain)
        _print(result.as_dict())
        return 0 if result.ok else 1
    async with open_journal(config) as journal:
        if args.command == "verify":
            result = await journal.verify()
            _print(result.as_dict())
            return 0 if result.ok else 1
        if args.command == "archive":
            moved = await journal.archive(
                args.out, now=datetime.now(UTC), older_than_days=args.older_than_days
            )
            _print(moved.as_dict())
        elif args.command == "restore":
            _print((await journal.restore(args.file)).as_dict())
        elif args.command == "settlement":
            _print([total.as_dict() for total in await journal.settlement(args.day)])
        elif args.command == "rebuild-index":
            _print({"events_replayed": await journal.rebuild_index()})
        else:
            now = datetime.now(UTC)
            depths = await journal.saf_depths()
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
    return 0


def run(argv: list[str]) -> int:
    """Run one journal command; returns the exit status (see module docstring)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and on usage errors
        return exc.code if isinstance(exc.code, int) else 2
    try:
        config = load_config(args.conf)
        return anyio.run(_execute, config, args)
    except JournalConfigError as exc:
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
