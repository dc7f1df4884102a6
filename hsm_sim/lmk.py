"""The simulator's key scheme: keys travel and rest only encrypted under the LMK.

Scheme (documented, simpler than a real payShield's LMK pairs and variants):

* A key under the LMK is written ``U`` + 32 hex characters: the double-length (16-byte) TDES key
  encrypted with TDES-ECB (two 8-byte blocks, K1K2K1) under the 16-byte LMK. There is one LMK
  and no per-key-type variant, so key type separation is by convention of the caller, not
  enforced cryptographically (a real HSM would refuse, for example, a ZPK used as a TPK).
* An AES-256 key (32 bytes, an AES DUKPT BDK) under the LMK is ``U`` + 64 hex, the same
  TDES-ECB over its four blocks. AES-128 keys are 16 bytes and travel as ``U`` + 32 hex; AES keys
  carry no DES parity.
* A key under a ZMK (key exchange with another party) is ``X`` or ``U`` + 32 hex: the same
  TDES-ECB encryption under the ZMK (ANSI X9.17 style, no variant).
* The key check value (KCV) is the first 3 bytes of TDES-encrypting 8 zero bytes with the clear
  key; the LMK's own check value is computed the same way (6 hex digits, ``666EA8`` for the demo).
  An AES key's is the first 3 bytes of its AES-CMAC of a zero block (X9.24-3, TR-31).

The LMK itself comes from configuration (the demo LMK is in ``demo.toml``). Clear keys exist only
inside the HSM process; every function here is pure.
"""

from __future__ import annotations

import binascii
import os

from hsm_sim.errors import InvalidInputError, KeyLengthError, KeyParityError, KeySchemeError
from hsm_sim.mac import aes_cmac
from hsm_sim.tdes import (
    adjust_odd_parity,
    has_odd_parity,
    key_check_value,
    tdes_ecb_decrypt,
    tdes_ecb_encrypt,
)

LMK_SCHEME = "U"
ZMK_SCHEMES = frozenset({"U", "X"})
_HEX = frozenset("0123456789ABCDEFabcdef")


def parse_hex(value: str, *, length: int | None = None, what: str = "value") -> bytes:
    """Hex text to bytes; wrong characters or length raise InvalidInputError (no data echoed)."""
    if (length is not None and len(value) != length) or not value or not _HEX.issuperset(value):
        raise InvalidInputError(f"{what} must be {length or 'an even number of'} hex characters")
    try:
        return binascii.unhexlify(value)
    except binascii.Error:
        raise InvalidInputError(f"{what} must be an even number of hex characters") from None


def parse_clear_key(value: str | bytes, *, what: str = "key") -> bytes:
    """A clear double-length key as 16 bytes or 32 hex characters."""
    if isinstance(value, bytes):
        if len(value) != 16:
            raise KeyLengthError(f"{what} must be 16 bytes")
        return value
    return parse_hex(value, length=32, what=what)


class Lmk:
    """The Local Master Key and the operations on keys held under it.

    ``Lmk`` holds the clear LMK only; every other key enters and leaves in encrypted form.
    """

    __slots__ = ("_cache", "_key")

    def __init__(self, lmk: str | bytes) -> None:
        key = parse_clear_key(lmk, what="LMK")
        if not has_odd_parity(key):
            raise KeyParityError("LMK parity error", error_code="13")
        self._key = key
        # LMK-encrypted text -> (clear key, odd parity); bounded, the hot-path cache of a busy
        # HSM (a real one keeps working keys in its secure memory too).
        self._cache: dict[str, tuple[bytes, bool]] = {}

    def __repr__(self) -> str:
        return f"Lmk(kcv={self.check_value()})"

    def check_value(self, length: int = 3) -> str:
        """The LMK's check value (6 hex digits by default; 16 for the NC diagnostics)."""
        return key_check_value(self._key, length).hex().upper()

    def secret_for_derivation(self) -> bytes:
        """The clear LMK, for deriving the key-block LMKs (``hsm_sim.keyblock``) only."""
        return self._key

    def encrypt(self, clear_key: bytes) -> str:
        """A clear 16-byte key (or 32-byte AES-256 key) to ``U`` + 32 (64) hex under the LMK."""
        if len(clear_key) not in (16, 32):
            raise KeyLengthError("key must be double length (16 bytes) or AES-256 (32 bytes)")
        return LMK_SCHEME + tdes_ecb_encrypt(self._key, clear_key).hex().upper()

    def decrypt(self, key_under_lmk: str, *, parity_error_code: str | None = None) -> bytes:
        """``U`` + 32 hex (or 64 for an AES-256 key) to the clear key.

        With ``parity_error_code`` set, a key without odd parity raises KeyParityError with
        that code (payShield answers 10 for the first key of a command, 11 for the second).
        """
        cached = self._cache.get(key_under_lmk)
        if cached is None:
            if len(key_under_lmk) not in (33, 65) or key_under_lmk[0] != LMK_SCHEME:
                raise KeySchemeError("key under LMK must be 'U' followed by 32 or 64 hex")
            hex_part = key_under_lmk[1:]
            clear = tdes_ecb_decrypt(self._key, parse_hex(hex_part, length=len(hex_part)))
            cached = (clear, has_odd_parity(clear))
            if len(self._cache) >= 4096:
                self._cache.clear()
            self._cache[key_under_lmk] = cached
        clear, odd = cached
        if parity_error_code is not None and not odd:
            raise KeyParityError("key parity error", error_code=parity_error_code)
        return clear

    def generate(self) -> tuple[str, str]:
        """A random double-length key with odd parity: (key under LMK, KCV)."""
        clear = adjust_odd_parity(os.urandom(16))
        return self.encrypt(clear), kcv_hex(clear)

    def kcv(self, key_under_lmk: str) -> str:
        """The check value of a key given under the LMK."""
        return kcv_hex(self.decrypt(key_under_lmk))

    def export_under_zmk(self, zmk_under_lmk: str, key_under_lmk: str, scheme: str = "X") -> str:
        """Re-encrypt a key from the LMK to a ZMK (for sending to another party)."""
        if scheme not in ZMK_SCHEMES:
            raise KeySchemeError("key scheme under ZMK must be 'U' or 'X'")
        zmk = self.decrypt(zmk_under_lmk, parity_error_code="10")
        clear = self.decrypt(key_under_lmk, parity_error_code="11")
        return scheme + tdes_ecb_encrypt(zmk, clear).hex().upper()

    def import_under_zmk(self, zmk_under_lmk: str, key_under_zmk: str) -> str:
        """Re-encrypt a key received under a ZMK to the LMK; the key must have odd parity."""
        if len(key_under_zmk) != 33 or key_under_zmk[0] not in ZMK_SCHEMES:
            raise KeySchemeError("key under ZMK must be 'U' or 'X' followed by 32 hex")
        zmk = self.decrypt(zmk_under_lmk, parity_error_code="10")
        clear = tdes_ecb_decrypt(zmk, parse_hex(key_under_zmk[1:], length=32))
        if not has_odd_parity(clear):
            raise KeyParityError("imported key parity error", error_code="11")
        return self.encrypt(clear)


def kcv_hex(clear_key: bytes) -> str:
    """6-hex-digit key check value of a clear TDES key."""
    return key_check_value(clear_key).hex().upper()


def aes_kcv_hex(clear_key: bytes) -> str:
    """6-hex-digit check value of a clear AES key: AES-CMAC of 16 zero bytes (X9.24-3)."""
    return aes_cmac(clear_key, bytes(16))[:3].hex().upper()


def encrypt_under_lmk(lmk_hex: str, clear_key_hex: str) -> str:
    """The ``U`` + 32 hex form of a clear 32-hex key under the given LMK (gateway start-up)."""
    return Lmk(lmk_hex).encrypt(parse_clear_key(clear_key_hex))


def decrypt_under_lmk(lmk_hex: str, key_under_lmk: str) -> str:
    """The clear key (32 hex, upper case) of a ``U`` + 32 hex key under the given LMK."""
    return Lmk(lmk_hex).decrypt(key_under_lmk).hex().upper()


def resolve_key(key: str | bytes, lmk: Lmk | str | bytes | None = None) -> bytes:
    """A key for the pure helpers: clear bytes, clear 32 hex, or ``U`` + 32 hex with ``lmk``."""
    if isinstance(key, str) and key[:1] == LMK_SCHEME and len(key) == 33:
        if lmk is None:
            raise KeySchemeError("an LMK is needed to use a key given under the LMK")
        return (lmk if isinstance(lmk, Lmk) else Lmk(lmk)).decrypt(key)
    return parse_clear_key(key)
