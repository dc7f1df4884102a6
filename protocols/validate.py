"""Field checks for terminal requests (SPEC "Terminal dialect"): mandatory fields per MTI,
content formats, Luhn. Pure functions that say which field is wrong and which code to answer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from protocols.currency import is_payment_currency
from protocols.errors import RemoteProtocolError
from protocols.message import Message


@dataclass(frozen=True, slots=True)
class FieldIssue:
    field: str | None
    rc: str
    reason: str


def _digits(n: int) -> tuple[int, int, str]:
    return (n, n, "digits")


# field -> (min length, max length, character class)
_FORMATS: dict[str, tuple[int, int, str]] = {
    "2": (12, 19, "digits"),
    "3": _digits(6),
    "4": _digits(12),
    "7": _digits(10),
    "11": _digits(6),
    "12": _digits(6),
    "13": _digits(4),
    "14": _digits(4),
    "22": _digits(3),
    "23": _digits(3),
    "35": (13, 37, "track2"),
    "41": (8, 8, "text"),
    "42": (15, 15, "text"),
    "49": _digits(3),
    "53": (20, 20, "hex"),
    # SPEC "AES DUKPT terminals": 24 hex KSN then the 32 hex format 4 PIN block, upper case.
    "123": (56, 56, "HEX"),
    "70": _digits(3),
    "90": _digits(42),
    "95": (42, 42, "text"),
}

_MANDATORY: dict[str, tuple[str, ...]] = {
    "0100": ("3", "4", "7", "11", "22", "41", "49"),
    "0200": ("3", "4", "7", "11", "22", "41", "49"),
    "0220": ("3", "4", "7", "11", "41", "49"),
    "0400": ("3", "4", "7", "11", "41", "90"),
    "0420": ("3", "4", "7", "11", "41", "90"),
    "0800": ("7", "11", "70"),
}
_MANDATORY_SETS = {mti: frozenset(numbers) for mti, numbers in _MANDATORY.items()}
_NEEDS_CARD = frozenset({"0100", "0200", "0220"})
# Allowed first two digits of the processing code per MTI (SPEC table).
_PROCESSING: dict[str, frozenset[str]] = {
    "0100": frozenset({"00"}),
    "0200": frozenset({"00", "01", "20", "31"}),
    "0220": frozenset({"00"}),
}
NETWORK_CODES = frozenset({"001", "002", "301"})
_HEX = frozenset("0123456789ABCDEFabcdef")
_UPPER_HEX = frozenset("0123456789ABCDEF")
_TRACK2 = frozenset("0123456789=D")


_DOUBLED = bytes.maketrans(b"0123456789", b"0246813579")
"""An ASCII digit -> the digit of its Luhn doubling (2d, less 9 above 9)."""


def luhn_ok(pan: str) -> bool:
    if pan.isascii() and pan.isdigit():
        # Bytes summed in C: the digits in odd positions from the right as they are, the
        # others through the doubling table (every terminal request pays this).
        raw = pan.encode()
        total = sum(raw[-1::-2]) + sum(raw[-2::-2].translate(_DOUBLED)) - 48 * len(raw)
        return total % 10 == 0
    total = 0
    for i, ch in enumerate(reversed(pan)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def split_track2(track2: str) -> tuple[str, str]:
    """Track 2 equivalent ``PAN=YYMM...`` (or ``D`` separator) -> (PAN, expiry YYMM)."""
    for sep in ("=", "D"):
        idx = track2.find(sep)
        if idx > 0:
            return track2[:idx], track2[idx + 1 : idx + 5]
    return track2, ""


def _format_ok(value: str, rule: tuple[int, int, str]) -> bool:
    lo, hi, kind = rule
    if not lo <= len(value) <= hi:
        return False
    if kind == "digits":
        return value.isascii() and value.isdigit()
    if kind == "hex":
        return _HEX.issuperset(value)
    if kind == "HEX":
        return _UPPER_HEX.issuperset(value)
    if kind == "track2":
        return _TRACK2.issuperset(value) and value[0].isdigit()
    return value.isprintable()


# The last transmission date-time checked and its verdict: requests of one second share it.
_last_datetime: list[tuple[str, bool]] = [("", False)]


def _datetime_ok(mmddhhmmss: str) -> bool:
    last = _last_datetime[0]
    if last[0] == mmddhhmmss:
        return last[1]
    mm, dd, hh, mi, ss = (int(mmddhhmmss[i : i + 2]) for i in range(0, 10, 2))
    ok = 1 <= mm <= 12 and 1 <= dd <= 31 and hh < 24 and mi < 60 and ss < 60
    _last_datetime[0] = (mmddhhmmss, ok)
    return ok


def format_issue(fields: Mapping[str, str]) -> FieldIssue | None:
    """The first field whose content breaks its format (digits, hex, track 2, text and their
    lengths), as ``30``; ``None`` when every known field is well formed. What a host checks
    before it reads a number out of a field (the issuer simulator, the switch's terminals)."""
    formats = _FORMATS
    for number, value in fields.items():
        rule = formats.get(number)
        if rule is None:
            continue
        # _format_ok inlined for the common case (digits of the right length): a call per
        # field was most of this function's cost.
        # isdigit() alone takes '²' or '٣', which int() then refuses or reads as 3.
        if rule[2] == "digits":
            if rule[0] <= len(value) <= rule[1] and value.isascii() and value.isdigit():
                continue
        elif _format_ok(value, rule):
            continue
        return FieldIssue(number, "30", "bad content")
    return None


def check_request(msg: Message) -> FieldIssue | None:
    """First problem with a terminal request, or ``None``. Order: MTI, presence, format,
    processing code, card number, amount."""
    mti = msg.mti
    mandatory = _MANDATORY.get(mti)
    if mandatory is None:
        return FieldIssue("t", "12", f"MTI {mti} is not accepted from terminals")
    fields = msg.fields
    if not fields.keys() >= _MANDATORY_SETS[mti]:  # one C call when all are there
        for number in mandatory:
            if number not in fields:
                return FieldIssue(number, "30", "mandatory field missing")
    if mti in _NEEDS_CARD and "2" not in fields and "35" not in fields:
        return FieldIssue("2", "30", "neither PAN (2) nor track 2 (35) present")
    issue = format_issue(fields)
    if issue is not None:
        return issue
    if "7" in fields and not _datetime_ok(fields["7"]):
        return FieldIssue("7", "30", "not a valid MMDDhhmmss")
    # 3 digits are not enough: 000, 999 (XXX) or an unassigned code would open a new total
    if "49" in fields and not is_payment_currency(fields["49"]):
        return FieldIssue("49", "30", "not an ISO 4217 payment currency")
    if mti == "0800":
        if fields["70"] not in NETWORK_CODES:
            return FieldIssue("70", "12", "unsupported network management code")
        return None
    allowed = _PROCESSING.get(mti)
    if allowed is not None and fields["3"][:2] not in allowed:
        return FieldIssue("3", "12", "processing code not allowed for this MTI")
    if mti in _NEEDS_CARD:
        pan = fields["2"] if "2" in fields else split_track2(fields["35"])[0]
        if not 12 <= len(pan) <= 19 or not (pan.isascii() and pan.isdigit()):
            return FieldIssue("35", "30", "bad PAN in track 2")
        if not luhn_ok(pan):
            return FieldIssue("2", "14", "PAN fails the Luhn check")
        amount = int(fields["4"])
        inquiry = fields["3"][:2] == "31"
        if inquiry and amount != 0:
            return FieldIssue("4", "13", "balance inquiry must carry amount zero")
        if not inquiry and amount == 0:
            return FieldIssue("4", "13", "amount must be positive")
    return None


def card_of(msg: Message) -> tuple[str, str | None]:
    """(PAN, expiry YYMM or None) from field 2/14 or from track 2 (35)."""
    fields = msg.fields
    if "2" in fields:
        return fields["2"], fields.get("14")
    pan, expiry = split_track2(fields.get("35", ""))
    return pan, expiry or None


class Field48Error(RemoteProtocolError):
    """Field 48 is not a sequence of tag(2) length(2) value subelements."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, field="48")


def parse_field48(value: str) -> dict[str, str]:
    """Subelements of field 48: ``TTLLvalue`` repeated (2-digit tag and length)."""
    out: dict[str, str] = {}
    i = 0
    while i < len(value):
        head = value[i : i + 4]
        # isascii: str.isdigit() also takes digits int() refuses, such as "²"
        if len(head) != 4 or not head.isascii() or not head.isdigit():
            raise Field48Error("subelement header must be 4 digits")
        length = int(head[2:])
        item = value[i + 4 : i + 4 + length]
        if len(item) != length:
            raise Field48Error("subelement shorter than its length")
        out[head[:2]] = item
        i += 4 + length
    return out
