"""EMVCo consumer-presented QR: the published example, build/decode, typed errors."""

from __future__ import annotations

import base64
import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.emv import Tlv, TlvItem, template
from protocols.emv import decode as tlv_decode
from protocols.errors import LocalProtocolError, RemoteProtocolError
from protocols.qr_cpm import (
    ConsumerQr,
    CpmError,
    CpmFormatError,
    CpmMissingError,
    CpmVersionError,
    build,
    decode,
    encode,
)

# The example of the EMVCo QRCPS Consumer-Presented Mode specification: two application
# templates (Product1, Product2), common data with PAN 1234567890123458, name CARDHOLDER/EMV,
# language "ruesdeen", and a common data transparent template with 9F10 9F26 9F36 9F37.
EMVCO_SAMPLE = (
    "hQVDUFYwMWETTwegAAAAVVVVUAhQcm9kdWN0MWETTwegAAAAZmZmUAhQcm9kdWN0MmJJWggSNFZ4kBI0WF8gDkNB"
    "UkRIT0xERVIvRU1WXy0IcnVlc2RlZW5kIZ8QBwYBCgMAAACfJghYT9OF+iNLzJ82AgABnzcEbVjvEw=="
)
PAN = "6250940000000027"
AID = "A000000333010101"


def payload_of(*items: TlvItem | tuple[str, bytes]) -> str:
    return base64.b64encode(Tlv(items).encode()).decode()


def app(*items: tuple[str, bytes] | TlvItem) -> TlvItem:
    return template("61", items)


PFI = ("85", b"CPV01")
AID_ITEM = ("4F", bytes.fromhex(AID))
PAN_ITEM = ("5A", bytes.fromhex(PAN))


def test_emvco_sample() -> None:
    qr = decode(EMVCO_SAMPLE)
    assert qr.aid == "A0000000555555"
    assert qr.label == "Product1"
    assert qr.pan == "1234567890123458"
    assert qr.cardholder_name == "CARDHOLDER/EMV"
    assert qr.expiry is None
    assert qr.pan_sequence is None
    assert qr.emv.pairs() == [
        ("9F10", bytes.fromhex("06010A03000000")),
        ("9F26", bytes.fromhex("584FD385FA234BCC")),
        ("9F36", bytes.fromhex("0001")),
        ("9F37", bytes.fromhex("6D58EF13")),
    ]
    assert qr.tlv.get_all("61")[1] == bytes.fromhex("4F07A000000066666650085072") + b"oduct2"
    assert encode(qr.tlv) == EMVCO_SAMPLE


def test_build_and_decode_for_the_simulator() -> None:
    emv = [("9F26", bytes.fromhex("8E19F8B3C2A1D4E7")), ("9F27", b"\x80"), ("9F36", b"\x00\x07")]
    payload = build(
        aid=AID,
        pan=PAN,
        expiry="3012",
        label="GAMMA",
        pan_sequence=1,
        cardholder_name="LI/LEI",
        emv=emv,
    )
    qr = decode(payload)
    assert (qr.aid, qr.pan, qr.expiry, qr.label, qr.pan_sequence) == (AID, PAN, "3012", "GAMMA", 1)
    assert qr.cardholder_name == "LI/LEI"
    assert qr.track2 is None
    assert qr.emv.pairs() == [("5F34", b"\x01"), *emv]
    app_tlv = qr.tlv.template("61")
    assert app_tlv is not None
    assert app_tlv.get("5F24") == bytes.fromhex("301231")  # last day of the month
    assert qr.masked_pan == "625094******0027"


def test_expiry_day_of_february() -> None:
    for expiry, day in (("2802", "29"), ("2902", "28"), ("0002", "29"), ("2804", "30")):
        app_tlv = decode(build(aid=AID, pan=PAN, expiry=expiry)).tlv.template("61")
        assert app_tlv is not None
        assert app_tlv.get("5F24") == bytes.fromhex(expiry + day)


def test_track2_instead_of_pan() -> None:
    payload = build(
        aid=AID, pan="625094000000002", expiry="2912", use_track2=True, service_code="220"
    )
    qr = decode(payload)
    assert (qr.pan, qr.expiry, qr.service_code) == ("625094000000002", "2912", "220")
    assert qr.track2 == bytes.fromhex("625094000000002D2912220F")  # odd count: one F pad
    # Track 2 gives the expiry when 5F24 is absent.
    qr = decode(payload_of(PFI, app(AID_ITEM, ("57", bytes.fromhex("6250940000000027D2812201")))))
    assert (qr.pan, qr.expiry, qr.service_code) == (PAN, "2812", "201")


def test_pan_and_data_from_the_common_template() -> None:
    common = template(
        "62",
        [PAN_ITEM, ("5F24", bytes.fromhex("291231")), template("64", [("9F26", bytes(8))])],
    )
    qr = decode(payload_of(PFI, app(AID_ITEM, ("50", b"APP")), common))
    assert (qr.pan, qr.expiry, qr.label) == (PAN, "2912", "APP")
    assert qr.emv.pairs() == [("9F26", bytes(8))]


def test_cryptogram_directly_in_the_application_template() -> None:
    # SPEC: "application template 61 with 4F, 5A, 5F24 and optionally 9F26 etc."
    qr = decode(
        payload_of(
            PFI,
            app(
                AID_ITEM,
                PAN_ITEM,
                ("5F24", bytes.fromhex("301231")),
                ("9F26", bytes(8)),
                ("9F27", b"\x80"),
                ("9F10", b"\x01\x02"),
            ),
        )
    )
    assert qr.emv.tags() == ["9F26", "9F27", "9F10"]


def test_application_data_wins_over_common_data() -> None:
    common = template("62", [("5A", bytes.fromhex("4761730000000011"))])
    qr = decode(payload_of(PFI, app(AID_ITEM, PAN_ITEM), common))
    assert qr.pan == PAN


def test_repr_shows_no_card_data() -> None:
    qr = decode(build(aid=AID, pan=PAN, expiry="3012", cardholder_name="LI/LEI", use_track2=True))
    text = repr(qr)
    assert PAN not in text
    assert "3012" not in text
    assert "LI/LEI" not in text
    assert AID in text


@pytest.mark.parametrize(
    ("payload", "error", "match"),
    [
        ("not base64!", CpmFormatError, "base64"),
        ("hQVDUFYwMW", CpmFormatError, "base64"),  # bad padding
        ("hQVDUFYw\nMWE=", CpmFormatError, "base64"),
        ("hQVDUFYwMWE=é", CpmFormatError, "base64"),
        (base64.b64encode(b"\x85\x05CPV").decode(), CpmFormatError, "BER-TLV"),
        (base64.b64encode(b"\x85\x05CPV01\x00").decode(), CpmFormatError, "BER-TLV"),
        ("", CpmMissingError, "85"),
        (payload_of(app(AID_ITEM, PAN_ITEM)), CpmMissingError, "85"),
        (payload_of(app(AID_ITEM, PAN_ITEM), PFI), CpmMissingError, "85"),
        (payload_of(("85", b"CPV02"), app(AID_ITEM, PAN_ITEM)), CpmVersionError, "85"),
        (payload_of(PFI), CpmMissingError, "61"),
        (payload_of(PFI, template("62", [PAN_ITEM])), CpmMissingError, "61"),
        (payload_of(PFI, app(PAN_ITEM)), CpmMissingError, "4F"),
        (payload_of(PFI, app(("4F", b"\xa0\x00"), PAN_ITEM)), CpmFormatError, "4F"),
        (payload_of(PFI, app(AID_ITEM)), CpmMissingError, "5A"),
        (
            payload_of(PFI, app(AID_ITEM, ("5A", bytes.fromhex("62509400000A0027")))),
            CpmFormatError,
            "5A",
        ),
        (payload_of(PFI, app(AID_ITEM, ("5A", bytes.fromhex("62509400")))), CpmFormatError, "5A"),
        (
            payload_of(PFI, app(AID_ITEM, ("57", bytes.fromhex("6250940000000027")))),
            CpmFormatError,
            "57",
        ),
        (
            payload_of(PFI, app(AID_ITEM, ("57", bytes.fromhex("6250940000000027D2813F")))),
            CpmFormatError,
            "57",
        ),
        (
            payload_of(PFI, app(AID_ITEM, ("57", bytes.fromhex("6250940000000027D281220F")))),
            CpmFormatError,
            "57",
        ),
        (
            payload_of(PFI, app(AID_ITEM, PAN_ITEM, ("5F24", bytes.fromhex("301331")))),
            CpmFormatError,
            "5F24",
        ),
        (
            payload_of(PFI, app(AID_ITEM, PAN_ITEM, ("5F24", bytes.fromhex("301200")))),
            CpmFormatError,
            "5F24",
        ),
        (
            payload_of(PFI, app(AID_ITEM, PAN_ITEM, ("5F24", bytes.fromhex("3012")))),
            CpmFormatError,
            "5F24",
        ),
        (
            payload_of(PFI, app(AID_ITEM, PAN_ITEM, ("5F34", bytes.fromhex("0A")))),
            CpmFormatError,
            "5F34",
        ),
        (payload_of(PFI, app(AID_ITEM, PAN_ITEM, ("50", b"\xff\xfe"))), CpmFormatError, "50"),
        (payload_of(PFI, app(AID_ITEM, PAN_ITEM, ("5F20", b"A\x00B"))), CpmFormatError, "5F20"),
        ("A" * 2052, CpmFormatError, "longer than"),
    ],
)
def test_bad_payloads(payload: str, error: type[CpmError], match: str) -> None:
    with pytest.raises(error, match=match) as info:
        decode(payload)
    err = info.value
    assert isinstance(err, RemoteProtocolError)
    assert (err.field, err.rc) == ("qr", "30")
    assert err.code.startswith("qr-")
    assert PAN not in str(err)


def test_bytes_and_surrounding_whitespace_accepted() -> None:
    payload = build(aid=AID, pan=PAN, expiry="3012")
    assert decode(payload.encode()).pan == PAN
    assert decode(f" {payload}\n").pan == PAN
    with pytest.raises(CpmFormatError, match="text"):
        decode(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pan": "12345"}, "PAN"),
        ({"pan": "62509400000000AB"}, "PAN"),
        ({"expiry": "3013"}, "month"),
        ({"expiry": "30-1"}, "YYMM"),
        ({"aid": "A000"}, "5 to 16"),
        ({"aid": "XYZ"}, "hex"),
        ({"pan_sequence": 100}, "0..99"),
        ({"service_code": "2O1"}, "service code"),
        ({"label": "bad\x00label"}, "cannot build"),
    ],
)
def test_build_rejects_bad_input(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"aid": AID, "pan": PAN, "expiry": "3012", **kwargs}
    with pytest.raises(LocalProtocolError, match=match):
        build(**args)  # type: ignore[arg-type]


# Properties -----------------------------------------------------------------------------------

EMV_TAGS = ["9F26", "9F27", "9F10", "9F37", "9F36", "95", "9A", "9C", "9F02", "9F03", "5F2A", "82"]


@st.composite
def cards(draw: st.DrawFn) -> dict[str, object]:
    return {
        "aid": draw(st.binary(min_size=5, max_size=16)).hex().upper(),
        "pan": draw(st.text("0123456789", min_size=12, max_size=19)),
        "expiry": f"{draw(st.integers(0, 99)):02d}{draw(st.integers(1, 12)):02d}",
        "label": draw(
            st.none()
            | st.text(
                st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=16
            )
        ),
        "pan_sequence": draw(st.none() | st.integers(0, 99)),
        "cardholder_name": draw(
            st.none() | st.text(st.characters(categories=["L"]), min_size=2, max_size=26)
        ),
        "use_track2": draw(st.booleans()),
        "emv": draw(
            st.lists(st.tuples(st.sampled_from(EMV_TAGS), st.binary(max_size=32)), max_size=12)
        ),
    }


@given(cards())
def test_build_decode_roundtrip(card: dict[str, object]) -> None:
    payload = build(**card)  # type: ignore[arg-type]
    qr = decode(payload)
    assert isinstance(qr, ConsumerQr)
    assert (qr.aid, qr.pan, qr.expiry, qr.label) == (
        card["aid"],
        card["pan"],
        card["expiry"],
        card["label"],
    )
    assert qr.pan_sequence == card["pan_sequence"]
    assert qr.cardholder_name == card["cardholder_name"]
    assert (qr.track2 is not None) == card["use_track2"]
    psn = (
        []
        if card["pan_sequence"] is None
        else [("5F34", bytes.fromhex(f"{card['pan_sequence']:02d}"))]
    )
    assert qr.emv.pairs() == psn + card["emv"]  # type: ignore[operator]
    assert encode(qr.tlv) == payload
    assert tlv_decode(base64.b64decode(payload)).tags() == ["85", "61"]


@given(st.text(max_size=300))
def test_random_text_raises_only_cpm_errors(text: str) -> None:
    with contextlib.suppress(CpmError):  # anything else fails the test
        decode(text)


@given(st.binary(max_size=300))
def test_random_base64_raises_only_cpm_errors(data: bytes) -> None:
    with contextlib.suppress(CpmError):
        decode(base64.b64encode(data).decode())


@given(cards(), st.data())
def test_corrupted_tlv_raises_only_cpm_errors(card: dict[str, object], data: st.DataObject) -> None:
    raw = bytearray(base64.b64decode(build(**card)))  # type: ignore[arg-type]
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] = data.draw(st.integers(0, 255))
    with contextlib.suppress(CpmError):
        decode(base64.b64encode(raw).decode())
