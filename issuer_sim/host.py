"""The issuer's authorisation logic: pure, one request in, one answer out.

Holds (0100), completions (0220), purchases, cash, refunds and balance inquiries (0200), and
reversals (0400/0420) applied exactly once. A retransmitted request (same MTI, STAN and
transmission time) gets its first answer again and changes nothing.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass, field

from issuer_sim import keys
from issuer_sim.accounts import Account, AccountBook
from issuer_sim.emv import EmvAuthenticator
from protocols import keychange
from protocols.bounded import BoundedFifo
from protocols.message import Message
from protocols.mti import response_mti
from protocols.validate import card_of, format_issue

ECHO = ("2", "3", "4", "7", "11", "12", "13", "15", "32", "37", "41", "42", "49")
_RESPONSE_MTI: dict[str, str] = {}
"""Request MTI -> response MTI, filled as they are seen (a handful)."""


def _response_mti(mti: str) -> str:
    answer = _RESPONSE_MTI.get(mti)
    if answer is None:
        answer = response_mti(mti)  # raises for an MTI that has no response, every time
        if len(_RESPONSE_MTI) < 256:
            _RESPONSE_MTI[mti] = answer
    return answer


@dataclass(slots=True)
class Posting:
    """What a request did to an account, so a reversal can undo exactly that."""

    mti: str
    kind: str
    pan: str = field(repr=False)
    amount: int
    approved: bool
    auth_code: str = ""
    reversed: bool = False


def balance_field(currency: str, amount: int) -> str:
    """SPEC field 54: account type 00, amount type 02 (available), currency, C/D, 12 digits."""
    sign = "C" if amount >= 0 else "D"
    return f"0002{currency}{sign}{abs(amount):012d}"


class IssuerHost:
    def __init__(
        self,
        book: AccountBook,
        *,
        max_records: int = 1_000_000,
        emv: EmvAuthenticator | None = None,
    ) -> None:
        self.book = book
        # ARQC verification (field 55); without an IMK-AC every cryptogram is declined 05.
        self.emv = emv or EmvAuthenticator(book.issuer, None)
        # The oldest records go first past the bound (O(1): a million of each is the default).
        self.postings: BoundedFifo[tuple[str, str], Posting] = BoundedFifo(max_records)
        self.answers: BoundedFifo[tuple[str, str, str], Message] = BoundedFifo(max_records)
        self._auth = itertools.count(100001)
        self.reversals_applied = 0
        self.advices_applied = 0
        self.cutovers: list[tuple[dt.datetime, str | None]] = []
        """Cutover messages (0800/201) received: when, and their field 15 (new business
        date, MMDD) if any. One a day: not bounded."""
        self._month: tuple[int, int, str] = (0, 0, "")
        """(year, month, "YYMM") of the last request: expiry checks format it once a month."""

    def _auth_code(self) -> str:
        return f"{next(self._auth) % 1_000_000:06d}"

    def handle(self, msg: Message, now: dt.datetime) -> Message:
        security = self.book.security
        if format_issue(msg.fields) is not None:
            # A field that breaks its format (amount with a control byte...) is a format
            # error, 30, before anything reads a number out of it; its answer echoes only the
            # well-formed fields, so it encodes.
            good = {k: v for k, v in msg.fields.items() if format_issue({k: v}) is None}
            answer = self._answer(Message(msg.mti, good), "30")
            return security.seal(answer) if security is not None else answer
        if security is not None and (bad_mac := security.check_mac(msg)) is not None:
            # Not remembered: a retransmission with the right MAC is processed normally.
            return security.seal(self._answer(msg, bad_mac))
        key = (msg.mti, msg.fields.get("11", ""), msg.fields.get("7", ""))
        previous = self.answers.get(key)
        if previous is not None:
            return previous
        answer = self._handle(msg, now)
        if security is not None:
            security.seal(answer)
        self.answers[key] = answer
        return answer

    def _answer(self, msg: Message, rc: str, extra: dict[str, str] | None = None) -> Message:
        request = msg.fields
        fields = {k: request[k] for k in ECHO if k in request}
        if "90" in request:
            fields["90"] = request["90"]
        if extra:
            fields.update(extra)
        fields["39"] = rc
        return Message(_response_mti(msg.mti), fields)

    def _handle(self, msg: Message, now: dt.datetime) -> Message:
        mti = msg.mti
        if mti == "0800" and keychange.is_key_change(msg):
            security = self.book.security
            if security is None:
                return keychange.answer(msg, keychange.REFUSED)
            return keys.accept(security, msg)
        if mti == "0800":
            code = msg.fields.get("70")
            if code == "201":  # cutover: the acquirer's business day moved on
                self.cutovers.append((now, msg.fields.get("15")))
            network: dict[str, str] = {k: msg.fields[k] for k in ("15", "70") if k in msg.fields}
            return self._answer(msg, "00", network)
        if mti in ("0400", "0420"):
            return self._reverse(msg)
        if mti == "0120":
            return self._stand_in_advice(msg)
        if mti not in ("0100", "0200", "0220"):
            return self._answer(msg, "12")
        pan, expiry = card_of(msg)
        account = self.book.find(pan)
        kind = msg.fields.get("3", "000000")[:2]
        amount = int(msg.fields.get("4", "0"))
        currency = msg.fields.get("49", "156")
        if mti == "0220":
            return self._complete(msg, account, pan, amount)
        rc = self._check_card(account, expiry, now)
        if rc is None:
            assert account is not None
            rc = self._check_cardholder(msg, account, pan)
        # authenticate() answers None without field 55: skip the call for most requests.
        chip = (
            self.emv.authenticate(msg, account)
            if account is not None and "55" in msg.fields
            else None
        )
        if rc is None and chip is not None:
            rc = chip.rc  # None when the ARQC verified
        if rc is None:
            assert account is not None
            rc = self._apply(mti, kind, account, amount, msg)
        posting = Posting(mti, kind, pan, amount, rc == "00")
        extra: dict[str, str] = {}
        if rc == "00":
            posting.auth_code = self._auth_code()
            extra["38"] = posting.auth_code
            assert account is not None
            extra["54"] = balance_field(currency, account.available)
        issuer_data = chip.issuer_data(rc) if chip is not None else None
        if issuer_data is not None:
            extra["55"] = issuer_data  # tag 91: ARPC || ARC
        self.postings[(msg.fields.get("11", ""), msg.fields.get("7", ""))] = posting
        return self._answer(msg, rc, extra)

    def _check_cardholder(self, msg: Message, account: Account, pan: str) -> str | None:
        """PIN (field 52) and, on manual entry, CVV2 (field 48): see issuer_sim/pin.py."""
        pin_block = msg.fields.get("52")
        manual = msg.fields.get("22", "")[:2] == "01"
        if pin_block is None and not manual:
            return None
        security = self.book.security
        if security is None:
            return "96"  # no keys to verify a PIN or CVV2 with
        if pin_block is not None:
            rc = security.check_pin(account, pan, pin_block)
            if rc is not None:
                return rc
        return security.check_cvv2(account, pan, msg.fields.get("48")) if manual else None

    def _check_card(
        self, account: Account | None, expiry: str | None, now: dt.datetime
    ) -> str | None:
        if account is None:
            return "14"
        if account.status in ("lost", "stolen"):
            return "41"
        if account.status != "active":
            return "05"
        year, month, today = self._month
        if now.month != month or now.year != year:
            today = now.strftime("%y%m")
            self._month = (now.year, now.month, today)
        if account.expiry < today or (expiry is not None and expiry != account.expiry):
            return "54"
        return None

    def _apply(self, mti: str, kind: str, account: Account, amount: int, msg: Message) -> str:
        if kind == "31":
            return "00"
        if kind == "20":
            account.balance += amount
            return "00"
        if amount > account.available:
            return "51"
        if mti == "0100":
            account.holds[f"{msg.fields.get('11')}{msg.fields.get('7')}"] = amount
        else:
            account.balance -= amount
        return "00"

    def _complete(self, msg: Message, account: Account | None, pan: str, amount: int) -> Message:
        # An advice cannot be declined: release the hold it completes, then post the amount.
        if account is None:
            return self._answer(msg, "14")
        f90 = msg.fields.get("90", "")
        hold_key = f90[4:20]
        account.holds.pop(hold_key, None)
        account.balance -= amount
        self.postings[(msg.fields.get("11", ""), msg.fields.get("7", ""))] = Posting(
            "0220", "00", pan, amount, True
        )
        return self._answer(msg, "00")

    def _stand_in_advice(self, msg: Message) -> Message:
        """0120: the switch approved in stand-in; an advice cannot be declined, so it is
        posted as the request it stands for (field 90's MTI: 0100 holds, 0200 debits) even
        beyond the balance, under its own STAN and time (what a reversal names)."""
        pan, _ = card_of(msg)
        account = self.book.find(pan)
        if account is None:
            return self._answer(msg, "14")
        original_mti = msg.fields.get("90", "0200")[:4]
        kind = msg.fields.get("3", "000000")[:2]
        amount = int(msg.fields.get("4", "0"))
        stan, when = msg.fields.get("11", ""), msg.fields.get("7", "")
        self.emv.note_advice(msg, account)
        if original_mti == "0100":
            account.holds[f"{stan}{when}"] = amount
        elif kind in ("00", "01"):
            account.balance -= amount
        posting = Posting(original_mti, kind, pan, amount, True, self._auth_code())
        self.postings[(stan, when)] = posting
        self.advices_applied += 1
        return self._answer(msg, "00")

    def _reverse(self, msg: Message) -> Message:
        f90 = msg.fields.get("90", "")
        posting = self.postings.get((f90[4:10], f90[10:20]))
        if posting is None:
            return self._answer(msg, "25")
        if posting.reversed or not posting.approved:
            return self._answer(msg, "00")
        # Field 95 (replacement amounts) makes it partial: its first 12 digits stay posted.
        f95 = msg.fields.get("95", "")
        keep = int(f95[:12]) if len(f95) >= 12 and f95[:12].isdigit() else 0
        amount = max(0, posting.amount - keep)
        account = self.book.find(posting.pan)
        if account is not None:
            if posting.mti == "0100":
                hold_key = f"{f90[4:10]}{f90[10:20]}"
                if keep:
                    account.holds[hold_key] = keep
                else:
                    account.holds.pop(hold_key, None)
            elif posting.kind == "20":
                account.balance -= amount
            elif posting.kind != "31":
                account.balance += amount
        posting.amount -= amount
        posting.reversed = posting.amount == 0
        self.reversals_applied += 1
        return self._answer(msg, "00")
