"""Card accounts of one issuer: balances, holds, status, PIN verification data.

PINs are never kept in clear: the record holds what the issuer would (a PVV), filled in by
the HSM core when a PIN verifier is configured.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial

from issuer_sim.pin import IssuerSecurity, without_pins
from kit.dataset import Card, SyntheticRange
from protocols import validate

_DOUBLED = bytes.maketrans(b"0123456789", b"0246813579")
"""An ASCII digit -> the digit of its Luhn doubling (2d, less 9 above 9)."""


def luhn_ok(pan: str) -> bool:
    """:func:`protocols.validate.luhn_ok`, summing bytes in C for an all-digit PAN (every new
    synthetic card of a load test goes through this)."""
    if not (pan.isascii() and pan.isdigit()):
        return validate.luhn_ok(pan)
    raw = pan.encode()
    total = sum(raw[-1::-2]) + sum(raw[-2::-2].translate(_DOUBLED)) - 48 * len(raw)
    return total % 10 == 0


@dataclass(slots=True)
class Account:
    pan: str = field(repr=False)
    expiry: str
    status: str
    balance: int
    country: str = "156"
    pan_seq: str = "00"
    holds: dict[str, int] = field(default_factory=dict)
    stored_pvv: str = field(default="", repr=False)
    """Visa PVV derived from the PIN at load (PIN verification slots in here); see ``pvv``."""
    wrong_pins: int = 0
    last_atc: int = -1
    """Highest EMV ATC seen (replay protection slots in here)."""
    pvv_source: Callable[[], str] | None = field(default=None, repr=False, compare=False)
    """A synthetic card's PVV, derived when first needed: most cards of a load test never
    carry a PIN, and deriving it costs more than the rest of their transaction."""

    @property
    def pvv(self) -> str:
        source = self.pvv_source
        if source is not None:
            self.stored_pvv = source()
            self.pvv_source = None
        return self.stored_pvv

    @pvv.setter
    def pvv(self, value: str) -> None:
        self.stored_pvv = value
        self.pvv_source = None

    @property
    def available(self) -> int:
        holds = self.holds
        return self.balance - sum(holds.values()) if holds else self.balance


@dataclass(slots=True)
class AccountBook:
    issuer: str
    accounts: dict[str, Account] = field(default_factory=dict)
    synthetic: tuple[SyntheticRange, ...] = ()
    security: IssuerSecurity | None = None
    """PIN, CVV2 and link MAC checks (issuer_sim/pin.py); none: PINs cannot be verified."""
    range_pins: dict[str, str] = field(default_factory=dict, repr=False)
    """Synthetic range prefix -> its PIN, encrypted (the ranges themselves keep no PIN)."""
    max_synthetic: int = 1_000_000
    """Synthetic accounts kept (oldest first out): a load test makes one per transaction,
    and a simulator that keeps them all grows by about 1 GB per million."""
    _synthetic_order: deque[str] = field(default_factory=deque, repr=False)
    """Synthetic PANs in ``accounts``, oldest first: each is there once (added when absent,
    removed only from here), so a deque is enough (8 bytes a PAN, a dict 77 or more)."""

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
                stored_pvv=security.pvv(card.pan, card.pin) if security is not None else "",
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
                    account.pvv_source = partial(self.security.pvv_from_protected, pan, protected)
                self.accounts[pan] = account
                order = self._synthetic_order
                order.append(pan)
                if len(order) > self.max_synthetic:
                    del self.accounts[order.popleft()]
                return account
        return None
