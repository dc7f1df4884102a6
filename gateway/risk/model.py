"""What goes into the risk engine and what comes out: inputs, rule hits, decisions."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from gateway.risk.cardkey import looks_clear
from gateway.risk.verification import Cvm, QrVerification


class RiskInputError(ValueError):
    """The caller built an invalid :class:`RiskInput` (a bug on the caller's side)."""


class TxnKind(enum.StrEnum):
    """Transaction kinds as the engine sees them; only purchase/cash/authorization count."""

    PURCHASE = "purchase"
    CASH = "cash_withdrawal"
    AUTHORIZATION = "authorization"
    BALANCE_INQUIRY = "balance_inquiry"
    REFUND = "refund"
    COMPLETION = "completion"
    OTHER = "other"


_COUNTED = frozenset({TxnKind.PURCHASE, TxnKind.CASH, TxnKind.AUTHORIZATION})

# (MTI, processing type) -> (kind, counts); every other 0220 is a completion, the rest OTHER
_KINDS: dict[tuple[str, str], tuple[TxnKind, bool]] = {
    (mti, ptype): (kind, kind in _COUNTED)
    for mti, ptype, kind in (
        ("0100", "00", TxnKind.AUTHORIZATION),
        ("0200", "00", TxnKind.PURCHASE),
        ("0200", "01", TxnKind.CASH),
        ("0200", "20", TxnKind.REFUND),
        ("0200", "31", TxnKind.BALANCE_INQUIRY),
    )
}
_COMPLETION = (TxnKind.COMPLETION, False)
_OTHER = (TxnKind.OTHER, False)


def kind_from_iso(mti: str, processing_code: str) -> tuple[TxnKind, bool]:
    """Kind and ``counts`` flag of a request (SPEC: 0100/0200 with processing code 00 or 01).

    Reversals (04xx) and network messages (08xx) never reach :meth:`RiskEngine.assess`; they
    map to ``OTHER`` and do not count.
    """
    found = _KINDS.get((mti, processing_code[:2]))
    if found is not None:
        return found
    return _COMPLETION if mti == "0220" else _OTHER


@dataclass(slots=True)
class RiskInput:
    """One request as the risk stage needs it. No clear PAN: ``card_key`` is its keyed hash.

    Not frozen, but never changed once built: a frozen dataclass sets each field through
    ``object.__setattr__``, about 2 µs more per transaction on the event loop."""

    txn_id: str
    """unique per transaction (also the velocity member, so a retry is one attempt)"""
    card_key: str
    """:func:`gateway.risk.cardkey.card_key` of the funding PAN"""
    masked_pan: str
    """for logs and alerts only (first 6 / last 4)"""
    pan_prefix: str
    """first 8 PAN digits, for card-range overrides"""
    amount: int
    """minor units"""
    currency: str
    """ISO 4217 numeric"""
    mcc: str
    merchant_id: str
    terminal_id: str
    merchant_country: str
    """ISO 3166 numeric of the merchant (terminal) location"""
    card_country: str | None
    """issuing country of the card when known (a home country is never 'new')"""
    counts: bool
    """counts toward limits and velocity (see :func:`kind_from_iso`)"""
    now: datetime
    """tz-aware; the engine never reads the clock"""
    kind: TxnKind = TxnKind.PURCHASE
    cvm: Cvm | None = None
    """how a contactless card was verified (:func:`gateway.risk.verification.card_cvm`);
    None: not a contactless tap"""
    qr: QrVerification | None = None
    """a QR payment's verification (its tier caps the payer's QR day); None: not QR"""

    def __post_init__(self) -> None:
        if self.now.tzinfo is None or self.now.utcoffset() is None:
            raise RiskInputError("now must be timezone-aware")
        if self.amount < 0:
            raise RiskInputError("amount must be >= 0")
        if not self.card_key or not self.txn_id:
            raise RiskInputError("card_key and txn_id are required")
        if looks_clear(self.masked_pan):
            raise RiskInputError("masked_pan holds a clear PAN")
        if len(self.pan_prefix) > 8 or not self.pan_prefix.isdigit():
            raise RiskInputError("pan_prefix must be 1-8 digits")


HitKind = Literal["rule", "signal", "score", "error"]
HitAction = Literal["decline", "alert", "signal"]


@dataclass(frozen=True, slots=True)
class RuleHit:
    """A rule or score signal that fired, with what it measured and the threshold it crossed."""

    name: str
    kind: HitKind
    action: HitAction
    value: int | float | str
    threshold: int | float | str | None
    rc: str | None = None
    points: int = 0
    detail: str | None = None
    """context for people: the limit's layer, the other country and when"""

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "name": self.name,
            "kind": self.kind,
            "action": self.action,
            "value": self.value,
            "threshold": self.threshold,
        }
        if self.rc is not None:
            out["rc"] = self.rc
        if self.kind == "signal":
            out["points"] = self.points
        if self.detail is not None:
            out["detail"] = self.detail
        return out


ReservationState = Literal["held", "confirmed", "released"]


@dataclass(slots=True, eq=False)
class Reservation:
    """Amount and count added to a card's daily counters by :meth:`RiskEngine.assess`.

    Mutable on purpose: its state makes confirm/release idempotent without a global table.
    """

    card_key: str
    currency: str
    day: str
    amount: int
    country: str
    txn_id: str
    original_time: datetime
    state: ReservationState = "held"
    qr_amount: int = 0
    """also held on the payer's QR day total (its tier's counter), given back with it"""


@dataclass(frozen=True, slots=True)
class RiskDecision:
    """The verdict: ``rc`` None means go on; ``hits`` explain it (rules and signals)."""

    txn_id: str
    rc: str | None
    masked_pan: str
    hits: tuple[RuleHit, ...] = ()
    score: int | None = None
    reservation: Reservation | None = field(default=None, compare=False)

    @property
    def approved(self) -> bool:
        return self.rc is None

    @property
    def alerted(self) -> bool:
        """Something worth an alert event: a rule that fired, or a score alert."""
        hits = self.hits
        return bool(hits) and any(h.kind != "signal" for h in hits)

    def to_log(self) -> dict[str, object]:
        """JSON-able, for journal and logs (masked PAN only, never the card key)."""
        return {
            "txn_id": self.txn_id,
            "rc": self.rc,
            "masked_pan": self.masked_pan,
            "score": self.score,
            "hits": [h.to_dict() for h in self.hits],
            "reserved": self.reservation is not None,
        }
