"""Incremental 2-byte big-endian length-prefix framing (SPEC "Framing").

``Framer`` is fed whatever bytes arrive and hands back whole frames; it never blocks and never
reads a clock, so the caller decides what a stalled partial frame means.
"""

from __future__ import annotations

from protocols.errors import FramingError, LocalProtocolError

HEADER_SIZE = 2
DEFAULT_MAX_FRAME = 8192


class Framer:
    """Splits a byte stream into length-prefixed frames.

    A zero-length frame is taken as a keep-alive and skipped. A header announcing more than
    ``max_size`` bytes raises :class:`FramingError`: the stream cannot be resynchronised.
    """

    __slots__ = ("_buf", "_pos", "max_size")

    def __init__(self, max_size: int = DEFAULT_MAX_FRAME) -> None:
        if not 0 < max_size <= 0xFFFF:
            raise LocalProtocolError("max frame size must be 1..65535")
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


def encode_frame(payload: bytes, max_size: int = DEFAULT_MAX_FRAME) -> bytes:
    size = len(payload)
    if size > max_size:
        raise LocalProtocolError(f"frame of {size} bytes exceeds the {max_size} byte limit")
    return size.to_bytes(2, "big") + payload
