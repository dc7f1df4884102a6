"""Records exchanged with the journal: events in, stored transactions and reports out.

A :class:`JournalEvent` is one state change of one transaction. It carries clear values only
for what may be stored in clear; the PAN and the ISO field payloads are encrypted by the
journal before anything reaches the disk, and sensitive authentication data (track data,
PIN blocks, KSN, sensitive EMV tags) is stripped from payloads on construction, so no code
path can write it (see :mod:`gateway.journal.sensitive`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from operator import attrgetter

from gateway.journal.errors import JournalValueError
from gateway.journal.sensitive import check_pan, strip_sensitive


class TxnState(StrEnum):
    """Life cycle of a transaction in the switch. The index keeps the latest one."""

    RECEIVED = "received"
    """Request decoded and accepted for processing."""
    SENT_TO_ISSUER = "sent_to_issuer"
    """Forwarded to the issuer; a crash now means a reversal must be queued at start."""
    ANSWERED = "answered"
    """A response (from the issuer or a local decline) went to the terminal."""
    TIMED_OUT = "timed_out"
    """No issuer answer in time: answered 91, a 0420 is queued."""
    REVERSED = "reversed"
    """Reversed (terminal 0400/0420, or the switch's own 0420 acknowledged)."""
    ADVISED = "advised"
    """An advice about this transaction was acknowledged by the issuer."""
    STOOD_IN = "stood_in"
    """Answered by stand-in processing while the issuer was unavailable."""


_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_DIGITS = re.compile(r"^[0-9]+$")
_MTI = re.compile(r"^[0-9]{4}$")


def _check_digits(name: str, value: str | None, lengths: tuple[int, ...]) -> None:
    if value is not None and (len(value) not in lengths or not _DIGITS.match(value)):
        raise JournalValueError(f"{name} must be {'/'.join(map(str, lengths))} digits")


def _is_digits(value: str, length: int) -> bool:
    """Exactly ``length`` ASCII digits (``isdigit`` alone accepts other scripts' digits)."""
    return len(value) == length and value.isascii() and value.isdigit()


# (field, exact length) of the all-digit fields of an event.
_DIGIT_FIELDS = (
    ("mti", 4),
    ("orig_mti", 4),
    ("processing_code", 6),
    ("currency", 3),
    ("stan", 6),
    ("orig_stan", 6),
    ("transmission", 10),
    ("orig_transmission", 10),
)
_TEXT_FIELDS = ("terminal_id", "merchant_id", "issuer_id", "rrn", "auth_code", "note")
_digit_values = attrgetter(*(name for name, _ in _DIGIT_FIELDS))
_DIGIT_LENGTHS = tuple(length for _, length in _DIGIT_FIELDS)
_text_values = attrgetter(*_TEXT_FIELDS)


def _check_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise JournalValueError(f"{name} must be a timezone-aware datetime")


@dataclass(slots=True, kw_only=True)
class JournalEvent:
    """One state change of a transaction, appended to the chained event log.

    Not frozen, but never changed once built (``dataclasses.replace`` makes a new one): a
    frozen dataclass sets each of its 25 fields through ``object.__setattr__``, 2.5 µs more
    per record on the event loop, two records per transaction.

    Fields left ``None`` keep the value of earlier events in the current-state index, so a
    later event only needs what changed (e.g. ``answered`` with the response code and the
    response payload). ``request``/``response`` are ISO fields keyed by field number as a
    string (``"2"``, ``"39"``...), binary fields as hex; they are copied and stripped of
    sensitive data here, and stored AES-GCM encrypted. ``pan`` is never stored in clear.
    """

    txn_id: str
    """Switch-wide transaction id (letters, digits, ``._:-``; never the PAN)."""
    state: TxnState
    at: datetime
    """When the state change happened (timezone-aware; injected by the caller)."""
    mti: str | None = None
    processing_code: str | None = None
    amount: int | None = None
    """Field 4 in minor units."""
    currency: str | None = None
    """Field 49, ISO 4217 numeric."""
    terminal_id: str | None = None
    merchant_id: str | None = None
    stan: str | None = None
    transmission: str | None = None
    """Field 7, MMDDhhmmss."""
    issuer_id: str | None = None
    rrn: str | None = None
    auth_code: str | None = None
    response_code: str | None = None
    orig_mti: str | None = None
    """For reversals and advices: the original's MTI (field 90)."""
    orig_stan: str | None = None
    orig_transmission: str | None = None
    note: str | None = None
    """Short machine-readable reason (``issuer_timeout``...); never card data."""
    business_date: date | None = None
    """The business (settlement) date the transaction belongs to: fixed when the request
    was received (a reversal or advice carries its original's), so it lands in one day."""
    pan: str | None = field(default=None, repr=False)
    request: Mapping[str, str] | None = field(default=None, repr=False)
    response: Mapping[str, str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # Runs for every record on the event loop (twice per transaction): plain string
        # tests rather than regexes, the common case (every set field valid) in one pass
        # (the fields read in C, by attrgetter), and the slow path only to name what is wrong.
        if not _ID.fullmatch(self.txn_id):
            raise JournalValueError("txn_id must be 1-64 chars of letters, digits, '._:-'")
        if type(self.state) is not TxnState:
            try:
                self.state = TxnState(self.state)
            except ValueError:
                raise JournalValueError("state is not a TxnState") from None
        if self.at.tzinfo is not UTC:
            _check_aware("at", self.at)
        digits = "".join(
            [
                v if len(v) == n else "x"
                for v, n in zip(_digit_values(self), _DIGIT_LENGTHS, strict=True)
                if v is not None
            ]
        )
        if digits and not (digits.isascii() and digits.isdigit()):
            self._digit_error()
        amount = self.amount
        if amount is not None and (type(amount) is not int or not 0 <= amount < 10**12):
            raise JournalValueError("amount must be 0 <= amount < 10**12 minor units")
        text = [v for v in _text_values(self) if v is not None]
        if text and (max(map(len, text)) > 64 or not "".join(text).isprintable()):
            self._text_error()
        if self.response_code is not None and len(self.response_code) != 2:
            raise JournalValueError("response_code must be 2 chars")
        business = self.business_date
        if business is not None and type(business) is not date:
            raise JournalValueError("business_date must be a date (not a datetime)")
        if self.pan is not None:
            check_pan(self.pan)
        if self.request is not None:
            self.request = strip_sensitive(self.request)
        if self.response is not None:
            self.response = strip_sensitive(self.response)

    def _digit_error(self) -> None:
        for name, length in _DIGIT_FIELDS:
            value = getattr(self, name)
            if value is not None and not _is_digits(value, length):
                raise JournalValueError(f"{name} must be {length} digits")
        raise AssertionError("unreachable: a digit field failed as a whole but not alone")

    def _text_error(self) -> None:
        for name in _TEXT_FIELDS:
            value = getattr(self, name)
            if value is not None and (len(value) > 64 or not value.isprintable()):
                raise JournalValueError(f"{name} must be at most 64 printable chars")
        raise AssertionError("unreachable: a text field failed as a whole but not alone")


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredTxn:
    """The current state of one transaction (from the index), payloads decrypted."""

    txn_id: str
    state: TxnState
    created_at: datetime
    updated_at: datetime
    last_seq: int
    """Sequence number of the latest event applied."""
    mti: str | None = None
    processing_code: str | None = None
    amount: int | None = None
    currency: str | None = None
    terminal_id: str | None = None
    merchant_id: str | None = None
    stan: str | None = None
    transmission: str | None = None
    issuer_id: str | None = None
    rrn: str | None = None
    auth_code: str | None = None
    response_code: str | None = None
    orig_mti: str | None = None
    orig_stan: str | None = None
    orig_transmission: str | None = None
    note: str | None = None
    business_date: date | None = None
    pan_masked: str | None = None
    pan: str | None = field(default=None, repr=False)
    request: dict[str, str] | None = field(default=None, repr=False)
    response: dict[str, str] | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class NewAdvice:
    """An advice to store and forward (e.g. a 0420 after an issuer timeout)."""

    issuer_id: str
    kind: str
    """MTI of the advice to send: ``"0420"``, ``"0120"``, ``"0220"``..."""
    txn_id: str
    fields: Mapping[str, str] = field(repr=False)
    """ISO fields of the advice; stripped of sensitive data and stored encrypted."""
    created_at: datetime
    next_attempt_at: datetime | None = None
    """First attempt (default: ``created_at``, i.e. due at once)."""

    def __post_init__(self) -> None:
        if not _ID.match(self.issuer_id):
            raise JournalValueError("issuer_id must be 1-64 chars of letters, digits, '._:-'")
        if not _MTI.match(self.kind):
            raise JournalValueError("advice kind must be a 4-digit MTI")
        if not _ID.match(self.txn_id):
            raise JournalValueError("txn_id must be 1-64 chars of letters, digits, '._:-'")
        _check_aware("created_at", self.created_at)
        if self.next_attempt_at is not None:
            _check_aware("next_attempt_at", self.next_attempt_at)
        object.__setattr__(self, "fields", strip_sensitive(self.fields))


@dataclass(frozen=True, slots=True, kw_only=True)
class Advice:
    """A stored advice, payload decrypted."""

    advice_id: int
    issuer_id: str
    kind: str
    txn_id: str
    created_at: datetime
    next_attempt_at: datetime
    attempts: int
    last_error: str | None
    fields: dict[str, str] = field(repr=False)


@dataclass(frozen=True, slots=True)
class SafDepth:
    """Queue depth of one issuer, for metrics and alerts."""

    issuer_id: str
    depth: int
    oldest_created_at: datetime | None

    def oldest_age(self, now: datetime) -> timedelta | None:
        return None if self.oldest_created_at is None else now - self.oldest_created_at


@dataclass(frozen=True, slots=True)
class SettlementTotal:
    """Approved, not reversed financial transactions (MTI 02xx) of one issuer, currency, day.

    Debits are purchases and cash (processing code 00/01), credits are refunds (20). ``day``
    is a UTC calendar day or a business date (``Journal.settlement(day, by=...)``).
    """

    day: date
    issuer_id: str
    currency: str
    debit_count: int
    debit_amount: int
    credit_count: int
    credit_amount: int

    def as_dict(self) -> dict[str, object]:
        data = dataclasses.asdict(self)
        data["day"] = self.day.isoformat()
        return data


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """Outcome of a chain verification: OK with the count, or the first broken link."""

    ok: bool
    count: int
    """Events checked (up to the break)."""
    first_seq: int | None = None
    last_seq: int | None = None
    broken_seq: int | None = None
    """Sequence number of the first bad event (or where the chain state is inconsistent)."""
    reason: str | None = None

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class ArchiveResult:
    """What one archive or restore run moved."""

    path: str | None
    count: int
    first_seq: int | None
    last_seq: int | None
    txns_removed: int = 0

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class JournalStatistics:
    """Group-commit counters since open (``statistics()``)."""

    ops: int
    batches: int
    largest_batch: int
    failed_batches: int
