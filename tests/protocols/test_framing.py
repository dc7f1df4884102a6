from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.errors import FramingError, LocalProtocolError, ProtocolError
from protocols.framing import (
    ASCII4,
    BINARY2_TPDU,
    FRAMINGS,
    TPDU_ID,
    TPDU_SIZE,
    Framer,
    Framing,
    answer_tpdu,
    encode_ascii_frame,
    encode_frame,
    get_framing,
    make_tpdu,
    split_tpdu,
)

payloads = st.lists(st.binary(min_size=1, max_size=300), max_size=20)


def drain(framer: Framer) -> list[bytes]:
    out = []
    while (frame := framer.next_frame()) is not None:
        out.append(frame)
    return out


@given(payloads)
def test_frames_round_trip_whole(messages: list[bytes]) -> None:
    framer = Framer()
    framer.feed(b"".join(encode_frame(m) for m in messages))
    assert drain(framer) == messages
    assert not framer.has_partial


@given(payloads, st.data())
def test_frames_round_trip_in_arbitrary_chunks(messages: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(m) for m in messages)
    framer = Framer()
    got: list[bytes] = []
    pos = 0
    while pos < len(stream):
        step = data.draw(st.integers(1, 17))
        framer.feed(stream[pos : pos + step])
        pos += step
        got.extend(drain(framer))
    assert got == messages


@given(st.binary(max_size=400))
def test_bad_bytes_raise_only_protocol_errors(blob: bytes) -> None:
    framer = Framer(max_size=200)
    framer.feed(blob)
    with contextlib.suppress(ProtocolError):
        drain(framer)


def test_oversized_header_is_a_framing_error() -> None:
    framer = Framer(max_size=8192)
    framer.feed(b"\x20\x01")
    with pytest.raises(FramingError, match="exceeds"):
        framer.next_frame()


def test_partial_frame_is_reported() -> None:
    framer = Framer()
    framer.feed(b"\x00\x05abc")
    assert framer.next_frame() is None
    assert framer.has_partial
    framer.feed(b"de")
    assert framer.next_frame() == b"abcde"
    assert not framer.has_partial


def test_zero_length_frames_are_keepalives() -> None:
    framer = Framer()
    framer.feed(b"\x00\x00\x00\x01x\x00\x00")
    assert drain(framer) == [b"x"]


def test_encode_refuses_oversized_payload() -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(b"x" * 10, max_size=5)


# -- every framing (protocols.framing.FRAMINGS) -----------------------------------------------

ALL = sorted(FRAMINGS)
tpdus = st.builds(make_tpdu, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))


def _payloads(framing: Framing, data: st.DataObject) -> list[bytes]:
    messages = data.draw(payloads)
    if framing.tpdu:  # each frame: its own TPDU, then the message
        return [data.draw(tpdus) + m for m in messages]
    return messages


@pytest.mark.parametrize("name", ALL)
@given(data=st.data())
def test_every_framing_round_trips_in_arbitrary_chunks(name: str, data: st.DataObject) -> None:
    framing = get_framing(name)
    messages = _payloads(framing, data)
    stream = b"".join(framing.encode(m, 300) for m in messages)
    framer = framing.framer(300)
    got: list[bytes] = []
    pos = 0
    while pos < len(stream):
        step = data.draw(st.integers(1, 17))
        framer.feed(stream[pos : pos + step])
        pos += step
        got.extend(drain(framer))
    assert got == messages
    assert not framer.has_partial


@pytest.mark.parametrize("name", ALL)
@given(blob=st.binary(max_size=400))
def test_every_framing_raises_only_framing_errors(name: str, blob: bytes) -> None:
    framer = get_framing(name).framer(200)
    framer.feed(blob)
    with contextlib.suppress(FramingError):
        for frame in drain(framer):
            assert 0 < len(frame) <= 200 + TPDU_SIZE


@pytest.mark.parametrize("name", ALL)
def test_every_framing_skips_keepalives_and_refuses_oversized(name: str) -> None:
    framing = get_framing(name)
    body = make_tpdu(1, 2) + b"x" if framing.tpdu else b"x"
    framer = framing.framer(100)
    empty = b"0000" if name == "ascii4" else b"\x00\x00"
    framer.feed(empty + framing.encode(body, 100) + empty)
    assert drain(framer) == [body]
    with pytest.raises(LocalProtocolError):
        framing.encode(b"`" + b"x" * (110 if framing.tpdu else 100), 100)
    big = framing.encode(b"`" + b"y" * 200, 300)  # a peer announcing 201 (206) bytes
    framer.feed(big[:4])
    with pytest.raises(FramingError, match="exceeds"):
        framer.next_frame()


def test_framings_limits_are_their_length_headers() -> None:
    assert [FRAMINGS[n].limit for n in ("binary2", "ascii4", "binary2-tpdu")] == [
        65535,
        9999,
        65530,
    ]
    with pytest.raises(LocalProtocolError, match=r"1\.\.9999"):
        ASCII4.framer(10_000)
    with pytest.raises(KeyError, match="unknown framing 'ascii2'"):
        get_framing("ascii2")


@pytest.mark.parametrize("header", [b"01a9", b"-109", b" 109", b"\xd9\xa1\xd9\xa2", b"1e02"])
def test_ascii4_refuses_a_length_that_is_not_four_digits(header: bytes) -> None:
    framer = ASCII4.framer()
    framer.feed(header + b"x" * 200)
    with pytest.raises(FramingError, match="not 4 ASCII digits"):
        framer.next_frame()


def test_ascii4_header_is_decimal_text() -> None:
    assert encode_ascii_frame(b"x" * 109) == b"0109" + b"x" * 109


@pytest.mark.parametrize("frame", [b"\x00\x01\x60", b"\x00\x04\x60\x00\x01\x00"])
def test_tpdu_frame_shorter_than_its_tpdu_is_a_framing_error(frame: bytes) -> None:
    framer = BINARY2_TPDU.framer()
    framer.feed(frame)
    with pytest.raises(FramingError, match="shorter than its 5-byte TPDU"):
        framer.next_frame()


def test_tpdu_must_begin_with_60() -> None:
    framer = BINARY2_TPDU.framer()
    framer.feed(b"\x00\x06\x61\x00\x01\x00\x02x")
    with pytest.raises(FramingError, match="TPDU id 61"):
        framer.next_frame()


def test_tpdu_answer_swaps_destination_and_source() -> None:
    tpdu = bytes.fromhex("6000030000")  # to NII 0003 from 0000, as a UnionPay terminal sends
    assert answer_tpdu(tpdu) == bytes.fromhex("6000000003")
    frame = tpdu + b"0200..."
    assert split_tpdu(frame) == (tpdu, b"0200...")
    assert BINARY2_TPDU.encode(frame, 8192) == b"\x00\x0c" + frame
    with pytest.raises(LocalProtocolError, match="TPDU"):
        BINARY2_TPDU.encode(b"0200...", 8192)


@given(tpdus)
def test_answering_twice_gives_the_tpdu_back(tpdu: bytes) -> None:
    assert answer_tpdu(answer_tpdu(tpdu)) == tpdu
    assert answer_tpdu(tpdu)[0] == TPDU_ID
