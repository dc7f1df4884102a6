from __future__ import annotations

import pytest

from protocols.keys import duplicate_key, link_key
from protocols.message import Message
from protocols.redact import mask_pan, redact_fields
from protocols.validate import card_of, check_request, luhn_ok, split_track2


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
    ],
)
def test_field_issues(fields: dict[str, str], field: str, rc: str) -> None:
    issue = check_request(req(**fields))
    assert issue is not None
    assert (issue.field, issue.rc) == (field, rc)


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
            "4": "000000000100",
        }
    )
    assert shown["2"] == "476173******0011"
    assert "4761730000000011" not in repr(shown)
    assert "0123456789ABCDEF" not in repr(shown)
    assert shown["4"] == "000000000100"
