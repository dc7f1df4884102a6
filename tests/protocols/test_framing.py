from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.errors import FramingError, LocalProtocolError, ProtocolError
from protocols.framing import Framer, encode_frame

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
