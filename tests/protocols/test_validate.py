from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.codec import Codec
from protocols.currency import is_payment_currency
from protocols.dialects import get_dialect
from protocols.keys import duplicate_key, link_key
from protocols.message import Message
from protocols.redact import mask_pan, redact_fields
from protocols.validate import (
    Field48Error,
    card_of,
    check_request,
    format_issue,
    luhn_ok,
    parse_field48,
    split_track2,
)


def req(**fields: str) -> Message:
    base = {
        "3": "000000",
        "4": "000000000100",
        "7": "1127101500",
        "11": "000001",
        "22": "021",
        "41": "T0000001",
        "49": "156",
        "2": "4761730000000011",
    }
    base.update(fields)
    return Message("0200", {k: v for k, v in base.items() if v != "-"})


def test_valid_purchase() -> None:
    assert check_request(req()) is None


@pytest.mark.parametrize(
    ("number", "value"),
    [("4", "00000000000\u00b2"), ("4", "0000000001\u0663\u0660"), ("11", "00000\u00b9"),
     ("2", "476173000000001\u00b9")],
)  # fmt: skip
def test_non_ascii_digits_are_a_format_error_not_a_crash(number: str, value: str) -> None:
    """str.isdigit() takes superscripts (which int() refuses) and other scripts' digits (which
    int() reads): an amount of '00000000000²' crashed check_request with a ValueError."""
    issue = check_request(req(**{number: value}))
    assert issue is not None
    assert (issue.field, issue.rc) == (number, "30")
    assert format_issue({number: value}) == issue


@pytest.mark.parametrize(
    ("fields", "field", "rc"),
    [
        ({"4": "-"}, "4", "30"),
        ({"4": "00000000ABCD"}, "4", "30"),
        ({"7": "1332101500"}, "7", "30"),
        ({"2": "4761730000000012"}, "2", "14"),
        ({"2": "-"}, "2", "30"),
        ({"3": "500000"}, "3", "12"),
        ({"4": "000000000000"}, "4", "13"),
        ({"3": "310000"}, "4", "13"),
        ({"53": "XYZ"}, "53", "30"),
        ({"123": "0" * 55}, "123", "30"),
        ({"123": "0" * 57}, "123", "30"),
        ({"123": "a" * 56}, "123", "30"),  # SPEC: upper case
        ({"123": "G" * 56}, "123", "30"),
        # ISO 4217: only active payment currencies (not 000, XXX 999, XTS 963, unassigned)
        ({"49": "000"}, "49", "30"),
        ({"49": "999"}, "49", "30"),
        ({"49": "963"}, "49", "30"),
        ({"49": "157"}, "49", "30"),
    ],
)
def test_field_issues(fields: dict[str, str], field: str, rc: str) -> None:
    issue = check_request(req(**fields))
    assert issue is not None
    assert (issue.field, issue.rc) == (field, rc)


def test_aes_dukpt_pin_field_123() -> None:
    value = "FFFF9876543210E0" + "00000001" + "0123456789ABCDEF" * 2
    msg = req(**{"123": value})
    assert check_request(msg) is None
    codec = Codec(get_dialect("terminal"))
    assert codec.decode(codec.encode(msg)).fields["123"] == value


def test_track2_card() -> None:
    msg = req(**{"2": "-", "35": "4761730000000011=28121010000000000"})
    assert check_request(msg) is None
    assert card_of(msg) == ("4761730000000011", "2812")
    assert split_track2("5413330000000019D2906") == ("5413330000000019", "2906")


def test_unknown_mti_is_invalid_transaction() -> None:
    issue = check_request(Message("0300", {"11": "000001"}))
    assert issue is not None
    assert issue.rc == "12"


def test_luhn() -> None:
    assert luhn_ok("4761730000000011")
    assert not luhn_ok("4761730000000012")


def test_keys_tell_reversal_from_original() -> None:
    original = req()
    reversal = Message("0400", dict(original.fields))
    assert duplicate_key(original) != duplicate_key(reversal)
    assert link_key(original) == ("000001", "1127101500")


def test_redaction() -> None:
    assert mask_pan("4761730000000011") == "476173******0011"
    shown = redact_fields(
        {
            "2": "4761730000000011",
            "35": "4761730000000011=2812",
            "52": "0123456789ABCDEF",
            "123": "FFFF9876543210E000000001" + "0123456789ABCDEF" * 2,
            "4": "000000000100",
        }
    )
    assert shown["123"] == "<56 hidden>"
    assert shown["2"] == "476173******0011"
    assert "4761730000000011" not in repr(shown)
    assert "0123456789ABCDEF" not in repr(shown)
    assert shown["4"] == "000000000100"


# --- the checks as first written (a loop and a call per field): the faster ones must agree

_REF_HEX = frozenset("0123456789ABCDEFabcdef")
_REF_TRACK2 = frozenset("0123456789=D")


def _ref_luhn(pan: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(pan)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _ref_format_ok(value: str, rule: tuple[int, int, str]) -> bool:
    lo, hi, kind = rule
    if not lo <= len(value) <= hi:
        return False
    if kind == "digits":
        return value.isdigit()
    if kind == "hex":
        return all(c in _REF_HEX for c in value)
    if kind == "HEX":
        return all(c in "0123456789ABCDEF" for c in value)
    if kind == "track2":
        return all(c in _REF_TRACK2 for c in value) and value[0].isdigit()
    return value.isprintable()


def _ref_check(msg: Message) -> tuple[str | None, str, str] | None:
    from protocols import validate as v

    mti = msg.mti
    mandatory = v._MANDATORY.get(mti)
    if mandatory is None:
        return ("t", "12", f"MTI {mti} is not accepted from terminals")
    fields = msg.fields
    for number in mandatory:
        if number not in fields:
            return (number, "30", "mandatory field missing")
    if mti in v._NEEDS_CARD and not any(n in fields for n in ("2", "35")):
        return ("2", "30", "neither PAN (2) nor track 2 (35) present")
    for number, value in fields.items():
        rule = v._FORMATS.get(number)
        if rule is not None and not _ref_format_ok(value, rule):
            return (number, "30", "bad content")
    if "7" in fields:
        f7 = fields["7"]
        mm, dd, hh, mi, ss = (int(f7[i : i + 2]) for i in range(0, 10, 2))
        if not (1 <= mm <= 12 and 1 <= dd <= 31 and hh < 24 and mi < 60 and ss < 60):
            return ("7", "30", "not a valid MMDDhhmmss")
    if "49" in fields and not is_payment_currency(fields["49"]):  # tested in test_currency
        return ("49", "30", "not an ISO 4217 payment currency")
    if mti == "0800":
        if fields["70"] not in v.NETWORK_CODES:
            return ("70", "12", "unsupported network management code")
        return None
    allowed = v._PROCESSING.get(mti)
    if allowed is not None and fields["3"][:2] not in allowed:
        return ("3", "12", "processing code not allowed for this MTI")
    if mti in v._NEEDS_CARD:
        pan = fields["2"] if "2" in fields else split_track2(fields["35"])[0]
        if not 12 <= len(pan) <= 19 or not pan.isdigit():
            return ("35", "30", "bad PAN in track 2")
        if not _ref_luhn(pan):
            return ("2", "14", "PAN fails the Luhn check")
        amount = int(fields["4"])
        inquiry = fields["3"][:2] == "31"
        if inquiry and amount != 0:
            return ("4", "13", "balance inquiry must carry amount zero")
        if not inquiry and amount == 0:
            return ("4", "13", "amount must be positive")
    return None


_DIGIT_TEXT = st.text(alphabet="0123456789", min_size=0, max_size=20)
_ODD_TEXT = st.text(alphabet="0123456789=DAFaf ²\u0660x\n", min_size=0, max_size=40)
_FIELD_VALUES = {
    "2": st.one_of(_DIGIT_TEXT, st.sampled_from(["4761730000000011", "4761730000000012"])),
    "3": st.sampled_from(["000000", "010000", "200000", "310000", "500000", "00000", "0000a0"]),
    "4": st.sampled_from(["000000000100", "000000000000", "00000000ABCD", "100"]),
    "7": st.sampled_from(["1127101500", "1332101500", "0001000000", "1231235959", "12312359"]),
    "11": st.sampled_from(["000001", "00001", "00000x"]),
    "22": st.sampled_from(["021", "051", "21"]),
    "35": st.sampled_from(
        ["4761730000000011=28121010000000000", "4761730000000011D2812", "=4761", "47617300"]
    ),
    "41": st.sampled_from(["T0000001", "T000001", "T000000\n"]),
    "49": st.sampled_from(["156", "840", "15a", "000", "999", "157"]),
    "53": st.sampled_from(["0" * 20, "XYZ", "a" * 20]),
    "123": st.sampled_from(["A" * 56, "a" * 56, "0" * 55]),
    "70": st.sampled_from(["001", "002", "301", "999"]),
    "90": st.sampled_from(["0" * 42, "0" * 41]),
    "95": st.sampled_from([" " * 42, "0" * 42]),
}


@st.composite
def _requests(draw: st.DrawFn) -> Message:
    mti = draw(st.sampled_from(["0100", "0200", "0220", "0400", "0420", "0800", "0300"]))
    numbers = draw(st.lists(st.sampled_from(sorted(_FIELD_VALUES)), unique=True))
    fields = {n: draw(st.one_of(_FIELD_VALUES[n], _ODD_TEXT)) for n in numbers}
    return Message(mti, fields)


@settings(max_examples=600, deadline=None)
@given(_requests())
def test_check_request_agrees_with_the_reference(msg: Message) -> None:
    try:
        expected: object = _ref_check(msg)
    except (ValueError, IndexError, KeyError) as exc:
        expected = type(exc)
    try:
        issue = check_request(msg)
        got: object = None if issue is None else (issue.field, issue.rc, issue.reason)
    except (ValueError, IndexError, KeyError) as exc:
        got = type(exc)
    assert got == expected


@given(st.one_of(_DIGIT_TEXT, _ODD_TEXT))
def test_luhn_agrees_with_the_reference(pan: str) -> None:
    assert luhn_ok(pan) == _ref_luhn(pan)


def test_field48_subelements() -> None:
    assert parse_field48("") == {}
    assert parse_field48("92031230104abcd") == {"92": "123", "01": "abcd"}


@pytest.mark.parametrize(
    "value",
    [
        "920",  # header cut short
        "92a3123",  # header not digits
        "9205123",  # value shorter than its length
        "92\u00b23",  # a digit to str.isdigit() that int() refuses: was a ValueError
        "\u0669\u0662031",  # Arabic-Indic digits, likewise
    ],
)
def test_field48_defects_are_field48_errors(value: str) -> None:
    with pytest.raises(Field48Error) as info:
        parse_field48(value)
    assert info.value.field == "48"
