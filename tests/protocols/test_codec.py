from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.codec import Codec, MessageFormatError, UndecodableError
from protocols.dialects import get_dialect
from protocols.errors import LocalProtocolError, ProtocolError
from protocols.message import Message
from protocols.mti import is_request, mti_class, mti_function, response_mti

CODEC = Codec(get_dialect("terminal"))
PAN = "4761730000000011"


def sample() -> Message:
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
            "22": "051",
            "23": "001",
            "41": "T0000002",
            "42": "M00000000000001",
            "49": "156",
            "52": "0123456789ABCDEF",
            "53": "FFFF9876543210E00001",
            "55": "9F2608AABBCCDDEEFF0011",
            "64": "0011223344556677",
            "90": "0200000123112710150000000000001" + "0" * 11,
        },
    )


def test_round_trip_and_ksn_field_53() -> None:
    msg = sample()
    raw = CODEC.encode(msg)
    assert b"FFFF9876543210E00001" in raw  # field 53 is 20 ASCII hex characters
    back = CODEC.decode(raw)
    assert back == msg


digits = st.text(alphabet="0123456789", min_size=1, max_size=19)


@given(
    pan=st.text(alphabet="0123456789", min_size=12, max_size=19),
    amount=st.integers(0, 10**12 - 1),
    stan=st.integers(0, 999999),
    icc=st.binary(min_size=1, max_size=255),
)
def test_round_trip_property(pan: str, amount: int, stan: int, icc: bytes) -> None:
    msg = Message(
        "0100",
        {"2": pan, "4": f"{amount:012d}", "11": f"{stan:06d}", "55": icc.hex().upper()},
    )
    assert CODEC.decode(CODEC.encode(msg)) == msg


@given(st.binary(max_size=300))
def test_random_bytes_raise_only_protocol_errors(blob: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        CODEC.decode(blob)


@given(st.data())
def test_truncated_messages_raise_only_protocol_errors(data: st.DataObject) -> None:
    raw = CODEC.encode(sample())
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(ProtocolError):
        CODEC.decode(raw[:cut])


def test_errors_never_carry_the_pan() -> None:
    raw = CODEC.encode(sample())
    with pytest.raises(MessageFormatError) as info:
        CODEC.decode(raw[:-3])
    err = info.value
    assert err.mti == "0200"
    assert err.rc == "30"
    assert PAN not in str(err)
    assert PAN not in repr(err.echo)
    assert err.__cause__ is None  # pyiso8583's error (raw bytes, PAN) is dropped
    assert err.echo["11"] == "000123"


def test_no_mti_is_undecodable() -> None:
    with pytest.raises(UndecodableError):
        CODEC.decode(b"02")
    with pytest.raises(UndecodableError):
        CODEC.decode(b"AB00" + b"\x00" * 8)


def test_encode_error_is_local() -> None:
    with pytest.raises(LocalProtocolError):
        CODEC.encode(Message("0200", {"52": "not hex"}))


def test_repr_hides_values() -> None:
    assert PAN not in repr(sample())


def test_mti_helpers() -> None:
    assert response_mti("0200") == "0210"
    assert response_mti("0420") == "0430"
    assert response_mti("0800") == "0810"
    assert mti_class("0420") == "4"
    assert mti_function("0420") == "2"
    assert is_request("0100")
    assert not is_request("0110")
    with pytest.raises(LocalProtocolError):
        response_mti("0210")


def test_errors_do_not_chain_the_library_error() -> None:
    raw = CODEC.encode(sample())
    with pytest.raises(MessageFormatError) as info:
        CODEC.decode(raw[:-3])
    assert info.value.__context__ is None  # pyiso8583's DecodeError holds raw bytes and PAN
