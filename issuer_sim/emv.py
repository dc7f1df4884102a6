"""The issuer's side of EMV chip and contactless: ARQC verification, ATC replay, ARPC.

Crypto runs through the HSM simulator's core (:mod:`hsm_sim.emv`), exactly as SPEC fixes it:
ICC master key by option A from the issuer's IMK-AC with the PAN and the PAN sequence (field 23,
default ``00``), session key with R = ATC || six zero bytes, ARQC = ISO 9797-1 MAC algorithm 3
(padding 2) over 9F02 9F03 9F1A 95 5F2A 9A 9C 9F37 82 9F36 9F10, ARPC method 1.

A request is declined ``05`` (and the cause logged) when the cryptogram does not verify, when its
ATC is not higher than the last one the card used (a replayed or cloned cryptogram), or when the
amount or currency the cryptogram signs (9F02, 5F2A) differ from fields 4 and 49: the card
authorised those, not whatever the message says elsewhere.

The answer's field 55 carries tag 91 = ARPC || ARC (``3030`` approved, ``3035`` declined) only
when the ARQC verified: an ARPC over a cryptogram that failed would be an encryption oracle under
the card's session key for whoever sends one, and the card could not check it anyway.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Final

from hsm_sim import emv as hsm_emv
from hsm_sim.errors import HsmCryptoError
from issuer_sim.accounts import Account
from kit.dataset import Dataset
from kit.logs import get_logger
from protocols import emv
from protocols.message import Message
from protocols.redact import mask_pan
from protocols.validate import card_of

log = get_logger("issuer_sim.emv")

ARC_APPROVED: Final = hsm_emv.ARC_APPROVED  # b"00" = 3030
ARC_DECLINED: Final = hsm_emv.ARC_DECLINED  # b"05" = 3035


@dataclass(frozen=True, slots=True)
class EmvOutcome:
    """What the cryptogram check decided; ``rc`` is ``None`` when the ARQC verified."""

    rc: str | None
    reason: str
    session_key: bytes | None = field(default=None, repr=False)
    arqc: bytes | None = field(default=None, repr=False)

    def issuer_data(self, rc: str) -> str | None:
        """Field 55 of the answer (hex): tag 91 for the final response code, when verified."""
        if self.session_key is None or self.arqc is None:
            return None
        arc = ARC_APPROVED if rc == "00" else ARC_DECLINED
        arpc = hsm_emv.generate_arpc_method_1(self.session_key, self.arqc, arc)
        return emv.encode_issuer_auth(arpc, arc).hex().upper()


class EmvAuthenticator:
    """Verifies the ARQC of one issuer's cards (``imk_ac`` clear, 16 bytes; test keys only)."""

    def __init__(self, issuer: str, imk_ac: bytes | None) -> None:
        if imk_ac is not None and len(imk_ac) != 16:
            raise ValueError("IMK-AC must be a double-length TDES key")
        self.issuer = issuer
        self._imk = imk_ac
        self.verified = 0
        self.failed = 0

    def __repr__(self) -> str:
        return f"EmvAuthenticator({self.issuer!r}, imk_ac={'<hidden>' if self._imk else None})"

    @classmethod
    def for_issuer(cls, dataset: Dataset, issuer: str) -> EmvAuthenticator:
        """From the issuer's ``imk_ac`` in the dataset (none: every ARQC is declined)."""
        spec = dataset.issuer(issuer).imk_ac
        return cls(issuer, bytes.fromhex(spec.key) if spec is not None else None)

    def authenticate(self, msg: Message, account: Account) -> EmvOutcome | None:
        """Check the cryptogram of a 0100/0200 with field 55; ``None`` when it has none.

        Updates the card's last ATC when the ARQC verifies.
        """
        if msg.mti not in ("0100", "0200") or "55" not in msg.fields:
            return None
        outcome = self._authenticate(msg, account)
        if outcome is None:
            return None
        if outcome.rc is None:
            self.verified += 1
        else:
            self.failed += 1
            log.warning(
                "arqc_declined",
                issuer=self.issuer,
                pan=mask_pan(card_of(msg)[0]),
                stan=msg.fields.get("11"),
                rc=outcome.rc,
                reason=outcome.reason,
            )
        return outcome

    def note_advice(self, msg: Message, account: Account) -> None:
        """A 0120 (the switch stood in): its cryptogram, when it verifies, moves the card's
        last ATC on as an online one would (the advice itself is posted whatever this says)."""
        if "55" not in msg.fields:
            return
        online = Message(msg.fields.get("90", "0200")[:4], msg.fields)
        if online.mti not in ("0100", "0200"):
            online.mti = "0200"
        outcome = self._authenticate(online, account)
        if outcome is not None and outcome.rc is not None:
            log.info("advice_arqc_not_applied", issuer=self.issuer, reason=outcome.reason)

    def _authenticate(self, msg: Message, account: Account) -> EmvOutcome | None:
        fields = msg.fields
        try:
            tlv = emv.decode(bytes.fromhex(fields["55"]))
        except ValueError:
            return EmvOutcome("30", "field 55 is not binary data")
        except emv.TlvError as exc:
            return EmvOutcome("30", f"field 55: {exc.reason}")
        arqc = tlv.get("9F26")
        if arqc is None:
            return None  # no cryptogram to verify (e.g. a QR payload without one)
        try:
            data = emv.arqc_input(tlv)
            amount = emv.bcd_decode(tlv.get("9F02") or b"", tag="9F02")
            currency = emv.bcd_decode(tlv.get("5F2A") or b"", tag="5F2A")
            psn = hsm_emv.normalize_psn(fields.get("23"))
        except emv.TlvError as exc:
            return EmvOutcome("30", f"field 55: {exc.reason}")
        except HsmCryptoError:
            return EmvOutcome("30", "field 23 is not a PAN sequence number")
        if len(arqc) != 8:
            return EmvOutcome("30", "ARQC (9F26) must be 8 bytes")
        atc_bytes = tlv.get("9F36") or b""
        if self._imk is None:
            return EmvOutcome("05", "no IMK-AC configured for this issuer")
        if amount != int(fields.get("4", "0")):
            return EmvOutcome("05", "amount authorised (9F02) differs from field 4")
        if fields.get("49", "").isdigit() and currency != int(fields["49"]):
            return EmvOutcome("05", "currency (5F2A) differs from field 49")
        pan = card_of(msg)[0]
        try:
            icc_mk = hsm_emv.derive_icc_master_key(self._imk, pan, psn)
            session_key = hsm_emv.derive_session_key(icc_mk, atc_bytes)
            expected = hsm_emv.generate_ac(session_key, data)
        except HsmCryptoError as exc:
            return EmvOutcome("30", f"cannot derive the card keys: {exc}")
        if not hmac.compare_digest(expected, arqc):
            return EmvOutcome("05", "ARQC verification failed")
        atc = int.from_bytes(atc_bytes, "big")
        if atc <= account.last_atc:
            return EmvOutcome("05", f"ATC {atc} not above the last used ({account.last_atc})")
        account.last_atc = atc
        return EmvOutcome(None, "ARQC verified", session_key, arqc)
