"""Reconciliation: the switch's records of one day against what an issuer says it posted.

Pure (no I/O but :func:`read_postings`): feed the issuer's postings, then the switch's
transactions page by page, then :meth:`Reconciler.finish` gives the counts per category and
every exception. Memory holds the issuer's postings, not the switch's day.

**Key.** A transaction is matched by what the issuer got: STAN (11) and transmission time (7)
of the journal's ``request`` payload once sent (the message the issuer got), or of the 0120 for
a stand-in approval (posted by the issuer under the 0120's own 11/7).

**Day.** Switch transactions created on the day (UTC) and postings whose transmission (MMDD,
UTC) is the day are in scope; a pair is in scope when either side is (a request created at
23:59:59.9 may reach the issuer at 00:00:00). The caller reads the switch a little beyond the
day (:data:`DAY_MARGIN`) so such pairs still meet; rows of the margin that meet nothing of the
day are left out.

**Categories** (what each side holds as posted: approved and not reversed):

- ``matched``: both posted with the same amount, or neither posted (declined on both, reversed
  on both...) while both know the transaction;
- ``not_posted`` (not an exception): known to one side only, which did not post it (e.g. a
  request that timed out before reaching the issuer, a decline the switch never heard of);
- ``amount_differs``: both posted, amounts differ;
- ``approved_at_issuer_only``: posted at the issuer, not at the switch (unknown, declined, or
  timed out with its 0420 reversal still queued: the note says so);
- ``approved_at_switch_only``: posted at the switch, unknown or declined at the issuer (e.g. a
  stand-in approval whose 0120 is not delivered yet);
- ``reversed_at_switch_only`` / ``reversed_at_issuer_only``: reversed on one side, posted on
  the other.

Never a clear PAN: switch rows carry the journal's masked PAN, and the file's PAN column is
masked again (first 6 / last 4) whatever it holds.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from gateway.journal.model import StoredTxn, TxnState
from protocols.postings import POSTING_COLUMNS
from protocols.redact import mask_pan

MATCHED = "matched"
NOT_POSTED = "not_posted"
AMOUNT_DIFFERS = "amount_differs"
ISSUER_ONLY = "approved_at_issuer_only"
SWITCH_ONLY = "approved_at_switch_only"
REVERSED_SWITCH_ONLY = "reversed_at_switch_only"
REVERSED_ISSUER_ONLY = "reversed_at_issuer_only"
DUPLICATE_AT_ISSUER = "duplicate_at_issuer"
CATEGORIES = (
    MATCHED,
    NOT_POSTED,
    AMOUNT_DIFFERS,
    ISSUER_ONLY,
    SWITCH_ONLY,
    REVERSED_SWITCH_ONLY,
    REVERSED_ISSUER_ONLY,
    DUPLICATE_AT_ISSUER,
)
EXCEPTIONS = frozenset(CATEGORIES) - {MATCHED, NOT_POSTED}

DAY_MARGIN = timedelta(minutes=15)
"""How far beyond the day the switch is read, for pairs that straddle midnight."""


_ISSUER_REQUESTS = frozenset({"0100", "0120", "0200", "0220"})
_APPROVED = frozenset({TxnState.ANSWERED, TxnState.STOOD_IN, TxnState.ADVISED})
_MAX_AMOUNT = 10**12


class PostingFileError(ValueError):
    """The posting file cannot be read (the message names the line, never its content)."""


def _digits(value: str, length: int) -> bool:
    return len(value) == length and value.isascii() and value.isdigit()


@dataclass(frozen=True, slots=True)
class IssuerPosting:
    """One line of the issuer's posting file."""

    mti: str
    stan: str
    transmission: str
    kind: str
    amount: int
    auth_code: str
    approved: bool
    reversed: bool
    pan_masked: str

    @property
    def key(self) -> tuple[str, str]:
        return self.stan, self.transmission

    @property
    def posted(self) -> bool:
        return self.approved and not self.reversed

    @property
    def status(self) -> str:
        if not self.approved:
            return "declined"
        return "reversed" if self.reversed else "approved"


@dataclass(frozen=True, slots=True)
class SwitchRecord:
    """What reconciliation needs of one journal transaction (see :meth:`of`)."""

    rrn: str
    created: date
    state: str
    response_code: str | None
    amount: int
    posted: bool
    """Approved and not reversed: what settlement counts."""
    stan: str | None = None
    """Issuer-side STAN/transmission: None when the issuer was never sent anything."""
    transmission: str | None = None
    issuer_mti: str | None = None
    pan_masked: str | None = None
    note: str | None = None

    @property
    def key(self) -> tuple[str, str] | None:
        if self.stan is None or self.transmission is None:
            return None
        return self.stan, self.transmission

    @classmethod
    def of(cls, stored: StoredTxn) -> SwitchRecord | None:
        """The record of an authorisation or financial request (01xx/02xx); None for what
        the issuer posts nothing of (reversals change their original's state; network)."""
        mti = stored.mti or ""
        if mti[:2] not in ("01", "02"):
            return None
        stan = transmission = issuer_mti = None
        sent = stored.request or {}
        if (
            sent.get("t") in _ISSUER_REQUESTS
            and "32" in sent
            and _digits(sent.get("11", ""), 6)
            and _digits(sent.get("7", ""), 10)
        ):
            stan, transmission, issuer_mti = sent["11"], sent["7"], sent["t"]
        return cls(
            rrn=stored.rrn or stored.txn_id,
            created=stored.created_at.date(),
            state=stored.state.value,
            response_code=stored.response_code,
            amount=stored.amount or 0,
            posted=stored.response_code == "00" and stored.state in _APPROVED,
            stan=stan,
            transmission=transmission,
            issuer_mti=issuer_mti,
            pan_masked=stored.pan_masked,
            note=stored.note,
        )


@dataclass(frozen=True, slots=True)
class Difference:
    category: str
    rrn: str | None
    issuer_stan: str | None
    issuer_transmission: str | None
    pan_masked: str | None
    switch_amount: int | None
    issuer_amount: int | None
    switch_state: str | None
    switch_response_code: str | None
    issuer_state: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "rrn": self.rrn,
            "issuer_stan": self.issuer_stan,
            "issuer_transmission": self.issuer_transmission,
            "pan_masked": self.pan_masked,
            "switch_amount": self.switch_amount,
            "issuer_amount": self.issuer_amount,
            "switch_state": self.switch_state,
            "switch_response_code": self.switch_response_code,
            "issuer_state": self.issuer_state,
            "reason": self.reason,
        }


@dataclass(slots=True)
class Report:
    day: date
    issuer_id: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))
    exceptions: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.exceptions

    def as_dict(self) -> dict[str, Any]:
        return {
            "day": self.day.isoformat(),
            "issuer_id": self.issuer_id,
            "ok": self.ok,
            "counts": dict(self.counts),
            "exceptions": [d.as_dict() for d in self.exceptions],
        }


def _switch_reason(rec: SwitchRecord) -> str:
    if rec.state == TxnState.TIMED_OUT:
        return (
            "timed out at the switch: its reversal (0420) is queued, "
            "not yet acknowledged by the issuer"
        )
    if rec.state == TxnState.REVERSED:
        return "reversed at the switch"
    if rec.state == TxnState.SENT_TO_ISSUER:
        return "still in flight at the switch (sent, no outcome recorded)"
    return f"not approved at the switch (state {rec.state}, rc {rec.response_code})"


def _unknown_reason(rec: SwitchRecord) -> str:
    if rec.key is None:
        return "approved at the switch, never sent to the issuer"
    if rec.state == TxnState.STOOD_IN:
        return "stand-in approval: its advice (0120) is not delivered yet"
    return "unknown at the issuer"


class Reconciler:
    """One day of one issuer: :meth:`add_posting` every posting first, then
    :meth:`add_switch` every switch transaction (any order), then :meth:`finish`."""

    def __init__(self, day: date, issuer_id: str) -> None:
        self.report = Report(day, issuer_id)
        self._mmdd = day.strftime("%m%d")
        self._postings: dict[tuple[str, str], IssuerPosting] = {}
        self._switch_started = False

    def add_posting(self, posting: IssuerPosting) -> None:
        if self._switch_started:
            raise RuntimeError("add every posting before the switch's transactions")
        earlier = self._postings.get(posting.key)
        # One STAN + time posted twice: the issuer's file, not the switch, is in question
        # (each earlier line is listed; the last one is compared with the switch's record).
        if earlier is not None and earlier.transmission[:4] == self._mmdd:
            self._differ(DUPLICATE_AT_ISSUER, None, earlier, "posted twice by the issuer")
        self._postings[posting.key] = posting

    def add_stored(self, stored: StoredTxn) -> None:
        record = SwitchRecord.of(stored)
        if record is not None:
            self.add_switch(record)

    def add_switch(self, record: SwitchRecord) -> None:
        self._switch_started = True
        key = record.key
        posting = None if key is None else self._postings.pop(key, None)
        in_day = record.created == self.report.day or (
            posting is not None and posting.transmission[:4] == self._mmdd
        )
        if in_day:
            self._compare(record, posting)

    def finish(self) -> Report:
        """The report; postings of the day no switch transaction claimed are compared alone."""
        for posting in self._postings.values():
            if posting.transmission[:4] == self._mmdd:
                self._compare(None, posting)
        self._postings.clear()
        return self.report

    def _compare(self, rec: SwitchRecord | None, posting: IssuerPosting | None) -> None:
        s_posted = rec is not None and rec.posted
        i_posted = posting is not None and posting.posted
        if not s_posted and not i_posted:
            both = rec is not None and posting is not None
            self._count(MATCHED if both else NOT_POSTED)
        elif rec is None:
            self._differ(ISSUER_ONLY, rec, posting, "unknown at the switch")
        elif posting is None:
            self._differ(SWITCH_ONLY, rec, posting, _unknown_reason(rec))
        elif s_posted and i_posted:
            if rec.amount == posting.amount:
                self._count(MATCHED)
            else:
                self._differ(AMOUNT_DIFFERS, rec, posting, "amounts differ")
        elif i_posted:
            if rec.state == TxnState.REVERSED:
                reason = "reversed at the switch, posted at the issuer"
                self._differ(REVERSED_SWITCH_ONLY, rec, posting, reason)
            else:
                self._differ(ISSUER_ONLY, rec, posting, _switch_reason(rec))
        elif posting.reversed:
            reason = "reversed at the issuer, posted at the switch"
            self._differ(REVERSED_ISSUER_ONLY, rec, posting, reason)
        else:
            self._differ(SWITCH_ONLY, rec, posting, "declined at the issuer")

    def _count(self, category: str) -> None:
        self.report.counts[category] += 1

    def _differ(
        self,
        category: str,
        rec: SwitchRecord | None,
        posting: IssuerPosting | None,
        reason: str,
    ) -> None:
        self._count(category)
        key = rec.key if rec is not None else None
        if key is None and posting is not None:
            key = posting.key
        self.report.exceptions.append(
            Difference(
                category=category,
                rrn=None if rec is None else rec.rrn,
                issuer_stan=None if key is None else key[0],
                issuer_transmission=None if key is None else key[1],
                pan_masked=rec.pan_masked
                if rec is not None and rec.pan_masked
                else (None if posting is None else posting.pan_masked),
                switch_amount=None if rec is None else rec.amount,
                issuer_amount=None if posting is None else posting.amount,
                switch_state=None if rec is None else rec.state,
                switch_response_code=None if rec is None else rec.response_code,
                issuer_state="unknown" if posting is None else posting.status,
                reason=reason,
            )
        )


def reconcile(
    day: date,
    issuer_id: str,
    postings: Iterator[IssuerPosting] | list[IssuerPosting],
    switch: Iterator[SwitchRecord] | list[SwitchRecord],
) -> Report:
    """All at once (tests, small days): see :class:`Reconciler`."""
    rec = Reconciler(day, issuer_id)
    for posting in postings:
        rec.add_posting(posting)
    for record in switch:
        rec.add_switch(record)
    return rec.finish()


def _flag(value: str, name: str, line: int) -> bool:
    if value not in ("0", "1"):
        raise PostingFileError(f"line {line}: {name} must be 0 or 1")
    return value == "1"


def parse_posting(row: dict[str, str], line: int) -> IssuerPosting:
    """One CSV row (a dict by header) checked; :class:`PostingFileError` names the line."""
    mti, stan, when = row["mti"], row["stan"], row["transmission"]
    if not _digits(mti, 4):
        raise PostingFileError(f"line {line}: mti must be 4 digits")
    if not _digits(stan, 6):
        raise PostingFileError(f"line {line}: stan must be 6 digits")
    if not _digits(when, 10):
        raise PostingFileError(f"line {line}: transmission must be 10 digits (MMDDhhmmss)")
    amount_text = row["amount"]
    if not (amount_text.isascii() and amount_text.isdigit()) or int(amount_text) >= _MAX_AMOUNT:
        raise PostingFileError(f"line {line}: amount must be 0 to 12 digits of minor units")
    auth = row["auth_code"]
    if len(auth) > 6 or (auth and not (auth.isascii() and auth.isalnum())):
        raise PostingFileError(f"line {line}: auth_code must be up to 6 letters or digits")
    kind = row["kind"]
    if not _digits(kind, 2):
        raise PostingFileError(f"line {line}: kind must be 2 digits (processing code)")
    pan = row["pan_masked"]
    if len(pan) > 19 or not pan.isascii():
        raise PostingFileError(f"line {line}: pan_masked is not a masked PAN")
    return IssuerPosting(
        mti=mti,
        stan=stan,
        transmission=when,
        kind=kind,
        amount=int(amount_text),
        auth_code=auth,
        approved=_flag(row["approved"], "approved", line),
        reversed=_flag(row["reversed"], "reversed", line),
        pan_masked=mask_pan(pan),  # masked again: a clear PAN never goes further
    )


def read_postings(path: str | Path) -> Iterator[IssuerPosting]:
    """The postings of an issuer's file (header :data:`POSTING_COLUMNS`, any column order)."""
    try:
        with Path(path).open(newline="", encoding="ascii") as src:
            reader = csv.DictReader(src)
            header = reader.fieldnames or []
            missing = [c for c in POSTING_COLUMNS if c not in header]
            if missing:
                raise PostingFileError(f"not a posting file: missing {', '.join(missing)}")
            for row in reader:
                line = reader.line_num
                if None in row or any(v is None for v in row.values()):
                    raise PostingFileError(f"line {line}: wrong number of columns")
                yield parse_posting(row, line)
    except UnicodeDecodeError:
        raise PostingFileError("the posting file is not ASCII text") from None
    except csv.Error as exc:
        raise PostingFileError(f"malformed CSV: {exc}") from None
    except OSError as exc:
        raise PostingFileError(f"cannot read the posting file: {exc.strerror}") from None
