"""ANSI X9.24-3-2017 AES DUKPT, host side (derive any working key from BDK and KSN).

Hand-written from the standard (neither psec nor pyemv implements AES DUKPT); AES itself is
psec's (``cryptography`` underneath). Tested against the X9.24-3 supplement's test vectors.

* KSN: 12 bytes (24 hex), the 8-byte initial key ID (4-byte BDK ID + 4-byte derivation ID)
  then a 32-bit transaction counter. A counter in use is 1 to 0xFFFFFFFE with at most 16 bits
  set (the originator skips the others, see ``next_counter``).
* Every key comes from one step: AES-ECB under the derivation key of 16-byte derivation data,
  ``01`` version, ``01`` block counter, 2-byte key usage, 2-byte algorithm, 2-byte length in
  bits, then the initial key ID (initial key) or its right 4 bytes and the counter (the rest).
  A 256-bit key is two blocks, block counters 1 and 2.
* Initial key: the BDK over the initial key ID (usage ``8001``). Intermediate derivation keys:
  from the initial key, one step (usage ``8000``) per set counter bit, most significant first,
  over the counter bits set so far. Working key: the last derivation key over the full counter
  with the working key's usage (PIN ``1000``, MAC ``2000``/``2001``/``2002``, data ``3000``...).
  Derivation keys have the BDK's type; a working key may be weaker, never stronger.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from psec import aes as _aes

from hsm_sim import pinblock
from hsm_sim.errors import InvalidInputError, KeyLengthError
from hsm_sim.lmk import parse_hex

KSN_LENGTH: Final = 12
IKID_LENGTH: Final = 8
MAX_COUNTER: Final = 0xFFFFFFFE  # 0xFFFFFFFF derives the DUKPT update key, never a transaction
MAX_COUNTER_BITS: Final = 16


@dataclass(frozen=True, slots=True)
class KeyType:
    """An AES key type of the derivation data: algorithm indicator and length in bits."""

    name: str
    algorithm: int
    bits: int

    @property
    def length(self) -> int:
        return self.bits // 8


AES128: Final = KeyType("AES-128", 0x0002, 128)
AES256: Final = KeyType("AES-256", 0x0004, 256)
_BY_LENGTH: Final = {AES128.length: AES128, AES256.length: AES256}


class KeyUsage(IntEnum):
    """X9.24-3 key usage indicators (derivation data bytes 2-3)."""

    KEY_ENCRYPTION = 0x0002
    PIN_ENCRYPTION = 0x1000
    MAC_GENERATION = 0x2000
    MAC_VERIFICATION = 0x2001
    MAC_BOTH = 0x2002
    DATA_ENCRYPT = 0x3000
    DATA_DECRYPT = 0x3001
    DATA_BOTH = 0x3002
    KEY_DERIVATION = 0x8000
    INITIAL_KEY = 0x8001


def key_type_of(key: bytes) -> KeyType:
    """AES-128 or AES-256 by the key's length (16 or 32 bytes)."""
    kind = _BY_LENGTH.get(len(key))
    if kind is None:
        raise KeyLengthError("AES DUKPT keys are 16 (AES-128) or 32 (AES-256) bytes")
    return kind


def parse_ksn(ksn: str | bytes) -> bytes:
    """A 12-byte AES DUKPT KSN, from 12 bytes or 24 hex characters."""
    if isinstance(ksn, str):
        ksn = parse_hex(ksn, length=2 * KSN_LENGTH, what="AES DUKPT KSN")
    if len(ksn) != KSN_LENGTH:
        raise InvalidInputError("AES DUKPT KSN must be 12 bytes")
    return ksn


def split_ksn(ksn: str | bytes) -> tuple[bytes, int]:
    """(8-byte initial key ID, transaction counter) of a KSN."""
    raw = parse_ksn(ksn)
    return raw[:IKID_LENGTH], int.from_bytes(raw[IKID_LENGTH:], "big")


def check_counter(counter: int) -> None:
    """Refuse a counter no originator sends: 0, the update key's, or more than 16 bits set."""
    if not 1 <= counter <= MAX_COUNTER:
        raise InvalidInputError("AES DUKPT counter out of range")
    if counter.bit_count() > MAX_COUNTER_BITS:
        raise InvalidInputError("AES DUKPT counter has more than 16 bits set")


def next_counter(counter: int) -> int:
    """The originator's next counter: one up, skipping values with more than 16 bits set."""
    following = counter + 1
    while following.bit_count() > MAX_COUNTER_BITS:
        # Adding the lowest set bit clears a run of ones: the next value the rule allows.
        following += following & -following
    if following > MAX_COUNTER:
        raise InvalidInputError("AES DUKPT counter exhausted")
    return following


def _derive(key: bytes, usage: int, kind: KeyType, tail: bytes) -> bytes:
    """One derivation step: version 01, block counter, usage, algorithm, bits, ``tail``."""
    head = usage.to_bytes(2, "big") + kind.algorithm.to_bytes(2, "big")
    head += kind.bits.to_bytes(2, "big")
    blocks = -(-kind.length // 16)  # AES-256 keys take two blocks, counters 1 and 2
    out = b"".join(
        _aes.encrypt_aes_ecb(key, bytes((1, block)) + head + tail) for block in range(1, blocks + 1)
    )
    return out[: kind.length]


def derive_initial_key(bdk: bytes, initial_key_id: bytes) -> bytes:
    """The device's initial key from the BDK and its 8-byte initial key ID."""
    if len(initial_key_id) != IKID_LENGTH:
        raise InvalidInputError("initial key ID must be 8 bytes")
    return _derive(bdk, KeyUsage.INITIAL_KEY, key_type_of(bdk), initial_key_id)


def derive_derivation_key(bdk: bytes, ksn: str | bytes) -> bytes:
    """The intermediate derivation key for this KSN (the supplement's "transaction key")."""
    kind = key_type_of(bdk)
    ikid, counter = split_ksn(ksn)
    check_counter(counter)
    key = derive_initial_key(bdk, ikid)
    device = ikid[4:]
    reached = 0
    bit = 1 << 31
    while bit:
        if counter & bit:
            reached |= bit
            key = _derive(key, KeyUsage.KEY_DERIVATION, kind, device + reached.to_bytes(4, "big"))
        bit >>= 1
    return key


def derive_working_key(
    bdk: bytes,
    ksn: str | bytes,
    usage: KeyUsage,
    working_type: KeyType = AES128,
) -> bytes:
    """The working key of ``usage`` and ``working_type`` for this KSN."""
    if working_type.bits > key_type_of(bdk).bits:
        raise KeyLengthError("a working key cannot be stronger than the BDK")
    if usage in (KeyUsage.KEY_DERIVATION, KeyUsage.INITIAL_KEY):
        raise InvalidInputError("not a working key usage")
    key = derive_derivation_key(bdk, ksn)
    ikid, counter = split_ksn(ksn)
    return _derive(key, usage, working_type, ikid[4:] + counter.to_bytes(4, "big"))


def derive_pin_key(bdk: bytes, ksn: str | bytes, working_type: KeyType = AES128) -> bytes:
    """The PIN encryption key (usage ``1000``) for this KSN."""
    return derive_working_key(bdk, ksn, KeyUsage.PIN_ENCRYPTION, working_type)


def derive_mac_key(
    bdk: bytes,
    ksn: str | bytes,
    usage: KeyUsage = KeyUsage.MAC_GENERATION,
    working_type: KeyType = AES128,
) -> bytes:
    """A MAC key (generation ``2000`` by default; ``2001`` verification, ``2002`` both)."""
    if usage not in (KeyUsage.MAC_GENERATION, KeyUsage.MAC_VERIFICATION, KeyUsage.MAC_BOTH):
        raise InvalidInputError("not a MAC key usage")
    return derive_working_key(bdk, ksn, usage, working_type)


def encrypt_pin_block(bdk: bytes, ksn: str | bytes, pin: str, pan: str) -> bytes:
    """An ISO 9564 format 4 PIN block under the AES DUKPT PIN key (what a PIN pad sends)."""
    return pinblock.encrypt_pin_block(derive_pin_key(bdk, ksn), pinblock.FORMAT_ISO4, pin, pan)


def decrypt_pin_block(bdk: bytes, ksn: str | bytes, block: bytes, pan: str) -> str:
    """The PIN of an ISO 9564 format 4 PIN block under the AES DUKPT PIN key."""
    return pinblock.decrypt_pin_block(derive_pin_key(bdk, ksn), pinblock.FORMAT_ISO4, block, pan)
