"""Card verification values (CVV, CVC, CVV2, iCVV): the Visa/Mastercard DES algorithm."""

from __future__ import annotations

import hmac

from hsm_sim.errors import InvalidInputError, KeyLengthError
from hsm_sim.tdes import des_encrypt, tdes_ecb_encrypt, xor

_DIGITS = frozenset("0123456789")


def generate_cvv(cvk: bytes, pan: str, expiry: str, service_code: str) -> str:
    """The 3-digit CVV of PAN, expiry (YYMM as on the track) and service code under a CVK pair.

    CVV2 uses service code ``000``, iCVV ``999``: the caller chooses.
    """
    if len(cvk) != 16:
        raise KeyLengthError("CVK must be a double-length key")
    if not pan or not _DIGITS.issuperset(pan) or not 12 <= len(pan) <= 19:
        raise InvalidInputError("PAN must be 12 to 19 digits")
    if len(expiry) != 4 or not _DIGITS.issuperset(expiry):
        raise InvalidInputError("expiry must be 4 digits")
    if len(service_code) != 3 or not _DIGITS.issuperset(service_code):
        raise InvalidInputError("service code must be 3 digits")
    data = bytes.fromhex((pan + expiry + service_code).ljust(32, "0"))
    step = xor(des_encrypt(cvk[:8], data[:8]), data[8:])
    text = tdes_ecb_encrypt(cvk, step).hex().upper()
    digits = [c for c in text if c in _DIGITS]
    digits += [str(int(c, 16) - 10) for c in text if c not in _DIGITS]
    return "".join(digits[:3])


def verify_cvv(cvk: bytes, pan: str, expiry: str, service_code: str, cvv: str) -> bool:
    """True when ``cvv`` is the CVV of these card data (constant-time compare)."""
    if len(cvv) != 3 or not _DIGITS.issuperset(cvv):
        raise InvalidInputError("CVV must be 3 digits")
    return hmac.compare_digest(generate_cvv(cvk, pan, expiry, service_code), cvv)
