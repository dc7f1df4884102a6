"""Card accounts of one issuer: balances, holds, status, PIN verification data.

PINs are never kept in clear: the record holds what the issuer would (a PVV), filled in by
the HSM core when a PIN verifier is configured.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.dataset import Card, SyntheticRange
from issuer_sim.pin import IssuerSecurity, without_pins
from protocols.validate import luhn_ok


@dataclass(slots=True)
class Account:
    pan: str = field(repr=False)
    expiry: str
    status: str
    balance: int
    country: str = "156"
    pan_seq: str = "00"
    holds: dict[str, int] = field(default_factory=dict)
    pvv: str = field(default="", repr=False)
    """Visa PVV derived from the PIN at load (PIN verification slots in here)."""
    wrong_pins: int = 0
    last_atc: int = -1
    """Highest EMV ATC seen (replay protection slots in here)."""

    @property
    def available(self) -> int:
        return self.balance - sum(self.holds.values())


@dataclass(slots=True)
class AccountBook:
    issuer: str
    accounts: dict[str, Account] = field(default_factory=dict)
    synthetic: tuple[SyntheticRange, ...] = ()
    security: IssuerSecurity | None = None
    """PIN, CVV2 and link MAC checks (issuer_sim/pin.py); none: PINs cannot be verified."""
    range_pins: dict[str, str] = field(default_factory=dict, repr=False)
    """Synthetic range prefix -> its PIN, encrypted (the ranges themselves keep no PIN)."""

    @classmethod
    def from_cards(
        cls,
        issuer: str,
        cards: Iterable[Card],
        synthetic: Iterable[SyntheticRange],
        security: IssuerSecurity | None = None,
    ) -> AccountBook:
        ranges = tuple(s for s in synthetic if s.issuer == issuer)
        book = cls(issuer, synthetic=ranges, security=security)
        if security is not None:
            book.range_pins = {r.prefix: security.protect_pin(r.pin) for r in ranges}
            book.synthetic = without_pins(ranges)
        for card in cards:
            if card.issuer != issuer:
                continue
            book.accounts[card.pan] = Account(
                pan=card.pan,
                expiry=card.expiry,
                status=card.status,
                balance=card.balance,
                country=card.country,
                pan_seq=card.pan_seq,
                pvv=security.pvv(card.pan, card.pin) if security is not None else "",
            )
        return book

    def reset_pin_tries(self, pan: str) -> bool:
        """Unblock a card's PIN after ``75`` (as the issuer's back office would)."""
        account = self.accounts.get(pan)
        if account is None:
            return False
        account.wrong_pins = 0
        return True

    def find(self, pan: str) -> Account | None:
        account = self.accounts.get(pan)
        if account is not None:
            return account
        for rng in self.synthetic:
            if pan.startswith(rng.prefix) and len(pan) == 16 and luhn_ok(pan):
                account = Account(pan=pan, expiry=rng.expiry, status="active", balance=rng.balance)
                protected = self.range_pins.get(rng.prefix)
                if self.security is not None and protected is not None:
                    account.pvv = self.security.pvv_from_protected(pan, protected)
                self.accounts[pan] = account
                return account
        return None
