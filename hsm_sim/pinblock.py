"""ISO 9564-1 PIN blocks: formats 0, 1 and 3 (TDES, 8 bytes) and 4 (AES, 16 bytes).

Format codes follow payShield: ``01`` ISO format 0 (ANSI X9.8), ``05`` ISO format 1, ``47``
ISO format 3, ``48`` ISO format 4. Formats 0, 1 and 3 are written here (small, and psec's
decoders put the PIN into their error messages); format 4 uses psec's AES implementation.
Errors never carry the PIN, the block or the PAN.
"""

from __future__ import annotations

import os
import secrets

from psec import pinblock as _psec_pinblock

from hsm_sim.errors import (
    InvalidInputError,
    InvalidPinBlockError,
    PinBlockFormatError,
    PinLengthError,
)
from hsm_sim.tdes import tdes_ecb_decrypt, tdes_ecb_encrypt, xor

FORMAT_ISO0 = "01"
FORMAT_ISO1 = "05"
FORMAT_ISO3 = "47"
FORMAT_ISO4 = "48"
FORMATS = frozenset({FORMAT_ISO0, FORMAT_ISO1, FORMAT_ISO3, FORMAT_ISO4})
_DIGITS = frozenset("0123456789")


def pin_block_length(fmt: str) -> int:
    """Length in bytes of a PIN block of this format (16 for format 4, 8 otherwise)."""
    check_format(fmt)
    return 16 if fmt == FORMAT_ISO4 else 8


def check_format(fmt: str) -> None:
    """Raise PinBlockFormatError (payShield 23) for an unknown format code."""
    if fmt not in FORMATS:
        raise PinBlockFormatError("unsupported PIN block format code")


def account_number_12(pan: str) -> str:
    """The 12 rightmost PAN digits excluding the check digit (given 12 digits, those)."""
    if not pan or not _DIGITS.issuperset(pan) or not 12 <= len(pan) <= 19:
        raise InvalidInputError("account number must be 12 to 19 digits")
    return pan if len(pan) == 12 else pan[-13:-1]


def _check_pin(pin: str, max_length: int = 12) -> None:
    if not pin or not _DIGITS.issuperset(pin):
        raise InvalidInputError("PIN must be digits")
    if not 4 <= len(pin) <= min(max_length, 12):
        raise PinLengthError("PIN length out of range")


def _pan_block(pan: str) -> bytes:
    return bytes.fromhex("0000" + account_number_12(pan))


def encode_pin_block(fmt: str, pin: str, pan: str) -> bytes:
    """The clear PIN block of a TDES format (0, 1 or 3)."""
    _check_pin(pin)
    head = f"{len(pin):X}{pin}"
    if fmt == FORMAT_ISO0:
        return xor(bytes.fromhex(("0" + head).ljust(16, "F")), _pan_block(pan))
    if fmt == FORMAT_ISO3:
        fill = "".join(secrets.choice("ABCDEF") for _ in range(15 - len(head)))
        return xor(bytes.fromhex("3" + head + fill), _pan_block(pan))
    if fmt == FORMAT_ISO1:
        fill = os.urandom(8).hex().upper()[: 15 - len(head)]
        return bytes.fromhex("1" + head + fill)
    check_format(fmt)
    raise PinBlockFormatError("format 4 is an AES format: use encrypt_pin_block")


def decode_pin_block(fmt: str, block: bytes, pan: str) -> str:
    """The PIN in a clear TDES-format PIN block; a malformed block raises (payShield 20)."""
    if len(block) != 8:
        raise InvalidPinBlockError("PIN block must be 8 bytes")
    if fmt in (FORMAT_ISO0, FORMAT_ISO3):
        block = xor(block, _pan_block(pan))
    elif fmt != FORMAT_ISO1:
        check_format(fmt)
        raise PinBlockFormatError("format 4 is an AES format: use decrypt_pin_block")
    text = block.hex().upper()
    control = {FORMAT_ISO0: "0", FORMAT_ISO1: "1", FORMAT_ISO3: "3"}[fmt]
    if text[0] != control:
        raise InvalidPinBlockError("PIN block control field does not match the format")
    length = int(text[1], 16)
    if not 4 <= length <= 12:
        raise InvalidPinBlockError("PIN length in the PIN block is out of range")
    pin, fill = text[2 : 2 + length], text[2 + length :]
    if not _DIGITS.issuperset(pin):
        raise InvalidPinBlockError("PIN block holds non-digit PIN characters")
    if (fmt == FORMAT_ISO0 and fill.strip("F")) or (
        fmt == FORMAT_ISO3 and not frozenset("ABCDEF").issuperset(fill)
    ):
        raise InvalidPinBlockError("PIN block fill characters are wrong for the format")
    return pin


def encrypt_pin_block(key: bytes, fmt: str, pin: str, pan: str) -> bytes:
    """A PIN block of format ``fmt`` encrypted under ``key`` (TDES, or AES for format 4)."""
    if fmt == FORMAT_ISO4:
        _check_pin(pin)
        _check_pan_iso4(pan)
        try:
            return _psec_pinblock.encipher_pinblock_iso_4(key, pin, pan)
        except ValueError:
            raise InvalidInputError("cannot build an ISO format 4 PIN block") from None
    return tdes_ecb_encrypt(key, encode_pin_block(fmt, pin, pan))


def decrypt_pin_block(key: bytes, fmt: str, block: bytes, pan: str) -> str:
    """The PIN of an encrypted PIN block of format ``fmt`` (TDES, or AES for format 4)."""
    if len(block) != pin_block_length(fmt):
        raise InvalidInputError("PIN block length does not match the format")
    if fmt == FORMAT_ISO4:
        _check_pan_iso4(pan)
        try:
            return _psec_pinblock.decipher_pinblock_iso_4(key, block, pan)
        except ValueError:
            # psec's message may quote the PIN: drop it.
            raise InvalidPinBlockError("ISO format 4 PIN block is not valid") from None
    return decode_pin_block(fmt, tdes_ecb_decrypt(key, block), pan)


def _check_pan_iso4(pan: str) -> None:
    if not pan or not _DIGITS.issuperset(pan) or not 12 <= len(pan) <= 19:
        raise InvalidInputError("format 4 needs the full PAN (12 to 19 digits)")


def translate_pin_block(
    src_key: bytes,
    dst_key: bytes,
    block: bytes,
    pan: str,
    src_format: str = FORMAT_ISO0,
    dst_format: str = FORMAT_ISO0,
    max_pin_length: int = 12,
) -> tuple[int, bytes]:
    """Re-encrypt a PIN block from one key (and format) to another: (PIN length, new block)."""
    check_format(src_format)
    check_format(dst_format)
    pin = decrypt_pin_block(src_key, src_format, block, pan)
    if len(pin) > max_pin_length:
        raise PinLengthError("PIN longer than the maximum PIN length")
    return len(pin), encrypt_pin_block(dst_key, dst_format, pin, pan)
