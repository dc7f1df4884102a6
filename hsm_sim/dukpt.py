"""ANSI X9.24-1:2009 TDES DUKPT, host side (derive any transaction key from BDK and KSN).

Hand-written from the standard: the initial key (IPEK) from the BDK and the KSN with its 21-bit
transaction counter cleared, then one non-reversible key generation step per set counter bit,
most significant first. The PIN encryption key is the transaction key XOR the PIN variant
``00000000000000FF00000000000000FF``; the MAC request key uses ``000000000000FF00...`` and the
data encryption key ``0000000000FF0000...``. A KSN is 10 bytes (20 hex): key set id and device id
in the left 59 bits, the counter in the right 21 bits.
"""

from __future__ import annotations

from hsm_sim.errors import InvalidInputError
from hsm_sim.lmk import parse_hex
from hsm_sim.pinblock import FORMAT_ISO0, decode_pin_block, encode_pin_block
from hsm_sim.tdes import des_encrypt, tdes_ecb_decrypt, tdes_ecb_encrypt, xor

COUNTER_BITS = 21
COUNTER_MASK = (1 << COUNTER_BITS) - 1
_KEY_MASK = bytes.fromhex("C0C0C0C000000000C0C0C0C000000000")
PIN_VARIANT = bytes.fromhex("00000000000000FF00000000000000FF")
MAC_VARIANT = bytes.fromhex("000000000000FF00000000000000FF00")
DATA_VARIANT = bytes.fromhex("0000000000FF00000000000000FF0000")

# Derivations already done: (BDK, KSN base) -> IPEK and (key, register) -> next key. A device's
# KSNs share their IPEK and, counter after counter, most of their derivation path, so a new
# transaction usually costs one key generation step (two one-off DES contexts, ~10 us) instead
# of all of them (~40 us). Bounded; the clear keys stay in this process, as the HSM's working
# keys do (hsm_sim.tdes keeps their cipher contexts).
_DERIVED: dict[tuple[bytes, bytes], bytes] = {}
_MAX_DERIVED = 8192


def _remember(key: tuple[bytes, bytes], value: bytes) -> bytes:
    if len(_DERIVED) >= _MAX_DERIVED:
        _DERIVED.clear()
    _DERIVED[key] = value
    return value


def parse_ksn(ksn: str | bytes) -> bytes:
    """A KSN as 10 bytes, from 10 bytes or 20 hex characters (shorter KSNs are left-padded F)."""
    if isinstance(ksn, str):
        if not 16 <= len(ksn) <= 20:
            raise InvalidInputError("KSN must be 16 to 20 hex characters")
        ksn = parse_hex(ksn.rjust(20, "F"), length=20, what="KSN")
    if len(ksn) != 10:
        raise InvalidInputError("KSN must be 10 bytes")
    return ksn


def ksn_counter(ksn: str | bytes) -> int:
    """The 21-bit transaction counter of a KSN."""
    return int.from_bytes(parse_ksn(ksn), "big") & COUNTER_MASK


def derive_ipek(bdk: bytes, ksn: str | bytes) -> bytes:
    """Initial PIN encryption key (IPEK, the device's initial key) from the BDK and any KSN."""
    base = (int.from_bytes(parse_ksn(ksn), "big") & ~COUNTER_MASK).to_bytes(10, "big")[:8]
    known = _DERIVED.get((bdk, base))
    if known is not None:
        return known
    left = tdes_ecb_encrypt(bdk, base)
    right = tdes_ecb_encrypt(xor(bdk, _KEY_MASK), base, cache=False)
    return _remember((bdk, base), left + right)


def _non_reversible_key(key: bytes, data: bytes) -> bytes:
    """X9.24-1 non-reversible key generation process: a new 16-byte key from key and data."""
    known = _DERIVED.get((key, data))
    if known is not None:
        return known
    original = key
    left, right = key[:8], key[8:]
    reg2 = xor(des_encrypt(left, xor(data, right), cache=False), right)
    key = xor(key, _KEY_MASK)
    left, right = key[:8], key[8:]
    reg1 = xor(des_encrypt(left, xor(data, right), cache=False), right)
    return _remember((original, data), reg1 + reg2)


def derive_transaction_key(bdk: bytes, ksn: str | bytes) -> bytes:
    """The current transaction key for this KSN (before any variant)."""
    ksn_b = parse_ksn(ksn)
    counter = int.from_bytes(ksn_b, "big") & COUNTER_MASK
    key = derive_ipek(bdk, ksn_b)
    # Right 64 bits of the KSN with the counter cleared, then counter bits set one by one.
    reg = int.from_bytes(ksn_b[2:], "big") & ~COUNTER_MASK
    bit = 1 << (COUNTER_BITS - 1)
    while bit:
        if counter & bit:
            reg |= bit
            key = _non_reversible_key(key, reg.to_bytes(8, "big"))
        bit >>= 1
    return key


def derive_pin_key(bdk: bytes, ksn: str | bytes) -> bytes:
    """The PIN encryption key for this KSN (transaction key XOR the PIN variant)."""
    return xor(derive_transaction_key(bdk, ksn), PIN_VARIANT)


def derive_mac_key(bdk: bytes, ksn: str | bytes) -> bytes:
    """The MAC (request) key for this KSN (transaction key XOR the MAC variant)."""
    return xor(derive_transaction_key(bdk, ksn), MAC_VARIANT)


def encrypt_pin_block(bdk: bytes, ksn: str | bytes, pin: str, pan: str) -> bytes:
    """A format-0 PIN block encrypted under the DUKPT PIN key (what a PIN pad sends)."""
    return tdes_ecb_encrypt(derive_pin_key(bdk, ksn), encode_pin_block(FORMAT_ISO0, pin, pan))


def decrypt_pin_block(bdk: bytes, ksn: str | bytes, block: bytes, pan: str) -> str:
    """The PIN of a format-0 PIN block encrypted under the DUKPT PIN key."""
    if len(block) != 8:
        raise InvalidInputError("PIN block must be 8 bytes")
    return decode_pin_block(FORMAT_ISO0, tdes_ecb_decrypt(derive_pin_key(bdk, ksn), block), pan)
