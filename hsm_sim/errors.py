"""Errors of the HSM crypto core.

Each carries the payShield-style 2-digit error code the command layer answers with. Messages
name what was wrong, never the data: no key, PIN, PIN block or PAN ever appears in one.
"""

from __future__ import annotations


class HsmCryptoError(Exception):
    """Base of every error raised by the crypto core; ``error_code`` is the payShield code."""

    error_code = "15"

    def __init__(self, reason: str, *, error_code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if error_code is not None:
            self.error_code = error_code


class InvalidInputError(HsmCryptoError):
    """Input data has the wrong length, characters or value (payShield 15)."""

    error_code = "15"


class KeyParityError(HsmCryptoError):
    """A DES key does not have odd parity (10 source / first key, 11 destination / second)."""

    error_code = "10"


class KeySchemeError(HsmCryptoError):
    """A key is not in a scheme the simulator knows (payShield 26)."""

    error_code = "26"


class KeyLengthError(HsmCryptoError):
    """A key has the wrong length for the algorithm (payShield 27)."""

    error_code = "27"


class InvalidPinBlockError(HsmCryptoError):
    """The decrypted PIN block does not contain valid values (payShield 20)."""

    error_code = "20"


class PinLengthError(HsmCryptoError):
    """The PIN is shorter than 4 or longer than the allowed maximum (payShield 24)."""

    error_code = "24"


class PinBlockFormatError(HsmCryptoError):
    """Unknown or unsupported PIN block format code (payShield 23)."""

    error_code = "23"


class KeyTypeError(HsmCryptoError):
    """Unknown key type code (payShield 04)."""

    error_code = "04"
