"""FastCodec is a drop-in for Codec: same bytes, same messages, same errors (class, field,
reason, MTI, echo) on every registered dialect, checked against pyiso8583 through Codec. The
properties run on each dialect; the hand-written regressions on the terminal dialect."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks import codec as bench_codec
from protocols import fastcodec
from protocols.codec import Codec, MessageFormatError, UndecodableError
from protocols.dialects import DIALECTS, Spec, get_dialect
from protocols.errors import LocalProtocolError, ProtocolError
from protocols.fastcodec import FastCodec, UnsupportedSpecError, best_codec
from protocols.message import Message

SPEC = get_dialect("terminal")
REF = Codec(SPEC)
FAST = FastCodec(SPEC)
# Every dialect once ("terminal" is iso87-ascii's alias): pyiso8583 and FastCodec on it.
NAMES = sorted(name for name in DIALECTS if name != "terminal")
PAIRS = {name: (Codec(DIALECTS[name]), FastCodec(DIALECTS[name])) for name in NAMES}
PAN = "4761730000000011"
FIELDS = [n for n in range(2, 129) if n != 65]  # 65 is the tertiary-bitmap bit, not a field
PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sample() -> Message:
    """The SPEC's 0200: the fields of tests/protocols/test_codec.py's sample and a few more."""
    return Message(
        "0200",
        {
            "2": PAN,
            "3": "000000",
            "4": "000000001250",
            "7": "1127101500",
            "11": "000123",
            "12": "101500",
            "13": "1127",
            "14": "2912",
            "18": "5411",
            "22": "051",
            "23": "001",
            "25": "00",
            "32": "123456",
            "41": "T0000002",
            "42": "M00000000000001",
            "43": "PAYSWITCH DEMO MERCHANT   SHANGHAI    CN",
            "49": "156",
            "52": "0123456789ABCDEF",
            "53": "FFFF9876543210E00001",
            "55": "9F2608AABBCCDDEEFF00119F3602001C",
            "64": "0011223344556677",
            "90": "0200000123112710150000000000001" + "0" * 11,
        },
    )


# ---------------------------------------------------------------- outcomes compared field by field


def decode_outcome(codec: Codec, raw: bytes) -> tuple[Any, ...]:
    try:
        msg = codec.decode(raw)
    except MessageFormatError as exc:
        return ("format", exc.field, exc.reason, exc.mti, exc.rc, exc.echo, str(exc))
    except UndecodableError as exc:
        return ("undecodable", exc.field, exc.reason, exc.rc, str(exc))
    return ("ok", msg.mti, msg.fields, list(msg.fields))


def encode_outcome(codec: Codec, msg: Message) -> tuple[Any, ...]:
    try:
        return ("ok", codec.encode(msg))
    except LocalProtocolError as exc:
        return ("local", str(exc))


def assert_same_decode(raw: bytes, dialect: str = "iso87-ascii") -> tuple[Any, ...]:
    ref, fast_codec = PAIRS[dialect]
    expected = decode_outcome(ref, raw)
    got = decode_outcome(fast_codec, raw)
    assert got == expected
    # The fast path alone: it may refuse (None) but never accept wrongly.
    fast = fast_codec._decode_fast(raw)
    if fast is not None:
        assert ("ok", fast.mti, fast.fields, list(fast.fields)) == expected
    if got[0] == "format":  # the echo can always go back in the answer
        assert all(got[5].values())
        fast_codec.encode(Message(got[3], got[5]))
    return got


def assert_same_encode(msg: Message, dialect: str = "iso87-ascii") -> tuple[Any, ...]:
    ref, fast_codec = PAIRS[dialect]
    expected = encode_outcome(ref, msg)
    got = encode_outcome(fast_codec, msg)
    assert got == expected
    fast = fast_codec._encode_fast(msg)
    if fast is not None:
        assert ("ok", fast) == expected
    return got


# ---------------------------------------------------------------- strategies


def samples(dialect: str) -> Message:
    """A realistic message of ``dialect``: SPEC's 0200, or the bench's purchase as the dialect
    carries it."""
    return sample() if dialect == "iso87-ascii" else bench_codec.sample(dialect)


def spec_of(spec: Spec, number: int) -> tuple[str, int, int]:
    """(kind, prefix width, max_len): kind "digits" (BCD, counted in nibbles), "bytes" or "text"."""
    f = spec[str(number)]
    if f.get("len_count") == "nibbles":
        kind = "digits"
    else:
        kind = "bytes" if f["data_enc"] == "b" else "text"
    return kind, f["len_type"], f["max_len"]


@st.composite
def field_value(draw: st.DrawFn, spec: Spec, number: int) -> str:
    kind, len_type, max_len = spec_of(spec, number)
    if len_type:
        # Mostly short values (quick), sometimes up to the maximum.
        cap = draw(st.sampled_from([min(max_len, 24), max_len]))
        size = draw(st.integers(0, cap))
    else:
        size = max_len
    if kind == "bytes":
        return draw(st.binary(min_size=size, max_size=size)).hex().upper()
    if kind == "digits":  # BCD is hex text to pyiso8583; digits mostly, any upper-case nibble
        alphabet = draw(st.sampled_from(["0123456789", "0123456789ABCDEF"]))
        return draw(st.text(alphabet, min_size=size, max_size=size))
    return draw(st.text(PRINTABLE, min_size=size, max_size=size))


@st.composite
def valid_messages(draw: st.DrawFn, dialect: str = "iso87-ascii") -> Message:
    spec = DIALECTS[dialect]
    mti = draw(st.text(alphabet="0123456789", min_size=4, max_size=4))
    numbers = draw(
        st.one_of(
            st.sets(st.sampled_from(FIELDS), max_size=24),
            st.sets(st.sampled_from([n for n in FIELDS if n < 65]), max_size=24),
        )
    )
    return Message(mti, {str(n): draw(field_value(spec, n)) for n in sorted(numbers)})


@st.composite
def corrupted(draw: st.DrawFn, dialect: str = "iso87-ascii") -> bytes:
    """A valid message truncated, extended, or with bytes overwritten, inserted or deleted."""
    ref = PAIRS[dialect][0]
    msg = draw(st.one_of(valid_messages(dialect), st.just(samples(dialect))))
    raw = bytearray(ref.encode(msg))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["cut", "tail", "set", "insert", "delete", "bitmap"]))
        at = draw(st.integers(0, max(len(raw) - 1, 0)))
        if kind == "cut":
            del raw[at:]
        elif kind == "tail":
            raw += draw(st.binary(min_size=1, max_size=4))
        elif kind == "set" and raw:
            raw[at] = draw(st.sampled_from([0x00, 0x20, 0x2B, 0x2D, 0x30, 0x39, 0x5F, 0x80, 0xFF]))
        elif kind == "insert":
            raw[at:at] = draw(st.binary(min_size=1, max_size=3))
        elif kind == "delete":
            del raw[at : at + draw(st.integers(1, 3))]
        elif kind == "bitmap" and len(raw) > 2:  # binary or hex-text bitmaps, after any MTI
            raw[draw(st.integers(2, min(len(raw), 36) - 1))] ^= 1 << draw(st.integers(0, 7))
    return bytes(raw)


@st.composite
def random_shaped(draw: st.DrawFn) -> bytes:
    """An ASCII or BCD MTI, a random binary or hex-text bitmap (secondary, bit 65, fields 129+
    included) and random bytes."""
    mti = draw(
        st.sampled_from(
            [b"0200", b"1200", b"02A0", b"\xff200", b"\x02\x00", b"\x12\x00", b"\x0a\x00"]
        )
    )
    bitmap = draw(
        st.one_of(
            st.binary(min_size=8, max_size=24),
            st.text("0123456789ABCDEFa ", min_size=16, max_size=48).map(str.encode),
        )
    )
    tail = draw(
        st.one_of(st.binary(max_size=80), st.text("0123456789", max_size=80).map(str.encode))
    )
    return mti + bitmap + tail


ODD_KEYS = ["1", "65", "t", "p", "h", "x", "-2", " 3", "01", "065", "0", "129", "193", "٣", "½"]
ODD_VALUES = ["", "é", "00 11", "0G", "ABC", "abcdef0123456789", "1" * 300, "A" * 2000, "123"]


@st.composite
def invalid_messages(draw: st.DrawFn, dialect: str = "iso87-ascii") -> Message:
    """A valid message with a bad value, an odd key or an odd MTI."""
    msg = draw(st.one_of(valid_messages(dialect), st.just(samples(dialect))))
    fields = dict(msg.fields)
    mti = msg.mti
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["value", "key", "mti"]))
        if kind == "value":
            key = str(draw(st.sampled_from(FIELDS)))
            fields[key] = draw(
                st.one_of(
                    st.sampled_from(ODD_VALUES),
                    st.text(max_size=30),
                    field_value(DIALECTS[dialect], int(key)),
                )
            )
        elif kind == "key":
            fields[draw(st.sampled_from(ODD_KEYS))] = draw(st.sampled_from(["00", "1", "AB"]))
        else:
            mti = draw(st.sampled_from(["020", "02000", "02é0", "ABCD", "", "0a00", "02 0"]))
    return Message(mti, fields)


# ---------------------------------------------------------------- properties (every dialect)

dialects = pytest.mark.parametrize("dialect", NAMES)


@dialects
@SETTINGS
@given(data=st.data())
def test_valid_messages_encode_and_decode_like_pyiso8583(dialect: str, data: st.DataObject) -> None:
    ref, fast = PAIRS[dialect]
    msg = data.draw(valid_messages(dialect))
    raw = fast.encode(msg)
    assert raw == ref.encode(msg)
    assert fast.decode(raw) == ref.decode(raw) == msg
    assert list(fast.decode(raw).fields) == sorted(msg.fields, key=int)
    # Both paths on their own: valid messages take the fast one, the exact one agrees.
    assert fast._encode_fast(msg) == raw == fast._encode_exact(msg)
    assert fast._decode_fast(raw) == msg == fast._decode_exact(raw)


@dialects
@SETTINGS
@given(blob=st.binary(max_size=64))
def test_random_bytes_fail_like_pyiso8583(dialect: str, blob: bytes) -> None:
    assert_same_decode(blob, dialect)


@dialects
@SETTINGS
@given(blob=random_shaped())
def test_random_bitmaps_and_bodies_fail_like_pyiso8583(dialect: str, blob: bytes) -> None:
    assert_same_decode(blob, dialect)


@dialects
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_corrupted_messages_fail_like_pyiso8583(dialect: str, data: st.DataObject) -> None:
    assert_same_decode(data.draw(corrupted(dialect)), dialect)


@dialects
@SETTINGS
@given(data=st.data())
def test_every_truncation_fails_like_pyiso8583(dialect: str, data: st.DataObject) -> None:
    raw = PAIRS[dialect][0].encode(samples(dialect))
    cut = data.draw(st.integers(0, len(raw) - 1))
    outcome = assert_same_decode(raw[:cut], dialect)
    assert outcome[0] != "ok"


@dialects
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_invalid_messages_encode_like_pyiso8583(dialect: str, data: st.DataObject) -> None:
    ref, fast = PAIRS[dialect]
    msg = data.draw(invalid_messages(dialect))
    try:
        expected = encode_outcome(ref, msg)
    except (KeyError, ValueError, TypeError):
        # pyiso8583 crashes on some keys ("01" alone, "٣", "½", fields 129+) and Codec lets the
        # bare exception out; FastCodec raises the typed error instead (a deliberate difference).
        with pytest.raises(LocalProtocolError):
            fast.encode(msg)
        return
    assert encode_outcome(fast, msg) == expected


# ---------------------------------------------------------------- hand-written regressions


def test_sample_round_trip_and_wire_bytes() -> None:
    msg = sample()
    raw = FAST.encode(msg)
    assert raw == REF.encode(msg)
    assert raw[:4] == b"0200"
    assert raw[4] & 0x80  # field 90 needs the secondary bitmap
    assert FAST.decode(raw) == msg


def test_errors_carry_no_raw_bytes_pan_or_chained_exception() -> None:
    raw = FAST.encode(sample())
    with pytest.raises(MessageFormatError) as info:
        FAST.decode(raw[:-3])
    err = info.value
    assert (err.mti, err.field, err.rc) == ("0200", "90", "30")
    assert err.echo["11"] == "000123"
    assert PAN not in str(err)
    assert PAN not in repr(err.echo)
    assert err.__cause__ is None
    assert err.__context__ is None
    bad = raw.replace(PAN.encode(), PAN[:-1].encode() + b"\xff")
    with pytest.raises(MessageFormatError) as info:
        FAST.decode(bad)
    assert info.value.field == "2"
    assert info.value.__context__ is None
    with pytest.raises(LocalProtocolError) as local:
        FAST.encode(Message("0200", {**sample().fields, "2": PAN + "é"}))
    assert PAN not in str(local.value)
    assert local.value.__context__ is None


@pytest.mark.parametrize("dialect", NAMES)
def test_every_dialects_errors_carry_no_pan_or_chained_exception(dialect: str) -> None:
    # On the BCD and hex-bitmap dialects the exact path is pyiso8583 itself, whose errors hold
    # the message: they must not survive in __context__.
    fast = PAIRS[dialect][1]
    msg = samples(dialect)
    with pytest.raises(MessageFormatError) as info:
        fast.decode(fast.encode(msg)[:-3])
    err = info.value
    assert (err.mti, err.rc, err.echo["11"]) == (msg.mti, "30", "000123")
    assert PAN not in str(err)
    assert PAN not in repr(err.echo)
    assert err.__cause__ is None
    assert err.__context__ is None
    with pytest.raises(LocalProtocolError) as local:
        fast.encode(Message(msg.mti, {**msg.fields, "2": PAN + "é"}))
    assert PAN not in str(local.value)
    assert local.value.__context__ is None


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"02",
        b"AB00" + b"\x00" * 8,
        b"0200",
        b"0200\x00\x00\x00",
        b"0200" + b"\x00" * 8,  # no fields at all: valid
        b"0200" + b"\x00" * 8 + b"X",  # extra data after the bitmap (field "p")
        b"0200\x80" + b"\x00" * 7 + b"\x00" * 8,  # empty secondary bitmap: valid
        b"0200\x80" + b"\x00" * 7 + b"\x00" * 8 + b"X",  # extra data (field "1")
        b"0200\x80" + b"\x00" * 7 + b"\x80" + b"\x00" * 7 + b"\x00" * 8,  # bit 65, zero tertiary
        b"0200\x80" + b"\x00" * 7 + b"\x80" + b"\x00" * 7 + b"\x00" * 3,  # short tertiary
        b"0200\x80" + b"\x00" * 7 + b"\x80" + b"\x00" * 7 + b"\x80" + b"\x00" * 7,  # field 129
        b"0200\x40" + b"\x00" * 7 + b"-0",  # int("-0") == 0: an empty PAN
        b"0200\x40" + b"\x00" * 7 + b" 4" + b"1234",  # int(" 4")
        b"0200\x40" + b"\x00" * 7 + b"+4" + b"1234",
        b"0200\x40" + b"\x00" * 7 + b"-4" + b"1234",  # negative length
        b"0200\x40" + b"\x00" * 7 + b"20" + b"1" * 20,  # larger than maximum 19
        b"0200\x40" + b"\x00" * 7 + b"4\xff" + b"1234",
        b"0200\x40" + b"\x00" * 7 + b"4",
        b"0200" + b"\x00" * 4 + b"\x10" + b"\x00" * 3 + b"-99" + b"x" * 120,  # LLL field 36
        b"0200\x00\x00\x00\x00\x00\x00\x10\x00" + b"0" * 8 + b"extra",  # field 52 then extra
        b"02A0" + b"\x00" * 8,  # MTI not digits
        b"02A0\x40" + b"\x00" * 7 + b"99",  # MTI not digits and a bad field
        b"0\xff00" + b"\x00" * 8,
    ],
)
def test_edge_cases_match(raw: bytes) -> None:
    assert_same_decode(raw)


# Issue 12 item 1: a 0200 whose field 3 has two digits.
TRUNCATED_3 = b"0200" + bytes.fromhex("2000000000000000") + b"12"
TERMINAL_FIELDS = {"3": "000000", "4": "000000000100", "7": "1127101500", "11": "000123"}


def terminal_request(old: str = "", new: bytes = b"") -> bytes:
    """A 0200 with fields 3, 4, 7, 11 and 41; the first ``old`` value's bytes -> ``new``."""
    raw = REF.encode(Message("0200", {**TERMINAL_FIELDS, "41": "T0000001"}))
    return raw.replace(old.encode(), new, 1)


@pytest.mark.parametrize("codec", [REF, FAST], ids=["pyiso8583", "fast"])
@pytest.mark.parametrize(
    ("raw", "echo"),
    [
        (TRUNCATED_3, {}),  # the field at fault was echoed empty
        (terminal_request("000000", b"00\xe9000"), {}),  # non-ASCII: nothing before 3
        (terminal_request("T0000001", b"T000\xff001"), TERMINAL_FIELDS),
        (terminal_request("T0000001", b"T0000001X"), {**TERMINAL_FIELDS, "41": "T0000001"}),
    ],
    ids=["truncated-3", "non-ascii-3", "non-ascii-41", "extra-after-41"],
)
def test_format_error_echo_holds_only_fields_decoded_and_encodable(
    codec: Codec, raw: bytes, echo: dict[str, str]
) -> None:
    with pytest.raises(MessageFormatError) as info:
        codec.decode(raw)
    assert info.value.echo == echo
    codec.encode(Message("0210", {**info.value.echo, "39": "30"}))


def test_input_types() -> None:
    raw = REF.encode(sample())
    # pyiso8583 takes bytearray too (Codec's annotation says bytes only).
    assert FAST.decode(bytearray(raw)) == REF.decode(bytearray(raw)) == sample()  # type: ignore[arg-type]
    assert FAST._decode_fast(bytearray(raw)) == sample()
    for odd in (memoryview(raw), raw.decode("latin-1")):
        with pytest.raises(UndecodableError):
            REF.decode(odd)  # type: ignore[arg-type]
        with pytest.raises(UndecodableError):
            FAST.decode(odd)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fields",
    [
        {"2": PAN, "1": "whatever", "65": "ignored"},  # pyiso8583 drops 1 and 65
        {"2": PAN, "t": "0800", "p": "x", "h": "x", "x": "1", "-3": "1"},  # ignored keys
        {"01": "x", "2": PAN},  # "01" alone: pyiso8583 KeyError (checked by the property too)
        {"01": "x", "1": "y", "2": PAN},
        {"3": "000000", "03": "x"},  # "03" dedups with "3": a secondary-free message
        {"2": PAN, "065": "x", "70": "301"},  # bit 65 forced on: a zero tertiary bitmap
        {"52": "0123456789abcdef"},  # lower-case hex is accepted, decoded upper-case
        {"52": "01234567 89ABCDEF"[:16]},
        {"52": "0123456789ABCDE"},  # odd length
        {"52": "0123456789ABCDEG"},  # non-hex
        {"52": "0123456789ABCDEF00"},  # wrong fixed length
        {"55": "00" * 256},  # larger than maximum
        {"55": ""},
        {"2": ""},
        {"2": "é"},
        {"4": "12"},
        {"0": "1"},
        {"193": "1"},
        {"129": "1"},
    ],
)
def test_encode_edge_cases_match(fields: dict[str, str]) -> None:
    msg = Message("0200", fields)
    try:
        expected = encode_outcome(REF, msg)
    except (KeyError, ValueError, TypeError):
        with pytest.raises(LocalProtocolError):
            FAST.encode(msg)
        return
    assert encode_outcome(FAST, msg) == expected


@pytest.mark.parametrize("mti", ["020", "02000", "02é0", "", "ABCD"])
def test_encode_mti_like_codec(mti: str) -> None:
    # Codec does not check that the MTI is digits on encode; neither does FastCodec.
    assert_same_encode(Message(mti, {"11": "000001"}))


def test_non_string_values_and_keys_are_local_errors() -> None:
    for fields in ({"11": 123}, {"52": 123}, {11: "000001"}):
        msg = Message("0200", fields)  # type: ignore[arg-type]
        with pytest.raises(LocalProtocolError):
            FAST.encode(msg)
    with pytest.raises(LocalProtocolError):
        FAST.encode(Message(200, {"11": "000001"}))  # type: ignore[arg-type]


def test_plan_memo_is_bounded() -> None:
    codec = FastCodec(SPEC)
    for n in range(3 * fastcodec._PLAN_CACHE_MAX):
        with pytest.raises(ProtocolError):
            codec.decode(b"0200" + n.to_bytes(8, "big") + b"?")
    assert len(codec._dec_plans) <= fastcodec._PLAN_CACHE_MAX
    for n in range(3 * fastcodec._PLAN_CACHE_MAX):
        codec.encode(Message("0800", {"11": "000001", f"x{n}": "ignored"}))
    assert len(codec._enc_plans) <= fastcodec._PLAN_CACHE_MAX


# ---------------------------------------------------------------- supported spec subset


def copy_spec() -> dict[str, dict[str, Any]]:
    return {key: dict(field) for key, field in SPEC.items()}


def variant(**changes: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = copy_spec()
    for key, change in changes.items():
        spec.setdefault(key, {}).update(change)
    return spec


@pytest.mark.parametrize(
    ("spec", "what"),
    [
        (variant(h={"max_len": 4}), "headers"),
        (variant(t={"data_enc": "cp500"}), "MTI"),
        (variant(p={"data_enc": "ascii"}), "bitmap"),  # one bitmap hex text, the other binary
        (variant(**{"1": {"data_enc": "cp500"}}), "bitmap"),
        (variant(**{"2": {"data_enc": "cp500"}}), "data encoding"),
        (variant(**{"2": {"len_enc": "b"}}), "length encoding"),
        (variant(**{"2": {"len_count": "nibbles"}}), "nibbles"),  # a text field
        (variant(**{"55": {"len_count": "digits"}}), "length counted"),
        (variant(**{"55": {"len_enc": "bcd"}}), "BCD bytes"),  # LLL as 3 BCD bytes
        (variant(**{"2": {"len_type": 5}}), "length type"),
        (variant(**{"130": {"data_enc": "ascii", "len_type": 0, "max_len": 1}}), "tertiary"),
    ],
)
def test_unsupported_specs_are_refused(spec: dict[str, dict[str, Any]], what: str) -> None:
    with pytest.raises(UnsupportedSpecError, match=what):
        FastCodec(spec)
    assert type(best_codec(spec)) is Codec


def test_supported_variants_still_match() -> None:
    # len_enc of a fixed field is never read by pyiso8583; "US-ASCII" is the ascii codec.
    spec = variant(**{"3": {"len_enc": "b"}, "2": {"data_enc": "US-ASCII"}})
    assert type(best_codec(spec)) is FastCodec
    assert isinstance(FAST, Codec)  # drops in wherever a Codec is expected
    ref, fast = Codec(spec), FastCodec(spec)
    msg = sample()
    assert fast.encode(msg) == ref.encode(msg)
    assert fast.decode(ref.encode(msg)) == msg
    # A field missing from the spec: pyiso8583 raises KeyError, Codec says undecodable.
    spec = copy_spec()
    del spec["70"]
    ref, fast = Codec(spec), FastCodec(spec)
    raw = REF.encode(Message("0800", {"11": "000001", "70": "301"}))
    assert decode_outcome(fast, raw) == decode_outcome(ref, raw)
    with pytest.raises(LocalProtocolError):
        fast.encode(Message("0800", {"70": "301"}))


@pytest.mark.parametrize("dialect", NAMES)
def test_bench_measures_both_codecs_on_the_sample(dialect: str) -> None:
    ticks = iter(range(10**6))
    result = bench_codec.measure(lambda: float(next(ticks)), runs=2, number=3, dialect=dialect)
    assert set(result["us_per_message"]) == {
        "Codec decode",
        "FastCodec decode",
        "Codec encode",
        "FastCodec encode",
    }
    assert all(v > 0 for v in result["us_per_message"].values())
    assert set(result["ratio"]) == {"decode", "encode"}
    msg = bench_codec.sample(dialect)
    # SPEC's 22; iso87-bcd has no room for the KSN (53); 1993 drops 13, 25 and 90, adds 24, 56.
    sizes = {"iso87-bcd": 21, "iso93-ascii": 20, "iso93-bcd": 20}
    assert len(msg.fields) == sizes.get(dialect, 22)
    ref, fast = PAIRS[dialect]
    assert fast.decode(ref.encode(msg)) == msg
