"""Data protection at rest: AES-256-GCM with key ids, keyed PAN hash, masking.

Ciphertext blob layout (version 1)::

    0x01 | len(key_id) (1 byte) | key_id (ASCII) | nonce (12 bytes) | ciphertext || tag (16)

The key id travels with every ciphertext, so keys rotate by adding a new key, making it the
active one (new writes), and keeping the old ones configured for reading. The associated data
binds a ciphertext to its place (purpose and transaction id): a blob copied into another row
or column fails authentication instead of decrypting to someone else's data.

The PAN lookup hash is HMAC-SHA256 under a separate lookup key; it is not rotatable without
rehashing the index (``rebuild_index`` after changing it), which is why it has its own key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.journal.errors import JournalConfigError, JournalError
from gateway.journal.keyed import HmacSha256
from gateway.journal.sensitive import check_pan
from protocols import redact

_VERSION = 1
_NONCE = 12


class DecryptionError(JournalError):
    """A stored ciphertext has an unknown key id, a bad format, or fails authentication."""


class DataProtector:
    """Encrypts payloads and PANs, hashes PANs for lookups. Holds key material: never log it."""

    __slots__ = ("_active", "_active_id", "_aead", "_header", "_lookup", "_material")

    def __init__(self, keys: Mapping[str, bytes], active_key_id: str, lookup_key: bytes) -> None:
        if active_key_id not in keys:
            raise JournalConfigError(f"active key id {active_key_id!r} is not configured")
        aead: dict[str, AESGCM] = {}
        for key_id, key in keys.items():
            if not key_id or len(key_id) > 32 or not key_id.isascii() or not key_id.isprintable():
                raise JournalConfigError("key ids must be 1-32 printable ASCII chars")
            if len(key) != 32:
                raise JournalConfigError(f"key {key_id!r} must be 32 bytes (AES-256)")
            aead[key_id] = AESGCM(key)
        if len(lookup_key) < 32:
            raise JournalConfigError("the lookup key must be at least 32 bytes")
        self._aead = aead
        self._active_id = active_key_id
        # Fixed per active key: the blob header and the cipher object (built once, not per call).
        active_id = active_key_id.encode("ascii")
        self._header = bytes([_VERSION, len(active_id)]) + active_id
        self._active = aead[active_key_id]
        self._lookup = HmacSha256(lookup_key)
        self._material = (dict(keys), active_key_id, bytes(lookup_key))

    def __reduce__(self) -> tuple[type[DataProtector], tuple[dict[str, bytes], str, bytes]]:
        # Pickled only down the pipe to the gateway's own journal writer process, which
        # prepares (encrypts) the records there, off the event loop.
        return (DataProtector, self._material)

    def __repr__(self) -> str:
        return f"DataProtector(key_ids={sorted(self._aead)}, active={self._active_id!r})"

    @property
    def active_key_id(self) -> str:
        return self._active_id

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return self._header + nonce + self._active.encrypt(nonce, plaintext, aad)

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        if len(blob) < 2 or blob[0] != _VERSION:
            raise DecryptionError("unknown ciphertext format")
        end = 2 + blob[1]
        key_id = blob[2:end].decode("ascii", errors="replace")
        aead = self._aead.get(key_id)
        if aead is None:
            raise DecryptionError(f"no key configured for key id {key_id!r}")
        nonce, sealed = blob[end : end + _NONCE], blob[end + _NONCE :]
        try:
            return aead.decrypt(nonce, sealed, aad)
        except (InvalidTag, ValueError):
            raise DecryptionError("ciphertext failed authentication") from None

    @staticmethod
    def key_id_of(blob: bytes) -> str:
        """The key id a blob was encrypted under (for rotation reports)."""
        if len(blob) < 2 or blob[0] != _VERSION:
            raise DecryptionError("unknown ciphertext format")
        return blob[2 : 2 + blob[1]].decode("ascii", errors="replace")

    def encrypt_fields(self, fields: Mapping[str, str], aad: bytes) -> bytes:
        return self.encrypt(orjson.dumps(dict(fields), option=orjson.OPT_SORT_KEYS), aad)

    def decrypt_fields(self, blob: bytes, aad: bytes) -> dict[str, str]:
        data = orjson.loads(self.decrypt(blob, aad))
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            raise DecryptionError("decrypted payload is not a field map")
        return data

    def pan_hash(self, pan: str) -> str:
        """Keyed hash of the PAN for lookups (hex). Equal PANs hash equal under one key."""
        check_pan(pan)
        return self._lookup.digest(b"pan:" + pan.encode()).hex()

    def protect_pan(self, pan: str, aad: bytes) -> tuple[str, str, bytes]:
        """(lookup hash, masked PAN, ciphertext) of a PAN."""
        check_pan(pan)  # once, not once per derived value
        digits = pan.encode("ascii")
        masked = redact.mask_pan(pan)
        return self._lookup.digest(b"pan:" + digits).hex(), masked, self.encrypt(digits, aad)

    def reveal_pan(self, blob: bytes, aad: bytes) -> str:
        return self.decrypt(blob, aad).decode("ascii")
