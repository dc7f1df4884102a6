"""EMVCo merchant-presented QR: the published sample, strict decoding, build, corruption."""

from __future__ import annotations

import contextlib
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import qr_mpm
from protocols.crc import crc16_hex
from protocols.currency import EXPONENTS
from protocols.errors import LocalProtocolError, RemoteProtocolError
from protocols.qr_mpm import (
    COUNTRY_ALPHA2,
    MerchantQr,
    MpmCrcError,
    MpmCurrencyError,
    MpmError,
    MpmFormatError,
    MpmLengthError,
    MpmMissingError,
    amount_to_minor,
    build,
    decode,
    encode,
    encode_objects,
    minor_to_amount,
)

# The example payload of the EMVCo MPM specification (v1.0/1.1, Appendix A), CRC A13A.
EMVCO_SAMPLE = (
    "00020101021229300012D156000000000510A93FO3230Q31280012D15600000001030812345678"
    "520441115802CN5914BEST TRANSPORT6007BEIJING64200002ZH0104最佳运输0202北京"
    "540523.7253031565502016233030412340603***0708A60086670902ME9132"
    "0016A0112233449988770708123456786304A13A"
)

BASE = [
    ("00", "01"),
    ("01", "11"),
    ("26", "0013com.payswitch0115M00000000000001"),
    ("52", "5411"),
    ("53", "156"),
    ("58", "CN"),
    ("59", "Demo Grocery"),
    ("60", "Shanghai"),
]


def with_objects(*changes: tuple[str, str | None]) -> str:
    """BASE with objects replaced, added (at the end) or removed (value None), correct CRC."""
    objects = dict(BASE)
    for id_, value in changes:
        if value is None:
            objects.pop(id_, None)
        else:
            objects[id_] = value
    return encode(objects.items())


def test_emvco_sample() -> None:
    qr = decode(EMVCO_SAMPLE)
    assert qr.dynamic
    assert qr.crc == "A13A"
    assert (qr.mcc, qr.currency, qr.country) == ("4111", "156", "CN")
    assert (qr.name, qr.city) == ("BEST TRANSPORT", "BEIJING")
    assert (qr.amount, qr.amount_minor) == ("23.72", 2372)
    assert qr.tip_indicator == "01"
    assert [(a.id, a.gui, dict(a.fields)) for a in qr.accounts] == [
        ("29", "D15600000000", {"05": "A93FO3230Q"}),
        ("31", "D15600000001", {"03": "12345678"}),
    ]
    assert dict(qr.additional_data) == {"03": "1234", "06": "***", "07": "A6008667", "09": "ME"}
    assert dict(qr.language) == {"00": "ZH", "01": "最佳运输", "02": "北京"}
    unreserved = qr.objects[-2]
    assert unreserved.id == "91"
    assert unreserved.children is not None
    assert [(c.id, c.value) for c in unreserved.children] == [
        ("00", "A011223344998877"),
        ("07", "12345678"),
    ]
    assert qr.get("52") == "4111"
    assert qr.get("61") is None
    assert qr.account("d15600000001") is qr.accounts[1]
    assert qr.merchant_id() is None  # not one of ours
    # Byte-exact re-encoding, CRC recomputed over UTF-8 (template 64 is in Chinese).
    assert encode(qr.objects) == EMVCO_SAMPLE


def test_build_static_and_dynamic_for_demo_merchant() -> None:
    static = build(
        merchant_id="M00000000000001",
        name="Demo Grocery",
        city="Shanghai",
        mcc="5411",
        currency="156",
        country="156",
    )
    assert static == with_objects() == encode(BASE)
    qr = decode(static)
    assert not qr.dynamic
    assert qr.amount_minor is None
    assert qr.merchant_id() == "M00000000000001"

    dynamic = build(
        merchant_id="M00000000000001",
        name="Demo Grocery",
        city="Shanghai",
        mcc="5411",
        currency="156",
        country="CN",
        amount_minor=12345,
        reference_label="ORDER-1",
    )
    qr = decode(dynamic)
    assert qr.dynamic
    assert (qr.amount, qr.amount_minor) == ("123.45", 12345)
    assert dict(qr.additional_data) == {"05": "ORDER-1"}
    assert dynamic.startswith("000201010212")
    assert dynamic[-8:-4] == "6304"


def test_build_alternate_language_and_zero_exponent_currency() -> None:
    payload = build(
        merchant_id="M00000000000003",
        name="Demo Tokyo Store",
        city="Tokyo",
        mcc="5311",
        currency="392",
        country="392",
        amount_minor=500,
        alt_language="JA",
        alt_name="デモ東京ストア",
        alt_city="東京",
    )
    qr = decode(payload)
    assert (qr.amount, qr.amount_minor, qr.country) == ("500", 500, "JP")
    assert dict(qr.language) == {"00": "JA", "01": "デモ東京ストア", "02": "東京"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "N" * 26}, "longer than 25"),
        ({"city": "C" * 16}, "longer than 15"),
        ({"name": "商店"}, "printable ASCII"),
        ({"mcc": "54A1"}, "4 digits"),
        ({"country": "999"}, "no alpha-2"),
        ({"currency": "999", "amount_minor": 100}, "payment currency"),
        ({"currency": "999"}, "payment currency"),
        ({"amount_minor": 0}, "positive"),
        ({"merchant_id": ""}, "length 0"),
        ({"account_id": "52"}, "26..51"),
        ({"alt_name": "名"}, "language and a name"),
    ],
)
def test_build_rejects_bad_merchant_data(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {
        "merchant_id": "M1",
        "name": "Shop",
        "city": "City",
        "mcc": "5411",
        "currency": "156",
        "country": "CN",
        **kwargs,
    }
    with pytest.raises(LocalProtocolError, match=match):
        build(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "exponent", "minor"),
    [
        ("23.72", 2, 2372),
        ("98", 2, 9800),
        ("98.", 2, 9800),
        ("0.5", 2, 50),
        ("1.234", 3, 1234),
        ("500", 0, 500),
        ("500.", 0, 500),
        ("9999999999.99", 2, 999999999999),
    ],
)
def test_amount_to_minor(text: str, exponent: int, minor: int) -> None:
    assert amount_to_minor(text, exponent) == minor


@pytest.mark.parametrize(
    ("text", "exponent"),
    [
        ("", 2),
        (".5", 2),
        ("1.234", 2),
        ("5.0", 0),
        ("1,00", 2),
        ("1.2.3", 2),
        ("+1", 2),
        (" 1", 2),
        ("１２", 2),  # fullwidth digits are digits to str.isdigit, not to EMVCo
        ("99999999999.99", 2),  # 14 characters
    ],
)
def test_amount_to_minor_rejects(text: str, exponent: int) -> None:
    with pytest.raises(MpmFormatError):
        amount_to_minor(text, exponent)


def test_minor_to_amount() -> None:
    assert minor_to_amount(2372, 2) == "23.72"
    assert minor_to_amount(5, 2) == "0.05"
    assert minor_to_amount(500, 0) == "500"
    assert minor_to_amount(1, 3) == "0.001"
    with pytest.raises(LocalProtocolError):
        minor_to_amount(-1, 2)


@pytest.mark.parametrize("missing", ["01", "52", "53", "58", "59", "60"])
def test_missing_mandatory_object(missing: str) -> None:
    with pytest.raises(MpmMissingError, match=missing):
        decode(with_objects((missing, None)))


def test_missing_merchant_account() -> None:
    with pytest.raises(MpmMissingError, match="merchant account"):
        decode(with_objects(("26", None)))


def test_primitive_card_network_account_is_enough() -> None:
    qr = decode(with_objects(("26", None), ("04", "5555555555554444")))
    assert [(a.id, a.value, a.gui) for a in qr.accounts] == [("04", "5555555555554444", None)]


@pytest.mark.parametrize(
    ("payload", "error", "match"),
    [
        (with_objects()[:-4] + "0000", MpmCrcError, "does not match"),
        (with_objects()[:-4] + with_objects()[-4:].lower(), MpmCrcError, "uppercase"),
        (with_objects()[:-8], MpmCrcError, "6304"),
        ("", MpmCrcError, "6304"),
        ("6304", MpmCrcError, "6304"),
        (encode([("01", "11"), *BASE[2:], ("00", "01")]), MpmFormatError, "must come first"),
        (encode([*BASE[:2], ("00", "01"), *BASE[2:]]), MpmFormatError, "appears twice"),
        (with_objects(("00", "02")), MpmFormatError, "payload format indicator"),
        (with_objects(("01", "13")), MpmFormatError, "11 or 12"),
        (with_objects(("52", "541")), MpmFormatError, "4 digits"),
        (with_objects(("53", "15A")), MpmFormatError, "3 digits"),
        (with_objects(("58", "cn")), MpmFormatError, "uppercase letters"),
        (with_objects(("59", "N" * 26)), MpmLengthError, "longer than 25"),
        (with_objects(("60", "C" * 16)), MpmLengthError, "longer than 15"),
        (with_objects(("61", "1" * 11)), MpmLengthError, "longer than 10"),
        (with_objects(("59", "Caf\u00e9")), MpmFormatError, "printable ASCII"),
        (with_objects(("59", "Tab\there")), MpmFormatError, "printable ASCII"),
        (with_objects(("26", "0113com.payswitch")), MpmMissingError, "globally unique"),
        (with_objects(("26", "0033" + "x" * 33)), MpmFormatError, "longer than 32"),
        (with_objects(("26", "0013com.payswitch01")), MpmLengthError, "truncated"),
        (with_objects(("26", "0013com.payswitch0199")), MpmLengthError, "past the end"),
        (with_objects(("26", "0013com.payswitch01A1x")), MpmLengthError, "two digits"),
        (with_objects(("26", "00")), MpmLengthError, "truncated"),
        (with_objects(("26", "0013com.payswitch0013com.payswitch")), MpmFormatError, "twice"),
        (with_objects(("62", "0530" + "x" * 30)), MpmLengthError, "62.05"),
        (with_objects(("62", "0904AMEX")), MpmFormatError, "62.09"),
        (with_objects(("62", "0902AA")), MpmFormatError, "62.09"),
        (with_objects(("64", "0002Z10101名")), MpmFormatError, "64.00"),
        (with_objects(("64", "0002ZH")), MpmMissingError, "alternate merchant name"),
        (with_objects(("64", "0002ZH0102名\x07")), MpmFormatError, "non-printable"),
        (with_objects(("54", "0.00")), MpmFormatError, "zero"),
        (with_objects(("54", "1.001")), MpmFormatError, "decimals"),
        (with_objects(("53", "999"), ("54", "10")), MpmCurrencyError, "53"),
        (with_objects(("53", "999")), MpmCurrencyError, "53"),  # static: no amount either
        (with_objects(("53", "157")), MpmCurrencyError, "53"),
        (with_objects(("55", "04")), MpmFormatError, "01, 02 or 03"),
        (with_objects(("55", "02")), MpmFormatError, "56"),
        (with_objects(("55", "03")), MpmFormatError, "57"),
        (with_objects(("56", "1.00")), MpmFormatError, "56"),
        (with_objects(("55", "02"), ("56", "1,00")), MpmFormatError, "decimal number"),
        (with_objects(("55", "03"), ("57", "100")), MpmFormatError, "between"),
        (with_objects(("55", "03"), ("57", "0.00")), MpmFormatError, "between"),
        (with_objects(("81", "0103abc")), MpmMissingError, "globally unique"),
    ],
)
def test_bad_payloads(payload: str, error: type[MpmError], match: str) -> None:
    with pytest.raises(error, match=match) as info:
        decode(payload)
    err = info.value
    assert isinstance(err, RemoteProtocolError)
    assert (err.field, err.rc) == ("qr", "30")
    assert err.code.startswith("qr-")


def test_structure_errors_behind_a_valid_crc() -> None:
    body = "000201" + "0100" + "6304"  # length 00
    with pytest.raises(MpmLengthError, match="length 00"):
        decode(body + crc16_hex(body.encode()))
    body = "000201" + "A1021152" + "6304"  # non-digit ID
    with pytest.raises(MpmFormatError, match="not two digits"):
        decode(body + crc16_hex(body.encode()))
    body = "000201" + "630400006304"  # 63 twice: "not last" seen as a duplicate
    with pytest.raises(MpmFormatError, match="twice"):
        decode(body + crc16_hex(body.encode()))
    body = "000201" + "6310" + "AB6304"  # a 63 of the wrong length that swallows "6304"
    with pytest.raises(MpmLengthError, match="length 04"):
        decode(body + crc16_hex(body.encode()))
    body = "000201" + "010211" + "5202" + "6304"  # "5202" + "63" swallows into 52's value
    with pytest.raises(MpmError):
        decode(body + crc16_hex(body.encode()))


def test_optional_objects_accepted() -> None:
    payload = with_objects(
        ("55", "03"),
        ("57", "2.5"),
        ("61", "200000"),
        ("62", "0105INV010305STORE0703T01"),
        ("65", "rfu"),
        ("80", "0007org.rfu0102xx"),
    )
    qr = decode(payload)
    assert (qr.tip_indicator, qr.fee_percentage, qr.postal_code) == ("03", "2.5", "200000")
    assert dict(qr.additional_data) == {"01": "INV01", "03": "STORE", "07": "T01"}
    assert qr.get("65") == "rfu"


def test_surrogates_and_non_text_rejected() -> None:
    payload = with_objects()
    with pytest.raises(MpmFormatError, match="Unicode"):
        decode(payload[:20] + "\ud800" + payload[21:])
    with pytest.raises(MpmFormatError, match="text"):
        decode(payload.encode())  # type: ignore[arg-type]


def test_payload_size_is_bounded() -> None:
    with pytest.raises(MpmLengthError, match="512"):
        decode("0" * 513)


def test_encode_objects_rejects_bad_input() -> None:
    with pytest.raises(LocalProtocolError, match="two digits"):
        encode_objects([("5", "x")])
    with pytest.raises(LocalProtocolError, match=r"1\.\.99"):
        encode_objects([("59", "x" * 100)])
    with pytest.raises(LocalProtocolError, match=r"1\.\.99"):
        encode_objects([("59", "")])


# Properties -----------------------------------------------------------------------------------

ans = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


def ans_text(max_size: int) -> st.SearchStrategy[str]:
    return st.text(ans, min_size=1, max_size=max_size)


@st.composite
def merchants(draw: st.DrawFn) -> dict[str, object]:
    currency = draw(st.sampled_from(sorted(EXPONENTS)))
    exponent = EXPONENTS[currency]
    args: dict[str, object] = {
        "merchant_id": draw(ans_text(25)),
        "name": draw(ans_text(25)),
        "city": draw(ans_text(15)),
        "mcc": draw(st.text("0123456789", min_size=4, max_size=4)),
        "currency": currency,
        "country": draw(st.sampled_from([*sorted(COUNTRY_ALPHA2), "CN", "US", "ZZ"])),
        "amount_minor": draw(st.none() | st.integers(1, 10 ** (12 - max(exponent, 1)) - 1)),
        "gui": draw(st.sampled_from(["com.payswitch", "A000000333010101", "D15600000000"])),
        "account_id": f"{draw(st.integers(26, 51)):02d}",
        "postal_code": draw(st.none() | ans_text(10)),
        "bill_number": draw(st.none() | ans_text(25)),
        "reference_label": draw(st.none() | ans_text(25)),
        "terminal_label": draw(st.none() | ans_text(25)),
    }
    if draw(st.booleans()):
        args["alt_language"] = draw(st.sampled_from(["ZH", "JA", "EN", "th"]))
        printable = st.characters(categories=["L", "N", "P"], include_characters=" ")
        args["alt_name"] = draw(st.text(printable, min_size=1, max_size=25))
        args["alt_city"] = draw(st.none() | st.text(printable, min_size=1, max_size=15))
    return args


@given(merchants())
def test_build_decode_roundtrip(args: dict[str, object]) -> None:
    payload = build(**args)  # type: ignore[arg-type]
    qr = decode(payload)
    assert isinstance(qr, MerchantQr)
    assert qr.merchant_id(str(args["gui"])) == args["merchant_id"]
    assert (qr.name, qr.city, qr.mcc, qr.currency) == (
        args["name"],
        args["city"],
        args["mcc"],
        args["currency"],
    )
    country = str(args["country"])
    assert qr.country == COUNTRY_ALPHA2.get(country, country)
    assert qr.amount_minor == args["amount_minor"]
    assert qr.dynamic == (args["amount_minor"] is not None)
    assert qr.postal_code == args["postal_code"]
    assert qr.additional_data.get("01") == args["bill_number"]
    assert qr.additional_data.get("05") == args["reference_label"]
    assert qr.additional_data.get("07") == args["terminal_label"]
    assert qr.language.get("01") == args.get("alt_name")
    assert encode(qr.objects) == payload
    assert len(payload) <= qr_mpm.MAX_PAYLOAD


payloads = merchants().map(lambda args: build(**args)) | st.just(EMVCO_SAMPLE)  # type: ignore[arg-type]
replacements = st.one_of(
    st.sampled_from(string.printable),
    st.characters(),
    st.sampled_from(["\ud800", "\udfff", "\x00", "\u00e9", "最"]),
)


@given(payloads, st.data())
def test_any_one_character_substitution_is_caught(payload: str, data: st.DataObject) -> None:
    """A single substituted character never yields an accepted payload.

    ASCII for ASCII changes one byte: a burst of at most 8 bits, which CRC-16 always detects.
    A non-ASCII character outside template 64 fails the character set check. Left, in theory:
    a non-ASCII substitution inside template 64 that changes the byte length and still matches
    the CRC (probability 2^-16).
    """
    i = data.draw(st.integers(0, len(payload) - 1))
    c = data.draw(replacements.filter(lambda ch: ch != payload[i]))
    with pytest.raises(MpmError):
        decode(payload[:i] + c + payload[i + 1 :])


@settings(derandomize=True)  # no guarantee here, only 2^-16 odds: keep CI deterministic
@given(payloads, st.data())
def test_deleted_or_inserted_character_is_caught(payload: str, data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(payload) - 1))
    with pytest.raises(MpmError):
        decode(payload[:i] + payload[i + 1 :])
    c = data.draw(st.sampled_from(string.printable))
    with pytest.raises(MpmError):
        decode(payload[:i] + c + payload[i:])


@given(st.text(max_size=600))
def test_random_text_raises_only_mpm_errors(text: str) -> None:
    with contextlib.suppress(MpmError):  # anything else fails the test
        decode(text)


@given(st.lists(st.tuples(st.integers(0, 99), ans_text(30)), max_size=12))
def test_random_structures_with_valid_crc_raise_only_mpm_errors(
    objects: list[tuple[int, str]],
) -> None:
    payload = encode((f"{i:02d}", v) for i, v in objects)
    with contextlib.suppress(MpmError):
        decode(payload)


@pytest.mark.parametrize(
    "payload",
    [
        EMVCO_SAMPLE,
        build(
            merchant_id="M00000000000001",
            name="Demo Grocery",
            city="Shanghai",
            mcc="5411",
            currency="156",
            country="156",
            amount_minor=12345,
            reference_label="X1",
        ),
    ],
    ids=["emvco-sample", "demo-dynamic"],
)
def test_every_printable_substitution_is_caught(payload: str) -> None:
    """Exhaustive, not sampled: every position, every printable ASCII replacement."""
    accepted = []
    for i, original in enumerate(payload):
        for c in map(chr, range(0x20, 0x7F)):
            if c == original:
                continue
            corrupted = payload[:i] + c + payload[i + 1 :]
            try:
                decode(corrupted)
            except MpmError:
                continue
            accepted.append((i, c))
    assert accepted == []
