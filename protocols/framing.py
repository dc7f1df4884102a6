"""Incremental length-prefix framings, as data (SPEC "Framing" is ``binary2``).

A :class:`Framer` is fed whatever bytes arrive and hands back whole frames; it never blocks and
never reads a clock, so the caller decides what a stalled partial frame means. Which framer and
encoder a connection uses is a :class:`Framing`, registered by name in :data:`FRAMINGS`:

- ``binary2``: a 2-byte big-endian length, then the message (SPEC; the default).
- ``ascii4``: 4 ASCII decimal digits of length, then the message (hosts that frame in text).
- ``binary2-tpdu``: a 2-byte length counting a 5-byte TPDU and the message after it; the TPDU
  is ``60``, a 2-byte destination and a 2-byte source address, and the answer carries the
  request's TPDU with the two addresses swapped (China UnionPay POS terminals' layout). The
  framer returns the TPDU with the message: what answers needs it is the caller's
  (:func:`split_tpdu`, :func:`answer_tpdu`).

Each has a largest message its length header can carry (``limit``); a connection's own
``max_size`` (of the message, the TPDU not counted) must stay within it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from protocols.errors import FramingError, LocalProtocolError

HEADER_SIZE = 2
DEFAULT_MAX_FRAME = 8192
TPDU_ID = 0x60
TPDU_SIZE = 5


class Framer:
    """Splits a byte stream into 2-byte length-prefixed frames (``binary2``).

    A zero-length frame is taken as a keep-alive and skipped. A header announcing more than
    ``max_size`` bytes raises :class:`FramingError`: the stream cannot be resynchronised.
    """

    __slots__ = ("_buf", "_pos", "max_size")

    LIMIT = 0xFFFF
    """The largest message the length header can announce."""

    def __init__(self, max_size: int = DEFAULT_MAX_FRAME) -> None:
        if not 0 < max_size <= self.LIMIT:
            raise LocalProtocolError(f"max frame size must be 1..{self.LIMIT}")
        self.max_size = max_size
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def has_partial(self) -> bool:
        """Bytes of an incomplete frame are buffered (what a read timeout applies to)."""
        return len(self._buf) > self._pos

    def next_frame(self) -> bytes | None:
        """Return the next whole frame, or ``None`` until more bytes arrive."""
        # The hot path of every terminal and link: kept apart from the other framings' loop.
        buf = self._buf
        while True:
            pos = self._pos
            available = len(buf) - pos
            if available < HEADER_SIZE:
                break
            size = (buf[pos] << 8) | buf[pos + 1]
            if size > self.max_size:
                raise FramingError(f"frame of {size} bytes exceeds the {self.max_size} byte limit")
            end = pos + HEADER_SIZE + size
            if end > len(buf):
                break
            self._pos = end
            if size:
                frame = bytes(buf[pos + HEADER_SIZE : end])
                self._compact()
                return frame
        self._compact()
        return None

    def _compact(self) -> None:
        # Drop consumed bytes once they dominate the buffer, so memory stays bounded.
        if self._pos and (self._pos == len(self._buf) or self._pos > 4096):
            del self._buf[: self._pos]
            self._pos = 0


class _HeaderFramer(Framer):
    """The loop of the framings other than ``binary2``: a header of ``HEADER`` bytes read by
    :meth:`_size`, then :meth:`_check` on the whole frame."""

    __slots__ = ()

    HEADER = HEADER_SIZE

    def _size(self, header: bytes) -> int:
        raise NotImplementedError

    def _check(self, frame: bytes) -> None:
        """Raise :class:`FramingError` if the frame's own envelope is wrong."""

    def next_frame(self) -> bytes | None:
        buf, header = self._buf, self.HEADER
        while True:
            pos = self._pos
            if len(buf) - pos < header:
                break
            size = self._size(bytes(buf[pos : pos + header]))
            end = pos + header + size
            if end > len(buf):
                break
            self._pos = end
            if size:
                frame = bytes(buf[pos + header : end])
                self._compact()
                self._check(frame)
                return frame
        self._compact()
        return None


class AsciiFramer(_HeaderFramer):
    """``ascii4``: four ASCII decimal digits of length (``0109`` then 109 bytes)."""

    __slots__ = ()

    HEADER = 4
    LIMIT = 9999

    def _size(self, header: bytes) -> int:
        # bytes.isdigit is ASCII only: no other script's digits, no sign, no space.
        if not header.isdigit():
            raise FramingError(f"length header {header.hex()} is not 4 ASCII digits")
        size = int(header)
        if size > self.max_size:
            raise FramingError(f"frame of {size} bytes exceeds the {self.max_size} byte limit")
        return size


class TpduFramer(_HeaderFramer):
    """``binary2-tpdu``: a 2-byte length counting the 5-byte TPDU and the message; frames come
    out with their TPDU. ``max_size`` is the message's (the TPDU not counted)."""

    __slots__ = ()

    LIMIT = 0xFFFF - TPDU_SIZE

    def _size(self, header: bytes) -> int:
        size = (header[0] << 8) | header[1]
        if size > self.max_size + TPDU_SIZE:
            raise FramingError(
                f"frame of {size} bytes exceeds the {self.max_size} byte limit and its TPDU"
            )
        return size

    def _check(self, frame: bytes) -> None:
        if len(frame) < TPDU_SIZE:
            raise FramingError(f"frame of {len(frame)} bytes is shorter than its 5-byte TPDU")
        if frame[0] != TPDU_ID:
            raise FramingError(f"TPDU id {frame[0]:02X} is not 60")


def encode_frame(payload: bytes, max_size: int = DEFAULT_MAX_FRAME) -> bytes:
    """``binary2``: the 2-byte length, then ``payload``."""
    size = len(payload)
    if size > max_size:
        raise LocalProtocolError(f"frame of {size} bytes exceeds the {max_size} byte limit")
    return size.to_bytes(2, "big") + payload


def encode_ascii_frame(payload: bytes, max_size: int = DEFAULT_MAX_FRAME) -> bytes:
    """``ascii4``: four ASCII digits of length, then ``payload``."""
    size = len(payload)
    if size > max_size or size > AsciiFramer.LIMIT:
        raise LocalProtocolError(f"frame of {size} bytes exceeds the {max_size} byte limit")
    return b"%04d" % size + payload


def encode_tpdu_frame(payload: bytes, max_size: int = DEFAULT_MAX_FRAME) -> bytes:
    """``binary2-tpdu``: ``payload`` is the TPDU and the message; ``max_size`` the message's."""
    size = len(payload)
    if size < TPDU_SIZE or payload[0] != TPDU_ID:
        raise LocalProtocolError("a TPDU frame must begin with its 5-byte TPDU (60...)")
    if size > max_size + TPDU_SIZE or size > 0xFFFF:
        raise LocalProtocolError(f"frame of {size} bytes exceeds the {max_size} byte limit")
    return size.to_bytes(2, "big") + payload


def make_tpdu(destination: int, source: int) -> bytes:
    """A TPDU: ``60``, then the 2-byte destination and source addresses (NII)."""
    if not (0 <= destination <= 0xFFFF and 0 <= source <= 0xFFFF):
        raise LocalProtocolError("TPDU addresses are 2 bytes each")
    return bytes((TPDU_ID,)) + destination.to_bytes(2, "big") + source.to_bytes(2, "big")


def split_tpdu(frame: bytes) -> tuple[bytes, bytes]:
    """A ``binary2-tpdu`` frame (as :class:`TpduFramer` checked it) -> (TPDU, message)."""
    return frame[:TPDU_SIZE], frame[TPDU_SIZE:]


def answer_tpdu(tpdu: bytes) -> bytes:
    """The TPDU of the answer to a request that carried ``tpdu``: addresses swapped."""
    return tpdu[:1] + tpdu[3:5] + tpdu[1:3]


@dataclass(frozen=True, slots=True)
class Framing:
    """One framing: its framer, its encoder and what its length header can carry."""

    name: str
    framer_class: type[Framer]
    encode: Callable[[bytes, int], bytes]
    """``encode(payload, max_size)``: the frame on the wire (``payload`` includes the TPDU)."""
    tpdu: bool = False
    """Frames carry a 5-byte TPDU before the message, answered with its addresses swapped."""

    @property
    def limit(self) -> int:
        """The largest message (TPDU not counted) the length header can carry."""
        return self.framer_class.LIMIT

    def framer(self, max_size: int = DEFAULT_MAX_FRAME) -> Framer:
        return self.framer_class(max_size)


BINARY2 = Framing("binary2", Framer, encode_frame)
ASCII4 = Framing("ascii4", AsciiFramer, encode_ascii_frame)
BINARY2_TPDU = Framing("binary2-tpdu", TpduFramer, encode_tpdu_frame, tpdu=True)

FRAMINGS: dict[str, Framing] = {f.name: f for f in (BINARY2, ASCII4, BINARY2_TPDU)}


def get_framing(name: str) -> Framing:
    try:
        return FRAMINGS[name]
    except KeyError:
        raise KeyError(f"unknown framing {name!r}; known: {sorted(FRAMINGS)}") from None
