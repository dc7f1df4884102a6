"""Card keys: the risk engine never sees or stores a clear PAN.

A card key is HMAC-SHA256(key, PAN digits) in lowercase hex. It identifies the card in counters
and in the PAN blacklist; without the key it cannot be reversed by enumerating the PAN space.

The operator's tool that prints card keys is :mod:`gateway.risk.pan`.
"""

from __future__ import annotations

import hashlib
import hmac
import re

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
