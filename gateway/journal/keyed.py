"""HMAC-SHA256 under a fixed key, set up once (RFC 2104).

``hmac.digest`` builds an OpenSSL HMAC context per call (with OpenSSL 3 that includes fetching
the algorithm); the journal computes one per PAN hash and one per chained record. Here the
padded key blocks are hashed once and each MAC copies the two SHA-256 states: the same bytes
as :func:`hmac.digest` (checked against it in the tests), less than half the time.
"""

from __future__ import annotations

import hashlib

_BLOCK = 64  # SHA-256 block size
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


class HmacSha256:
    """HMAC-SHA256 with one key (key material: never log it)."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        block = bytes(key).ljust(_BLOCK, b"\x00")
        self._inner = hashlib.sha256(block.translate(_IPAD))
        self._outer = hashlib.sha256(block.translate(_OPAD))

    def __repr__(self) -> str:
        return "HmacSha256(<key>)"

    def digest(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()
