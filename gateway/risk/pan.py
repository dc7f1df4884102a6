"""Tool: ``python -m gateway.risk.pan`` reads PANs from standard input (one a line, never from
the command line, which ends up in shell history and ``ps``) and prints their card keys for the
``blacklist_pan_hashes`` list; the key comes from ``$PAYSWITCH_RISK_PAN_KEY`` or ``--conf``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from gateway.risk.cardkey import PanError, card_key, mask_pan
from gateway.risk.config import ConfigError, load_config


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.risk.pan",
        description="Print the card key (keyed hash) of each PAN read from standard input.",
    )
    parser.add_argument("--conf", help="risk.toml whose pan_hash_key to use (else the env var)")
    args = parser.parse_args(argv)
    if args.conf:
        try:
            key = load_config(args.conf).pan_key()
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
    else:
        hex_key = os.environ.get("PAYSWITCH_RISK_PAN_KEY", "")
        try:
            key = bytes.fromhex(hex_key)
        except ValueError:
            key = b""
        if not key:
            print("set PAYSWITCH_RISK_PAN_KEY (hex) or pass --conf", file=sys.stderr)
            return 2
    status = 0
    for lineno, line in enumerate(sys.stdin, 1):
        pan = line.strip().replace(" ", "")
        if not pan:
            continue
        try:
            print(f"{card_key(pan, key)}  # {mask_pan(pan)}")
        except PanError as exc:
            print(f"line {lineno}: {exc}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
