"""How the payer was verified, derived per transaction: one small pure function per channel.

Card (:func:`card_cvm`), from what the terminal sent:
- field 52 (or the AES DUKPT PIN of field 123): online PIN, a knowledge factor;
- field 55: the consumer-device CVM bit of the card transaction qualifiers (``9F6C`` byte 2,
  bit 8) or EMV CVM results (``9F34``) naming a PIN the card verified: the device plus a
  knowledge or inherence factor; a signature is a CVM but no factor;
- nothing of that: no CVM.

QR (:func:`qr_tier`): the wallet's own statement of what it verified (``payer_verification``)
and whether the code is static; the tier decides the payer's daily QR limit.

Pure and cheap (no clock, no I/O; the card's field 55 is only decoded when no PIN block came):
``python -m benchmarks.verification`` measures them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from protocols import emv


class Cvm(enum.IntEnum):
    """Card verification, weakest first."""

    NONE = 0
    """no CVM: possession of the card alone"""
    SIGNATURE = 1
    """a signature on the receipt: a CVM, no factor"""
    ONLINE_PIN = 2
    """field 52: knowledge, checked by the issuer"""
    DEVICE = 3
    """offline PIN or consumer-device CVM: the device plus knowledge or inherence"""


# 9F34 byte 1, bits 1-6: the CVM performed (EMV Book 3, annex C3); byte 3 02 = successful.
_OFFLINE_PIN_CODES: Final = frozenset({0x01, 0x03, 0x04, 0x05})
_SIGNATURE_CODES: Final = frozenset({0x1E})
_CVM_SUCCESSFUL: Final = 0x02
_CVM_UNKNOWN: Final = 0x00  # what a kernel reports for a signature it cannot check
_CDCVM_BIT: Final = 0x80  # 9F6C byte 2 bit 8: "consumer device CVM performed"


def card_cvm(fields: Mapping[str, str], icc: emv.Tlv | None = None) -> Cvm:
    """The CVM of a card request (ISO fields as decoded: binary fields in hex); ``icc`` is
    field 55 already decoded (the pipeline's CheckEmv keeps it), else it is decoded here."""
    if "52" in fields or "123" in fields:
        return Cvm.ONLINE_PIN
    tlv = icc
    if tlv is None:
        f55 = fields.get("55")
        if not f55:
            return Cvm.NONE
        try:
            tlv = emv.decode(bytes.fromhex(f55))
        except (ValueError, emv.TlvError):
            return Cvm.NONE  # CheckEmv answered 30 already; nothing here is evidence
    ctq = tlv.get("9F6C")
    if ctq is not None and len(ctq) == 2 and ctq[1] & _CDCVM_BIT:
        return Cvm.DEVICE
    results = tlv.get("9F34")
    if results is None or len(results) != 3:
        return Cvm.NONE
    code, outcome = results[0] & 0x3F, results[2]
    if code in _OFFLINE_PIN_CODES and outcome == _CVM_SUCCESSFUL:
        return Cvm.DEVICE
    if code in _SIGNATURE_CODES and outcome in (_CVM_SUCCESSFUL, _CVM_UNKNOWN):
        return Cvm.SIGNATURE
    return Cvm.NONE


class Factor(enum.StrEnum):
    """What a wallet may state it verified (``payer_verification``)."""

    PASSWORD = "password"  # noqa: S105 (a factor's name, not a password)
    BIOMETRIC = "biometric"
    DEVICE_CERTIFICATE = "device_certificate"
    E_SIGNATURE = "e_signature"
    OTP = "otp"


FACTORS: Final = frozenset(f.value for f in Factor)
_CERTIFIED: Final = frozenset({Factor.DEVICE_CERTIFICATE.value, Factor.E_SIGNATURE.value})


class QrTier(enum.StrEnum):
    """A QR payer's tier for the day's QR limit (the amounts are configuration)."""

    STATIC = "static"
    """a static code: whatever the wallet verified"""
    ONE_FACTOR = "one_factor"
    """a dynamic code, fewer than two factors"""
    TWO_FACTOR = "two_factor"
    """two factors or more, none of them a certificate"""
    CERTIFIED = "certified"
    """two factors or more, one of them a device certificate or an e-signature: the issuer's
    limit only"""


def qr_tier(dynamic: bool, factors: frozenset[str]) -> QrTier:
    """The tier of a QR payment: a static code caps it whatever was verified; ``factors``
    is a set, so a factor named twice counts once."""
    if not dynamic:
        return QrTier.STATIC
    if len(factors) < 2:
        return QrTier.ONE_FACTOR
    if _CERTIFIED.isdisjoint(factors):
        return QrTier.TWO_FACTOR
    return QrTier.CERTIFIED


STEP_UP: Final = Factor.OTP.value
"""The factor a payer can add on the spot (a one-time code from an enrolled authenticator)."""


def step_up(qr: QrVerification, total: int, caps: Mapping[QrTier, int | None]) -> str | None:
    """The factor that would let a payment through whose QR day total would reach ``total``
    (over its tier's cap): :data:`STEP_UP` when the code is dynamic, the payer has not given
    one yet and the tier it lifts to caps no lower than ``total``; else None."""
    if not qr.dynamic or STEP_UP in qr.factors:
        return None
    cap = caps[qr_tier(True, qr.factors | {STEP_UP})]
    return STEP_UP if cap is None or total <= cap else None


def unknown_factors(factors: Iterable[str]) -> list[str]:
    """Factors a wallet named that are not in :class:`Factor` (the API answers 422)."""
    return sorted(set(factors) - FACTORS)


@dataclass(slots=True)
class QrVerification:
    """A QR payment's verification as the wallet stated it. Mutable on purpose: the risk
    engine writes ``step_up`` back when the payment is over its tier and one more factor
    would lift it there (the QR API then challenges the payer instead of declining)."""

    dynamic: bool
    factors: frozenset[str] = field(default_factory=frozenset)
    step_up: str | None = None
    """the factor that would let this payment through (``otp``), set by the engine"""

    @property
    def tier(self) -> QrTier:
        return qr_tier(self.dynamic, self.factors)

    def with_factor(self, factor: str) -> QrVerification:
        """The same payment once the payer proved one more factor."""
        return QrVerification(self.dynamic, self.factors | {factor})
