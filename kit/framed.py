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


class FrameDeadlineError(StalledFrameError):
    """A frame did not complete within the deadline counted from its first byte, however it
    was dripped (each gap within the partial-frame timeout)."""


class IdleTimeoutError(Exception):
    """The peer sent nothing (not even a keep-alive) for the idle timeout."""


class FramedStream:
    __slots__ = (
        "_frame_start",
        "_framer",
        "_send_lock",
        "frame_deadline",
        "idle_timeout",
        "max_size",
        "partial_timeout",
        "stream",
    )

    def __init__(
        self,
        stream: ByteStream,
        *,
        max_size: int,
        partial_timeout: float,
        idle_timeout: float | None = None,
        frame_deadline: float | None = None,
    ) -> None:
        self.stream = stream
        self.max_size = max_size
        self.partial_timeout = partial_timeout
        self.idle_timeout = idle_timeout
        self.frame_deadline = frame_deadline
        self._framer = Framer(max_size)
        self._send_lock = anyio.Lock()
        self._frame_start: float | None = None

    async def receive_frame(self) -> bytes:
        """Next whole frame. Raises ``anyio.EndOfStream`` at a clean close,
        :class:`protocols.errors.FramingError` on a bad header, :class:`StalledFrameError`
        when a partial frame stalls (:class:`FrameDeadlineError`: past its deadline) and
        :class:`IdleTimeoutError` after ``idle_timeout`` seconds without a byte."""
        framer = self._framer
        while True:
            frame = framer.next_frame()
            if frame is not None:
                self._frame_start = None
                return frame
            if framer.has_partial:
                now = anyio.current_time()
                if self._frame_start is None:
                    self._frame_start = now
                wait, expired = self.partial_timeout, "stalled"
                if self.frame_deadline is not None:
                    left = self._frame_start + self.frame_deadline - now
                    if left < wait:
                        wait, expired = left, "deadline"
            elif self.idle_timeout is not None:
                wait, expired = self.idle_timeout, "idle"
            else:
                framer.feed(await self.stream.receive())
                continue
            with anyio.move_on_after(wait) as scope:
                data = await self.stream.receive()
            if scope.cancelled_caught:
                raise self._expired(expired)
            framer.feed(data)

    def _expired(self, what: str) -> Exception:
        if what == "idle":
            return IdleTimeoutError(f"nothing received for {self.idle_timeout:g} s")
        if what == "deadline":
            return FrameDeadlineError(
                f"frame incomplete {self.frame_deadline:g} s after its first byte"
            )
        return StalledFrameError(f"partial frame stalled for {self.partial_timeout:g} s")

    async def send_frame(self, payload: bytes) -> None:
        data = encode_frame(payload, self.max_size)
        async with self._send_lock:
            await self.stream.send(data)

    async def aclose(self) -> None:
        await self.stream.aclose()
