"""Pure functions the issuer simulator calls directly, through the same core as the HSM.

Every ``key`` argument is a clear key (16 bytes or 32 hex) or a key under the LMK (``U`` + 32
hex), in which case ``lmk`` (an :class:`~hsm_sim.lmk.Lmk` or the LMK's 32 hex) is required.
The issuer stores only the PVV of a card, never its PIN: :func:`derive_pvv` runs once at card
load, :func:`verify_pin_block_pvv` at each transaction.
"""

from __future__ import annotations

from hsm_sim import cvv as _cvv
from hsm_sim import emv as _emv
from hsm_sim import pinblock as _pinblock
from hsm_sim import pinverify as _pinverify
from hsm_sim.lmk import Lmk, parse_hex, resolve_key

LmkLike = Lmk | str | bytes | None
KeyLike = str | bytes


def _block(pin_block: bytes | str) -> bytes:
    return pin_block if isinstance(pin_block, bytes) else parse_hex(pin_block, what="PIN block")


def derive_pvv(pvk: KeyLike, pan: str, pin: str, pvki: str = "1", *, lmk: LmkLike = None) -> str:
    """The 4-digit Visa PVV of a card's PIN (store this, not the PIN)."""
    return _pinverify.visa_pvv(resolve_key(pvk, lmk), pan, pin, pvki)


def verify_pin_block_pvv(
    zpk: KeyLike,
    pvk: KeyLike,
    pin_block: bytes | str,
    pan: str,
    pvv: str,
    pvki: str = "1",
    *,
    pin_block_format: str = _pinblock.FORMAT_ISO0,
    lmk: LmkLike = None,
) -> bool:
    """True when the PIN in the PIN block (under the ZPK) has this PVV.

    A block that does not decrypt to a valid PIN block raises
    :class:`~hsm_sim.errors.InvalidPinBlockError` (an issuer usually declines it as wrong PIN).
    """
    pin = _pinblock.decrypt_pin_block(
        resolve_key(zpk, lmk), pin_block_format, _block(pin_block), pan
    )
    return _pinverify.verify_visa_pvv(resolve_key(pvk, lmk), pan, pin, pvki, pvv)


def generate_cvv(
    cvk: KeyLike, pan: str, expiry: str, service_code: str, *, lmk: LmkLike = None
) -> str:
    """The 3-digit CVV (service code ``000`` gives CVV2, ``999`` iCVV)."""
    return _cvv.generate_cvv(resolve_key(cvk, lmk), pan, expiry, service_code)


def verify_cvv(
    cvk: KeyLike, pan: str, expiry: str, service_code: str, cvv: str, *, lmk: LmkLike = None
) -> bool:
    """True when ``cvv`` matches these card data."""
    return _cvv.verify_cvv(resolve_key(cvk, lmk), pan, expiry, service_code, cvv)


def verify_arqc(
    imk_ac: KeyLike,
    pan: str,
    psn: str | None,
    atc: bytes,
    data: bytes,
    arqc: bytes,
    *,
    lmk: LmkLike = None,
) -> bool:
    """True when the ARQC verifies (SPEC's derivation; ``data`` from :func:`emv.arqc_data`)."""
    return _emv.verify_arqc(resolve_key(imk_ac, lmk), pan, psn, atc, data, arqc)


def generate_arpc(
    imk_ac: KeyLike,
    pan: str,
    psn: str | None,
    atc: bytes,
    arqc: bytes,
    arc: bytes = _emv.ARC_APPROVED,
    *,
    lmk: LmkLike = None,
) -> bytes:
    """The 8-byte ARPC (method 1) for an ARQC and a 2-byte ARC (``b"00"`` / ``b"05"``)."""
    sk = _emv.derive_session_key(
        _emv.derive_icc_master_key(resolve_key(imk_ac, lmk), pan, psn), atc
    )
    return _emv.generate_arpc_method_1(sk, arqc, arc)


def verify_arqc_generate_arpc(
    imk_ac: KeyLike,
    pan: str,
    psn: str | None,
    atc: bytes,
    data: bytes,
    arqc: bytes,
    arc: bytes = _emv.ARC_APPROVED,
    *,
    lmk: LmkLike = None,
) -> bytes | None:
    """The ARPC when the ARQC verifies, else ``None``."""
    return _emv.verify_arqc_generate_arpc(resolve_key(imk_ac, lmk), pan, psn, atc, data, arqc, arc)
