"""A length-prefixed frame stream over any AnyIO byte stream (TCP or TLS).

The driver loop of a connection is the only code that awaits the network; this wraps the
sans-IO :class:`protocols.framing.Framer` for it.
"""

from __future__ import annotations

import anyio
from anyio.abc import ByteStream

from protocols.framing import BINARY2, Framing


class StalledFrameError(Exception):
    """A partial frame did not complete within the allowed time."""


class FrameDeadlineError(StalledFrameError):
    """A frame did not complete within the deadline counted from its first byte, however it
    was dripped (each gap within the partial-frame timeout)."""


class IdleTimeoutError(Exception):
    """The peer sent nothing (not even a keep-alive) for the idle timeout."""


class Deadlines:
    """The time limits of one connection's reads, sans-IO (the caller passes its clock's time):
    a partial frame without a new byte for ``partial_timeout``, a frame not complete
    ``frame_deadline`` after its first byte, nothing at all for ``idle_timeout`` (None: no
    such limit). A read only stores times; the owner waits until :meth:`due` and then asks
    :meth:`expired` (a read may have moved the deadline later)."""

    __slots__ = ("frame_deadline", "frame_start", "idle_timeout", "last_read", "partial_timeout")

    def __init__(
        self,
        partial_timeout: float,
        *,
        frame_deadline: float | None = None,
        idle_timeout: float | None = None,
        now: float = 0.0,
    ) -> None:
        self.partial_timeout = partial_timeout
        self.frame_deadline = frame_deadline
        self.idle_timeout = idle_timeout
        self.last_read = now
        self.frame_start = -1.0  # first read of the partial frame; -1: none

    def read(self, now: float, partial: bool, completed: bool) -> bool:
        """Bytes read at ``now``; ``partial``: a frame is incomplete after them; ``completed``:
        they completed a frame (so a partial one after it began in this read). True when a
        partial frame began: its deadline may come before the one the owner waits for."""
        self.last_read = now
        if not partial:
            self.frame_start = -1.0
        elif completed or self.frame_start < 0:
            self.frame_start = now
            return True
        return False

    def waiting_on_us(self, now: float) -> None:
        """Frames read wait for us: the time is ours, not the peer's."""
        self.last_read = now
        if self.frame_start >= 0:
            self.frame_start = now

    def expired(self, now: float, partial: bool) -> Exception | None:
        """The limit passed at ``now``, as the error to raise, or None."""
        if partial:
            if self.frame_deadline is not None and now >= self.frame_start + self.frame_deadline:
                return FrameDeadlineError(
                    f"frame incomplete {self.frame_deadline:g} s after its first byte"
                )
            if now >= self.last_read + self.partial_timeout:
                return StalledFrameError(f"partial frame stalled for {self.partial_timeout:g} s")
        elif self.idle_timeout is not None and now >= self.last_read + self.idle_timeout:
            return IdleTimeoutError(f"nothing received for {self.idle_timeout:g} s")
        return None

    def due(self, partial: bool) -> float | None:
        """When a limit passes if nothing more is read (None: never)."""
        if partial:
            due = self.last_read + self.partial_timeout
            if self.frame_deadline is not None:
                due = min(due, self.frame_start + self.frame_deadline)
            return due
        return None if self.idle_timeout is None else self.last_read + self.idle_timeout


class FramedStream:
    __slots__ = (
        "_deadlines",
        "_encode",
        "_framer",
        "_send_lock",
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
        framing: Framing = BINARY2,
    ) -> None:
        self.stream = stream
        self.max_size = max_size
        self.partial_timeout = partial_timeout
        self._framer = framing.framer(max_size)
        self._encode = framing.encode
        self._send_lock = anyio.Lock()
        self._deadlines = Deadlines(
            partial_timeout,
            frame_deadline=frame_deadline,
            idle_timeout=idle_timeout,
            now=anyio.current_time(),
        )

    async def receive_frame(self) -> bytes:
        """Next whole frame. Raises ``anyio.EndOfStream`` at a clean close,
        :class:`protocols.errors.FramingError` on a bad header, :class:`StalledFrameError`
        when a partial frame stalls (:class:`FrameDeadlineError`: past its deadline) and
        :class:`IdleTimeoutError` after ``idle_timeout`` seconds without a byte."""
        framer, deadlines = self._framer, self._deadlines
        while (frame := framer.next_frame()) is None:
            now, partial = anyio.current_time(), framer.has_partial
            expired = deadlines.expired(now, partial)
            if expired is not None:
                raise expired
            due = deadlines.due(partial)
            if due is None:
                data = await self.stream.receive()
            else:
                with anyio.move_on_after(due - now) as scope:
                    data = await self.stream.receive()
                if scope.cancelled_caught:
                    continue  # look at the limits again
            framer.feed(data)
            deadlines.read(anyio.current_time(), True, False)
        # What is left after this frame came in the same read: a new frame begins there.
        deadlines.read(deadlines.last_read, framer.has_partial, True)
        return frame

    async def send_frame(self, payload: bytes) -> None:
        data = self._encode(payload, self.max_size)
        async with self._send_lock:
            await self.stream.send(data)

    async def aclose(self) -> None:
        await self.stream.aclose()
