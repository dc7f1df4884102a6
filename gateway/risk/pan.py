"""Card keys: the risk engine never sees or stores a clear PAN.

A card key is HMAC-SHA256(key, PAN digits) in lowercase hex. It identifies the card in counters
and in the PAN blacklist; without the key it cannot be reversed by enumerating the PAN space.

Tool: ``python -m gateway.risk.pan`` reads PANs from standard input (one a line, never from the
command line, which ends up in shell history and ``ps``) and prints their card keys for the
``blacklist_pan_hashes`` list; the key comes from ``$PAYSWITCH_RISK_PAN_KEY`` or ``--conf``.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import re
import sys
from collections.abc import Sequence

from protocols.redact import mask_pan as mask_pan  # re-exported: the one masking rule


class PanError(ValueError):
    """A value that is not a PAN (the message never repeats the value)."""


def card_key(pan: str, key: bytes) -> str:
    """Keyed hash of a PAN, the card's identity in the risk engine."""
    if not pan.isdigit() or not 12 <= len(pan) <= 19:
        raise PanError("PAN must be 12-19 digits")
    if len(key) < 16:
        raise PanError("card key HMAC key must be at least 16 bytes")
    return hmac.digest(key, pan.encode("ascii"), "sha256").hex()  # one-shot, in C


_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
_BLOCK = 64  # SHA-256 block size


class CardKeyer:
    """:func:`card_key` under one key, with the HMAC key schedule done once.

    HMAC(k, m) = H((k ^ opad) || H((k ^ ipad) || m)): the two padded-key blocks are hashed here
    and each call copies those states, so a card key costs two short hashes instead of four.
    Same digest as :func:`card_key` (a test checks).
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise PanError("card key HMAC key must be at least 16 bytes")
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        block = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(block.translate(_IPAD))
        self._outer = hashlib.sha256(block.translate(_OPAD))

    def __call__(self, pan: str) -> str:
        if not pan.isdigit() or not 12 <= len(pan) <= 19:
            raise PanError("PAN must be 12-19 digits")
        inner = self._inner.copy()
        inner.update(pan.encode("ascii"))
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()


_ASCII_RUN = re.compile(r"[0-9]{12}")


def looks_clear(value: str) -> bool:
    """True when ``value`` holds a run of 12+ digits: a clear PAN where only a mask belongs."""
    if value.isascii():  # for ASCII, str.isdigit is exactly 0-9: one regex search in C
        return _ASCII_RUN.search(value) is not None
    run = 0
    for ch in value:
        run = run + 1 if ch.isdigit() else 0
        if run >= 12:
            return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.risk.pan",
        description="Print the card key (keyed hash) of each PAN read from standard input.",
    )
    parser.add_argument("--conf", help="risk.toml whose pan_hash_key to use (else the env var)")
    args = parser.parse_args(argv)
    if args.conf:
        from gateway.risk.config import ConfigError, load_config

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
