"""EMV application cryptograms exactly as SPEC fixes them.

* ICC master key: EMV Book 2 Annex A1.4.1 option A from the issuer's IMK-AC: encrypt the
  rightmost 16 digits of PAN || PAN sequence number (Y) and its complement, parity adjusted.
* Session key: EMV common session key derivation (Book 2 A1.3) with R = ATC || 6 zero bytes:
  SK = TDES(MK, R with byte 3 = F0) || TDES(MK, R with byte 3 = 0F), parity adjusted.
* ARQC: ISO 9797-1 MAC algorithm 3 with padding method 2 over the values of 9F02 9F03 9F1A 95
  5F2A 9A 9C 9F37 82 9F36 9F10 concatenated in that order.
* ARPC method 1: TDES(SK, ARQC XOR (ARC || 6 zero bytes)); tag 91 = ARPC || ARC.

Written on the project's TDES primitives (not pyemv's deprecated cipher path); the tests check
every step against pyemv.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from hsm_sim.errors import InvalidInputError, KeyLengthError
from hsm_sim.mac import retail_mac
from hsm_sim.tdes import adjust_odd_parity, tdes_ecb_encrypt, xor

ARQC_TAGS = ("9F02", "9F03", "9F1A", "95", "5F2A", "9A", "9C", "9F37", "82", "9F36", "9F10")
ARC_APPROVED = b"00"  # 0x3030, ARC for approvals
ARC_DECLINED = b"05"  # 0x3035
_DIGITS = frozenset("0123456789")


def normalize_psn(psn: str | None) -> str:
    """PAN sequence as 2 digits: ``None`` -> ``00``; field 23's 3 digits -> their last two."""
    if psn is None or psn == "":
        return "00"
    if len(psn) not in (2, 3) or not _DIGITS.issuperset(psn):
        raise InvalidInputError("PAN sequence number must be 2 or 3 digits")
    return psn[-2:]


def option_a_input(pan: str, psn: str | None) -> bytes:
    """The 8-byte option A input: rightmost 16 digits of PAN || PSN, zero-padded on the left."""
    if not pan or not _DIGITS.issuperset(pan) or not 12 <= len(pan) <= 19:
        raise InvalidInputError("PAN must be 12 to 19 digits")
    return bytes.fromhex((pan + normalize_psn(psn))[-16:].rjust(16, "0"))


def derive_icc_master_key(imk: bytes, pan: str, psn: str | None) -> bytes:
    """ICC master key for AC by EMV option A."""
    return icc_master_key_from_input(imk, option_a_input(pan, psn))


def icc_master_key_from_input(imk: bytes, y: bytes) -> bytes:
    """ICC master key by option A from the 8-byte PAN/PSN block (as the KQ command carries it)."""
    if len(imk) != 16:
        raise KeyLengthError("issuer master key must be double length")
    if len(y) != 8:
        raise InvalidInputError("PAN/PSN block must be 8 bytes")
    return adjust_odd_parity(tdes_ecb_encrypt(imk, y + xor(y, b"\xff" * 8)))


def derive_session_key(icc_mk: bytes, atc: bytes) -> bytes:
    """EMV common session key with R = ATC || 6 zero bytes."""
    if len(atc) != 2:
        raise InvalidInputError("ATC must be 2 bytes")
    left = tdes_ecb_encrypt(icc_mk, atc + b"\xf0" + bytes(5))
    right = tdes_ecb_encrypt(icc_mk, atc + b"\x0f" + bytes(5))
    return adjust_odd_parity(left + right)


def arqc_data(tags: Mapping[str, bytes]) -> bytes:
    """The ARQC input: values of SPEC's tag list concatenated in order (all must be present)."""
    try:
        return b"".join(tags[t] for t in ARQC_TAGS)
    except KeyError as exc:
        raise InvalidInputError(f"tag {exc.args[0]} missing for the ARQC") from None


def generate_ac(session_key: bytes, data: bytes) -> bytes:
    """An application cryptogram (ARQC/TC/AAC): retail MAC with padding method 2."""
    return retail_mac(session_key, data, padding=2)


def generate_arpc_method_1(session_key: bytes, arqc: bytes, arc: bytes) -> bytes:
    """ARPC method 1: TDES(SK, ARQC XOR (ARC || 6 zero bytes))."""
    if len(arqc) != 8 or len(arc) != 2:
        raise InvalidInputError("ARQC must be 8 bytes and ARC 2 bytes")
    return tdes_ecb_encrypt(session_key, xor(arqc, arc + bytes(6)))


def compute_arqc(imk_ac: bytes, pan: str, psn: str | None, atc: bytes, data: bytes) -> bytes:
    """The ARQC a card with this PAN/PSN would compute (terminal simulator and tests)."""
    return generate_ac(derive_session_key(derive_icc_master_key(imk_ac, pan, psn), atc), data)


def verify_arqc(
    imk_ac: bytes, pan: str, psn: str | None, atc: bytes, data: bytes, arqc: bytes
) -> bool:
    """True when ``arqc`` is the card's cryptogram over ``data`` (constant-time compare)."""
    if len(arqc) != 8:
        raise InvalidInputError("ARQC must be 8 bytes")
    return hmac.compare_digest(compute_arqc(imk_ac, pan, psn, atc, data), arqc)


def verify_arqc_generate_arpc(
    imk_ac: bytes,
    pan: str,
    psn: str | None,
    atc: bytes,
    data: bytes,
    arqc: bytes,
    arc: bytes = ARC_APPROVED,
) -> bytes | None:
    """The ARPC (8 bytes) when the ARQC verifies, else ``None``; tag 91 = ARPC || ARC."""
    sk = derive_session_key(derive_icc_master_key(imk_ac, pan, psn), atc)
    if len(arqc) != 8 or not hmac.compare_digest(generate_ac(sk, data), arqc):
        return None
    return generate_arpc_method_1(sk, arqc, arc)
