"""PIN verification methods: Visa PVV and IBM 3624 offset (clear PINs stay in here)."""

from __future__ import annotations

import hmac

from hsm_sim.errors import InvalidInputError, PinLengthError
from hsm_sim.pinblock import account_number_12
from hsm_sim.tdes import tdes_ecb_encrypt

_DIGITS = frozenset("0123456789")
_HEXSET = frozenset("0123456789ABCDEF")


def _decimalize_visa(hex_text: str, count: int) -> str:
    """Visa decimalization: the digits left to right, then letters A-F as 0-5, first ``count``."""
    digits = [c for c in hex_text if c in _DIGITS]
    if len(digits) < count:
        digits += [str(int(c, 16) - 10) for c in hex_text if c not in _DIGITS]
    return "".join(digits[:count])


def visa_pvv(pvk: bytes, pan: str, pin: str, pvki: str = "1") -> str:
    """The 4-digit Visa PIN Verification Value of a PIN (its 4 leftmost digits)."""
    if not pan or not _DIGITS.issuperset(pan) or not 12 <= len(pan) <= 19:
        raise InvalidInputError("PAN must be 12 to 19 digits")
    if len(pvki) != 1 or pvki not in _DIGITS:
        raise InvalidInputError("PVKI must be one digit")
    if not pin or not _DIGITS.issuperset(pin):
        raise InvalidInputError("PIN must be digits")
    if not 4 <= len(pin) <= 12:
        raise PinLengthError("PIN length out of range")
    # Transformed security parameter: 11 PAN digits before the check digit, PVKI, 4 PIN digits.
    tsp = pan[-12:-1] + pvki + pin[:4]
    return _decimalize_visa(tdes_ecb_encrypt(pvk, bytes.fromhex(tsp)).hex().upper(), 4)


def verify_visa_pvv(pvk: bytes, pan: str, pin: str, pvki: str, pvv: str) -> bool:
    """True when the PIN's PVV equals ``pvv`` (constant-time compare)."""
    if len(pvv) != 4 or not _DIGITS.issuperset(pvv):
        raise InvalidInputError("PVV must be 4 digits")
    return hmac.compare_digest(visa_pvv(pvk, pan, pin, pvki), pvv)


def ibm3624_validation_data(template: str, pan: str) -> str:
    """Validation data: ``N`` in the template is replaced by the last 5 account digits, padded F.

    payShield-style: a 12-character template, ``N`` marking where the last 5 digits of the
    account number go; the result is right-padded with ``F`` to 16 hex digits.
    """
    data = template.upper()
    if "N" in data:
        data = data.replace("N", account_number_12(pan)[-5:])
    if not data or len(data) > 16 or not _HEXSET.issuperset(data):
        raise InvalidInputError("PIN validation data must give 1 to 16 hex digits")
    return data.ljust(16, "F")


def _check_table(table: str) -> None:
    if len(table) != 16 or not _DIGITS.issuperset(table):
        raise InvalidInputError("decimalisation table must be 16 digits")


def ibm3624_natural_pin(pvk: bytes, validation_data: str, table: str, length: int) -> str:
    """The IBM 3624 natural PIN: encrypt validation data, decimalize with ``table``."""
    _check_table(table)
    if not 4 <= length <= 12:
        raise PinLengthError("check length out of range")
    if len(validation_data) != 16 or not _HEXSET.issuperset(validation_data.upper()):
        raise InvalidInputError("validation data must be 16 hex digits")
    enc = tdes_ecb_encrypt(pvk, bytes.fromhex(validation_data)).hex().upper()
    return "".join(table[int(c, 16)] for c in enc)[:length]


def ibm3624_offset(pvk: bytes, validation_data: str, table: str, pin: str) -> str:
    """The offset that maps the natural PIN onto ``pin`` (digit-wise, modulo 10)."""
    if not pin or not _DIGITS.issuperset(pin):
        raise InvalidInputError("PIN must be digits")
    natural = ibm3624_natural_pin(pvk, validation_data, table, len(pin))
    return "".join(str((int(p) - int(n)) % 10) for p, n in zip(pin, natural, strict=True))


def verify_ibm3624_offset(
    pvk: bytes, validation_data: str, table: str, pin: str, offset: str, check_length: int
) -> bool:
    """True when the leftmost ``check_length`` PIN digits equal natural PIN + offset (mod 10).

    ``offset`` is left-justified and may be padded with ``F`` (payShield's 12H offset field).
    """
    offset = offset.upper().rstrip("F")
    if len(offset) < check_length or not _DIGITS.issuperset(offset[:check_length]):
        raise InvalidInputError("offset shorter than the check length or not digits")
    if len(pin) < check_length:
        return False
    natural = ibm3624_natural_pin(pvk, validation_data, table, check_length)
    expected = "".join(
        str((int(n) + int(o)) % 10) for n, o in zip(natural, offset[:check_length], strict=True)
    )
    return hmac.compare_digest(expected, pin[:check_length])
