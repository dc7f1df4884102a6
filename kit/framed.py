"""A length-prefixed frame stream over any AnyIO byte stream (TCP or TLS).

The driver loop of a connection is the only code that awaits the network; this wraps the
sans-IO :class:`protocols.framing.Framer` for it.
"""

from __future__ import annotations

import anyio
from anyio.abc import ByteStream

from protocols.framing import Framer, encode_frame


class StalledFrameError(Exception):
    """A partial frame did not complete within the allowed time."""


class FramedStream:
    __slots__ = ("_framer", "_send_lock", "max_size", "partial_timeout", "stream")

    def __init__(self, stream: ByteStream, *, max_size: int, partial_timeout: float) -> None:
        self.stream = stream
        self.max_size = max_size
        self.partial_timeout = partial_timeout
        self._framer = Framer(max_size)
        self._send_lock = anyio.Lock()

    async def receive_frame(self) -> bytes:
        """Next whole frame. Raises ``anyio.EndOfStream`` at a clean close,
        :class:`protocols.errors.FramingError` on a bad header and
        :class:`StalledFrameError` when a partial frame stalls."""
        framer = self._framer
        while True:
            frame = framer.next_frame()
            if frame is not None:
                return frame
            if framer.has_partial:
                with anyio.move_on_after(self.partial_timeout) as scope:
                    data = await self.stream.receive()
                if scope.cancelled_caught:
                    raise StalledFrameError(f"partial frame stalled for {self.partial_timeout:g} s")
            else:
                data = await self.stream.receive()
            framer.feed(data)

    async def send_frame(self, payload: bytes) -> None:
        data = encode_frame(payload, self.max_size)
        async with self._send_lock:
            await self.stream.send(data)

    async def aclose(self) -> None:
        await self.stream.aclose()
