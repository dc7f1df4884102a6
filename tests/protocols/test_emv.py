"""EMV BER-TLV codec for field 55: vectors, strictness, round trips, bad bytes."""

from __future__ import annotations

import subprocess
import sys

import pyemv.tlv
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import emv
from protocols.emv import (
    ARQC_TAGS,
    CONTACTLESS_TAGS,
    Tlv,
    TlvError,
    TlvItem,
    arqc_input,
    bcd_decode,
    bcd_encode,
    check_lengths,
    decode,
    encode,
    encode_issuer_auth,
    missing_tags,
    template,
)
from protocols.errors import LocalProtocolError, RemoteProtocolError

# A contactless field 55 as a terminal sends it (values made up, formats real).
FIELD55 = bytes.fromhex(
    "9F2608" "8E19F8B3C2A1D4E7"
    "9F2701" "80"
    "9F1012" "0110A00003220000000000000000000000FF"
    "9F3704" "6D58EF13"
    "9F3602" "0001"
    "9505" "0000000000"
    "9A03" "250314"
    "9C01" "00"
    "9F0206" "000000001000"
    "9F0306" "000000000000"
    "5F2A02" "0156"
    "8202" "1980"
    "9F1A02" "0156"
    "5F3401" "01"
)  # fmt: skip


def test_decode_field55_vector() -> None:
    tlv = decode(FIELD55)
    assert tlv.tags() == [*CONTACTLESS_TAGS, "5F34"]
    assert tlv.get("9F26") == bytes.fromhex("8E19F8B3C2A1D4E7")
    assert tlv.get("9f26") == tlv.get("9F26")  # lookups ignore case
    assert tlv.get("9F6E") is None
    assert "95" in tlv
    assert "9F6E" not in tlv
    assert len(tlv) == 14
    assert tlv.encode() == FIELD55
    assert missing_tags(tlv) == []
    check_lengths(tlv)


def test_decode_agrees_with_pyemv() -> None:
    # An independent implementation as oracle on the flat vector.
    ours = dict(decode(FIELD55).pairs())
    assert ours == pyemv.tlv.decode(FIELD55)


def test_arqc_input_order() -> None:
    expected = bytes.fromhex(
        "000000001000"  # 9F02
        "000000000000"  # 9F03
        "0156"  # 9F1A
        "0000000000"  # 95
        "0156"  # 5F2A
        "250314"  # 9A
        "00"  # 9C
        "6D58EF13"  # 9F37
        "1980"  # 82
        "0001"  # 9F36
        "0110A00003220000000000000000000000FF"  # 9F10
    )
    assert arqc_input(decode(FIELD55)) == expected
    assert ARQC_TAGS == (
        "9F02",
        "9F03",
        "9F1A",
        "95",
        "5F2A",
        "9A",
        "9C",
        "9F37",
        "82",
        "9F36",
        "9F10",
    )


def test_arqc_input_missing_tag_is_format_error() -> None:
    tlv = Tlv(item for item in decode(FIELD55) if item.tag != "9F37")
    assert missing_tags(tlv) == ["9F37"]
    with pytest.raises(TlvError, match="9F37") as info:
        arqc_input(tlv)
    assert (info.value.field, info.value.rc) == ("55", "30")


def test_arqc_input_wrong_length_is_format_error() -> None:
    tlv = Tlv((t, v + b"\x00" if t == "9F02" else v) for t, v in decode(FIELD55).pairs())
    with pytest.raises(TlvError, match="9F02: length 7"):
        arqc_input(tlv)
    with pytest.raises(TlvError, match="9F02"):
        check_lengths(tlv)


def test_missing_tags_custom_list_keeps_order() -> None:
    tlv = Tlv([("9F26", bytes(8)), ("82", b"\x19\x80")])
    assert missing_tags(tlv, ["9F36", "82", "9F26", "95"]) == ["9F36", "95"]
    assert missing_tags(Tlv()) == list(CONTACTLESS_TAGS)


def test_multibyte_tags_and_length_forms() -> None:
    value200 = bytes(range(200))
    value300 = bytes(300)
    tlv = Tlv([("DF8101", b"\x01"), ("9F10", value200), ("71", value300), ("5F2A", b"")])
    data = tlv.encode()
    assert data == (
        bytes.fromhex("DF81010101")
        + bytes.fromhex("9F1081C8")
        + value200
        + bytes.fromhex("7182012C")
        + value300
        + bytes.fromhex("5F2A00")
    )
    back = decode(data)
    assert back == tlv
    assert back.get("DF8101") == b"\x01"
    assert back.get("5F2A") == b""


def test_length_boundaries() -> None:
    for n in (0, 1, 127, 128, 255, 256, 65535):
        data = encode([("C1", bytes(n))])
        assert decode(data).get("C1") == bytes(n)
        header = data[1 : len(data) - n]
        expected = (
            bytes([n]) if n < 128 else bytes([0x81, n]) if n < 256 else b"\x82" + n.to_bytes(2)
        )
        assert header == expected
    with pytest.raises(LocalProtocolError):
        encode([("C1", bytes(65536))])


def test_repeated_tags_kept_in_order() -> None:
    data = bytes.fromhex("860201029F1801AA86030304 05")
    tlv = decode(data)
    assert tlv.tags() == ["86", "9F18", "86"]
    assert tlv.get("86") == b"\x01\x02"
    assert tlv.get_all("86") == [b"\x01\x02", b"\x03\x04\x05"]
    assert tlv.get_all("99") == []
    assert tlv.encode() == data


def test_constructed_parsed_recursively_on_request() -> None:
    inner = bytes.fromhex("5A0847617300000000115F24033012319F2701 80")
    data = bytes.fromhex("70") + bytes([len(inner)]) + inner + bytes.fromhex("9C0100")

    flat = decode(data)
    item = flat.item("70")
    assert item is not None
    assert item.constructed
    assert item.children is None
    assert item.value == inner
    children = flat.template("70")
    assert children is not None
    assert children.tags() == ["5A", "5F24", "9F27"]

    deep = decode(data, recursive=True)
    deep_item = deep.item("70")
    assert deep_item is not None
    assert deep_item.children == children
    assert deep.encode() == data
    assert deep.template("71") is None
    with pytest.raises(TlvError, match="not a constructed"):
        deep.template("9C")


def test_template_builder() -> None:
    script = template("71", [("9F18", b"\x00\x00\x00\x01"), ("86", b"\x84\x24\x00\x00\x00")])
    assert script.children is not None
    assert script.value == script.children.encode()
    data = encode([("91", bytes(10)), script])
    back = decode(data, recursive=True)
    item = back.item("71")
    assert item is not None
    assert item.children == script.children
    with pytest.raises(LocalProtocolError, match="primitive"):
        template("9F26", [])


def test_nesting_depth_is_bounded() -> None:
    data = b"\x9c\x01\x00"
    for _ in range(emv.MAX_DEPTH + 1):
        data = b"\xe1" + bytes([len(data)]) + data
    decode(data)  # flat decoding never looks inside
    with pytest.raises(TlvError, match="nested too deeply"):
        decode(data, recursive=True)


@pytest.mark.parametrize(
    ("hexdata", "reason"),
    [
        ("9F", "truncated tag"),
        ("9F26", "length missing"),
        ("9F2681", "truncated length"),
        ("9F268201", "truncated length"),
        ("9F260801020304", "value of 8 bytes truncated to 4"),
        ("9F2680", "indefinite length"),
        ("9F26830000", "unsupported length form 83"),
        ("5A8105", "non-minimal length 81"),
        ("5A820005", "non-minimal length 82"),
        ("9C010000", "byte 00 is not a tag"),  # trailing padding
        ("FF0100", "byte FF is not a tag"),
        ("DF81818101", "tag longer than 3 bytes"),
        ("9C01005F", "truncated tag"),  # trailing garbage
        ("9C01009F3603", "truncated"),
    ],
)
def test_bad_bytes_raise_typed_error(hexdata: str, reason: str) -> None:
    with pytest.raises(TlvError) as info:
        decode(bytes.fromhex(hexdata))
    err = info.value
    assert isinstance(err, RemoteProtocolError)
    assert reason in str(err)
    assert (err.field, err.rc) == ("55", "30")


def test_error_names_the_field_given() -> None:
    with pytest.raises(TlvError) as info:
        decode(b"\x9f", field="qr")
    assert info.value.field == "qr"
    assert str(info.value).startswith("field qr:")


def test_error_text_carries_no_value() -> None:
    pan = bytes.fromhex("4761730000000011")
    with pytest.raises(TlvError) as info:
        decode(b"\x5a\x09" + pan)
    assert "4761" not in str(info.value)
    assert pan.hex() not in str(info.value).lower()


def test_accepts_bytearray_and_memoryview() -> None:
    assert decode(bytearray(FIELD55)) == decode(FIELD55)
    assert decode(memoryview(FIELD55)) == decode(FIELD55)
    assert decode(b"") == Tlv()


@pytest.mark.parametrize(
    "tag", ["9F", "1F", "9F80", "9F8080", "9F26 ", "ZZ", "", "00", "FF", "DF818101", "5A01"]
)
def test_bad_tags_rejected_when_building(tag: str) -> None:
    with pytest.raises(LocalProtocolError):
        Tlv([(tag, b"")])


def test_building_normalises_tag_case_and_checks_value_type() -> None:
    tlv = Tlv([("9f26", b"\x01"), TlvItem("df8101", b"")])
    assert tlv.tags() == ["9F26", "DF8101"]
    with pytest.raises(LocalProtocolError, match="bytes"):
        Tlv([("9F26", "01")])  # type: ignore[list-item]


def test_extended_and_equality() -> None:
    tlv = Tlv([("9C", b"\x00")])
    more = tlv.extended([("9F02", bytes(6))])
    assert more.tags() == ["9C", "9F02"]
    assert tlv.tags() == ["9C"]  # immutable
    assert more != tlv
    assert hash(Tlv([("9C", b"\x00")])) == hash(tlv)
    assert tlv != "9C0100"


def test_repr_hides_values() -> None:
    tlv = decode(bytes.fromhex("5A084761730000000011"))
    assert "4761" not in repr(tlv)
    assert "4761" not in repr(next(iter(tlv)))
    assert repr(tlv) == "Tlv(5A:8)"


def test_issuer_authentication_data() -> None:
    arpc = bytes.fromhex("0123456789ABCDEF")
    data = encode_issuer_auth(arpc, b"\x30\x30")
    assert data == bytes.fromhex("910A0123456789ABCDEF3030")
    assert decode(data).get("91") == arpc + b"00"
    with pytest.raises(LocalProtocolError):
        encode_issuer_auth(arpc[:7], b"00")


def test_bcd_numeric_values() -> None:
    assert bcd_encode(1000, 6) == bytes.fromhex("000000001000")
    assert bcd_decode(bytes.fromhex("000000001000")) == 1000
    assert bcd_decode(b"") == 0
    with pytest.raises(TlvError, match="9F02: numeric value is not BCD"):
        bcd_decode(b"\x0a", tag="9F02")
    with pytest.raises(LocalProtocolError):
        bcd_encode(10**12, 6)
    with pytest.raises(LocalProtocolError):
        bcd_encode(-1, 6)


# Properties ---------------------------------------------------------------------------------


@st.composite
def tag_bytes(draw: st.DrawFn, constructed: bool | None = None) -> bytes:
    cls = draw(st.integers(0, 3)) << 6
    form = draw(st.booleans()) if constructed is None else constructed
    first = cls | (0x20 if form else 0)
    size = draw(st.integers(1, 3))
    if size == 1:
        number = draw(st.integers(0, 30))
        if first | number == 0:
            number = 1
        return bytes([first | number])
    if first == 0xE0:  # E0 | 1F would be FF, which is not a tag
        first = 0xA0
    middle = [draw(st.integers(0x81, 0xFF)) for _ in range(size - 2)]
    return bytes([first | 0x1F, *middle, draw(st.integers(0x01, 0x7F))])


def tag_text(constructed: bool | None = None) -> st.SearchStrategy[str]:
    return tag_bytes(constructed).map(lambda b: b.hex().upper())


primitive_items = st.tuples(tag_text(constructed=False), st.binary(max_size=300))
flat_lists = st.lists(st.tuples(tag_text(), st.binary(max_size=300)), max_size=12)


def _nest(children: st.SearchStrategy[list[TlvItem]]) -> st.SearchStrategy[list[TlvItem]]:
    node = st.one_of(
        primitive_items.map(lambda p: TlvItem(*p)),
        st.tuples(tag_text(constructed=True), children).map(lambda tc: template(tc[0], tc[1])),
    )
    return st.lists(node, max_size=5)


nested_lists = st.recursive(
    st.lists(primitive_items.map(lambda p: TlvItem(*p)), max_size=5), _nest, max_leaves=20
)


@given(flat_lists)
def test_roundtrip_flat(pairs: list[tuple[str, bytes]]) -> None:
    data = encode(pairs)
    tlv = decode(data)
    assert tlv.pairs() == pairs
    assert tlv.encode() == data


@given(nested_lists)
def test_roundtrip_nested(items: list[TlvItem]) -> None:
    data = encode(items)
    deep = decode(data, recursive=True)
    assert deep.pairs() == [(i.tag, i.value) for i in items]
    assert deep.encode() == data

    def check(tlv: Tlv) -> None:
        for item in tlv:
            if item.constructed:
                assert item.children is not None
                assert item.children.encode() == item.value
                check(item.children)

    check(deep)


@given(st.binary(max_size=400), st.booleans())
def test_random_bytes_decode_exactly_or_raise_protocol_error(data: bytes, recursive: bool) -> None:
    try:
        tlv = decode(data, recursive=recursive)
    except TlvError:  # anything else (IndexError, ValueError...) fails the test
        return
    assert tlv.encode() == data  # whatever decodes re-encodes byte for byte


@given(flat_lists, st.data())
def test_any_truncation_of_valid_data_is_rejected(
    pairs: list[tuple[str, bytes]], data: st.DataObject
) -> None:
    encoded = encode(pairs)
    if not encoded:
        return
    cut = data.draw(st.integers(0, len(encoded) - 1))
    prefix = encoded[:cut]
    # A prefix decodes only if it ends exactly on an object boundary.
    try:
        tlv = decode(prefix)
    except TlvError:
        return
    assert tlv.pairs() == pairs[: len(tlv)]


def test_protocols_import_no_event_loop_or_clock() -> None:
    code = (
        "import sys\n"
        "import protocols.emv, protocols.emv_tags, protocols.crc\n"
        "import protocols.qr_mpm, protocols.qr_cpm\n"
        "bad = {'asyncio', 'anyio', 'trio', 'socket', 'structlog', 'datetime', 'uvloop'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
