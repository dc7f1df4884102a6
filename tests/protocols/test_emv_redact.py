"""Tag dictionary and redaction of EMV data for logs: no PAN, track data or name in clear."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.emv import CONTACTLESS_TAGS, Tlv, decode, mask_pan_digits, redact, template
from protocols.emv_tags import TAGS, tag_info

PAN = "4761730000000011"
TRACK2 = bytes.fromhex("4761730000000011D29122011234567800000F")


@pytest.mark.parametrize(
    "tag", ["5A", "57", "56", "5F20", "5F24", "5F30", "9F0B", "9F1F", "9F20", "9F6B", "99"]
)
def test_card_data_tags_are_sensitive(tag: str) -> None:
    assert tag_info(tag).sensitive


@pytest.mark.parametrize("tag", CONTACTLESS_TAGS)
def test_field55_tags_are_known_and_loggable(tag: str) -> None:
    info = tag_info(tag)
    assert info.name != "unknown"
    assert not info.sensitive


def test_unknown_tags_are_hidden() -> None:
    info = tag_info("DF7F")
    assert info.name == "unknown"
    assert info.sensitive


def test_dictionary_is_well_formed() -> None:
    for tag, info in TAGS.items():
        assert tag == tag.upper()
        assert bytes.fromhex(tag)
        assert 0 <= info.min_len <= info.max_len


def test_redact_masks_pan_and_hides_track_data() -> None:
    tlv = Tlv(
        [
            ("5A", bytes.fromhex(PAN)),
            ("57", TRACK2),
            ("5F20", b"DOE/JOHN"),
            ("5F24", bytes.fromhex("291231")),
            ("9F26", bytes.fromhex("8E19F8B3C2A1D4E7")),
            ("DF01", b"secret"),
        ]
    )
    out = redact(tlv)
    assert out == {
        "5A": "476173******0011",
        "57": "<19 bytes hidden>",
        "5F20": "<8 bytes hidden>",
        "5F24": "<3 bytes hidden>",
        "9F26": "8E19F8B3C2A1D4E7",
        "DF01": "<6 bytes hidden>",
    }


def test_redact_odd_length_pan_padded_with_f() -> None:
    out = redact(Tlv([("5A", bytes.fromhex("6250940000000027123F"))]))
    assert out == {"5A": "625094*********7123"}


def test_redact_pan_that_is_not_digits_is_hidden() -> None:
    assert redact(Tlv([("5A", bytes.fromhex("47617300000000AB"))])) == {"5A": "<8 bytes hidden>"}


def test_redact_walks_templates_and_numbers_repeats() -> None:
    record = template("70", [("5A", bytes.fromhex(PAN)), ("9F07", b"\xff\x00")])
    data = Tlv([record, ("86", b"\x01"), ("86", b"\x02"), ("86", b"\x03")]).encode()
    out = redact(data)
    assert out == {
        "70": {"5A": "476173******0011", "9F07": "FF00"},
        "86": "01",
        "86#2": "02",
        "86#3": "03",
    }
    # Same answer from a recursively decoded Tlv.
    assert redact(decode(data, recursive=True)) == out


def test_redact_unparsable_template_is_hidden() -> None:
    assert redact(Tlv([("70", b"\x5a\x08\x47")])) == {"70": "<3 bytes hidden>"}


def test_redact_bad_bytes_gives_reason_only() -> None:
    data = b"\x5a\x09" + bytes.fromhex(PAN)
    out = redact(data)
    assert out == {"error": "tag 5A: value of 9 bytes truncated to 8 at offset 2", "length": "10"}


def test_mask_pan_digits() -> None:
    assert mask_pan_digits("4761730000000011") == "476173******0011"
    assert mask_pan_digits("476173000000001") == "476173*****0001"
    assert mask_pan_digits("123456789012") == "************"


@given(st.text(alphabet="0123456789", min_size=13, max_size=19))
def test_redacted_output_never_contains_the_middle_digits(pan: str) -> None:
    padded = pan + "F" * (len(pan) % 2)
    out = redact(Tlv([("5A", bytes.fromhex(padded)), ("57", bytes.fromhex(padded))]))
    assert out["5A"] == pan[:6] + "*" * (len(pan) - 10) + pan[-4:]
    assert pan not in str(out)
