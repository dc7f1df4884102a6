"""Connections of the HSM client: one persistent connection each, commands pipelined on it and
answers matched by their 4-character header, in whatever order they come.

On asyncio (and uvloop) a connection is an :class:`asyncio.Protocol`: ``data_received`` feeds
the sans-IO framer and resolves each command's future directly, commands sent in one loop
iteration leave in one write, and one timer per connection (not one per command) expires
what is overdue. The caller awaits the bare future. Measured on the 2-core VM (``python -m
benchmarks.hsm --concurrency 1|64``), the client's CPU per command is about half of what
AnyIO streams with a reader and a writer task cost; what is left is mostly the kernel's
write and wake-up of the HSM, which only batching saves. On trio it is AnyIO streams, as
before. Either way a connection has one task in the client's task group, which owns its
lifetime (and closes it when cancelled).

Nothing here logs keys, PIN blocks or PANs: frames are passed through, never printed.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable
from typing import Any, Protocol

import anyio
import anyio.abc
import sniffio

from kit.fastio import stream_transport
from protocols import hsm as proto
from protocols.errors import FramingError
from protocols.framing import Framer, encode_frame

MAX_FRAME = 0xFFFF
# Timer slack: a timer may fire up to a millisecond early on uvloop's millisecond clock.
_SLACK = 0.001


class ConnectionLostError(Exception):
    """The connection closed with the command in flight (retried on another connection)."""


class HeadersExhaustedError(Exception):
    """Every 4-hex header is in flight on this connection."""


class Owner(Protocol):
    """What a connection reports to its client."""

    def connection_closed(self, conn: HsmConnection, reason: str) -> None: ...

    def unmatched_response(self, header: str | None) -> None: ...


class HsmConnection(Protocol):
    index: int
    closed: bool

    def in_flight(self) -> int: ...

    def batching(self) -> bool:
        """Commands wait to leave in this loop iteration's write: another joins them free."""
        ...

    def send(self, body: bytes, timeout: float) -> tuple[bytes, Awaitable[bytes]]:
        """Send ``body`` (command code and fields) under a fresh header: the header and what to
        await for the answer's payload.

        Awaiting raises ``TimeoutError`` when no answer came within ``timeout`` and
        :class:`ConnectionLostError` when the connection closed first (``send`` raises that
        too on a closed connection). A caller that stops awaiting (cancelled) calls
        :meth:`discard`.
        """
        ...

    def discard(self, header: bytes, waiter: Awaitable[bytes]) -> None:
        """Forget a command whose caller went away."""
        ...

    async def run(self) -> None:
        """Own the connection until it closes or the task is cancelled."""
        ...

    def close(self) -> None: ...


def _next_header(pending: dict[bytes, Any], last: int) -> tuple[int, bytes]:
    # 4 hex digits, skipping headers still in flight on this connection.
    for _ in range(0x10000):
        last = (last + 1) & 0xFFFF
        header = b"%04X" % last
        if header not in pending:
            return last, header
    raise HeadersExhaustedError


async def connect(
    owner: Owner,
    index: int,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None,
    server_hostname: str | None,
) -> HsmConnection:
    """A connected :class:`HsmConnection` (TLS when ``ssl_context`` is given). The caller
    bounds the time and starts :meth:`HsmConnection.run` in its task group."""
    if sniffio.current_async_library() == "asyncio":
        loop = asyncio.get_running_loop()
        conn = ProtocolConnection(owner, index)
        await loop.create_connection(
            lambda: conn,
            host,
            port,
            ssl=ssl_context,
            server_hostname=server_hostname if ssl_context is not None else None,
        )
        return conn
    if ssl_context is not None:
        stream: anyio.abc.ByteStream = await anyio.connect_tcp(
            host,
            port,
            ssl_context=ssl_context,
            tls_hostname=server_hostname,
            tls_standard_compatible=False,
        )
    else:
        stream = await anyio.connect_tcp(host, port)
    return StreamConnection(owner, index, stream)


# --------------------------------------------------------------------------- asyncio


class ProtocolConnection(asyncio.Protocol):
    """The asyncio connection: no task per command and none per read or write."""

    def __init__(self, owner: Owner, index: int) -> None:
        self.owner = owner
        self.index = index
        self.closed = False
        # header -> (future, deadline on the loop clock); insertion order is sending order.
        self.pending: dict[bytes, tuple[asyncio.Future[bytes], float]] = {}
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._framer = Framer(MAX_FRAME)
        self._out: list[bytes] = []
        self._next = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._done: asyncio.Future[str] = self._loop.create_future()

    def in_flight(self) -> int:
        return len(self.pending)

    def batching(self) -> bool:
        return bool(self._out)

    # -- asyncio callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = stream_transport(transport)

    def data_received(self, data: bytes) -> None:
        framer, pending = self._framer, self.pending
        framer.feed(data)
        try:
            while (frame := framer.next_frame()) is not None:
                entry = pending.pop(frame[: proto.HEADER_LENGTH], None)
                if entry is None:
                    # A late answer to a command that timed out, or a broken peer.
                    self.owner.unmatched_response(proto.peek_header(frame))
                    continue
                future = entry[0]
                if not future.done():
                    future.set_result(frame)
        except FramingError as exc:
            self._finish(f"framing error: {exc.reason}")

    def eof_received(self) -> bool:
        return False  # the transport closes; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish("closed by peer" if exc is None else f"read error: {type(exc).__name__}")

    # -- commands ---------------------------------------------------------------------------

    def send(self, body: bytes, timeout: float) -> tuple[bytes, asyncio.Future[bytes]]:
        # The caller awaits the bare future: no coroutine per command in between.
        if self.closed:
            raise ConnectionLostError
        pending = self.pending
        self._next, header = _next_header(pending, self._next)
        loop = self._loop
        future: asyncio.Future[bytes] = loop.create_future()
        deadline = loop.time() + timeout
        pending[header] = (future, deadline)
        if deadline < self._timer_at:
            self._arm(deadline)
        # Coalesce: commands sent in the same loop iteration leave in one write (a write is a
        # syscall and a wake-up of the HSM, dearer than the rest of a command here).
        out = self._out
        out.append(encode_frame(header + body, MAX_FRAME))
        if len(out) == 1:
            loop.call_soon(self._flush)
        return header, future

    def discard(self, header: bytes, waiter: Awaitable[bytes]) -> None:
        entry = self.pending.get(header)
        if entry is not None and entry[0] is waiter:
            del self.pending[header]

    def _flush(self) -> None:
        out, transport = self._out, self._transport
        if out and transport is not None and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._expire)

    def _expire(self) -> None:
        """Fail what is overdue; re-arm for the earliest deadline left."""
        self._timer, self._timer_at = None, float("inf")
        now = self._loop.time() + _SLACK
        overdue = [h for h, (_, deadline) in self.pending.items() if deadline <= now]
        for header in overdue:
            future = self.pending.pop(header)[0]
            if not future.done():
                future.set_exception(TimeoutError())
        if self.pending:
            self._arm(min(deadline for _, deadline in self.pending.values()))

    # -- lifetime ---------------------------------------------------------------------------

    def _finish(self, reason: str) -> None:
        """Closed (by either side): fail what is in flight, close the transport."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, float("inf")
        pending, self.pending = self.pending, {}
        for future, _ in pending.values():
            if not future.done():
                future.set_exception(ConnectionLostError())
        self._out.clear()
        if self._transport is not None:
            self._transport.close()
        if not self._done.done():
            self._done.set_result(reason)

    def close(self) -> None:
        self._finish("closed")

    async def run(self) -> None:
        reason = "closed"
        try:
            reason = await self._done
        finally:
            self._finish(reason)
            self.owner.connection_closed(self, reason)


# --------------------------------------------------------------------------- trio (AnyIO)


class _Pending:
    """One command awaiting its answer on an AnyIO connection."""

    __slots__ = ("event", "payload")

    def __init__(self) -> None:
        self.payload: bytes | None = None
        self.event = anyio.Event()


class StreamConnection:
    """The AnyIO-streams connection (trio): a writer that batches, a reader that matches."""

    def __init__(self, owner: Owner, index: int, stream: anyio.abc.ByteStream) -> None:
        self.owner = owner
        self.index = index
        self.stream = stream
        self.pending: dict[bytes, _Pending] = {}
        self.closed = False
        self._outbox: list[bytes] = []
        self._wakeup = anyio.Event()
        self._next = 0
        self._tg: anyio.abc.TaskGroup | None = None

    def in_flight(self) -> int:
        return len(self.pending)

    def batching(self) -> bool:
        return bool(self._outbox)

    def send(self, body: bytes, timeout: float) -> tuple[bytes, Awaitable[bytes]]:
        if self.closed:
            raise ConnectionLostError
        self._next, header = _next_header(self.pending, self._next)
        pending = _Pending()
        self.pending[header] = pending
        self._outbox.append(encode_frame(header + body, MAX_FRAME))
        self._wakeup.set()
        return header, self._wait(header, pending, timeout)

    def discard(self, header: bytes, waiter: Awaitable[bytes]) -> None:
        pass  # _wait cleans up after itself

    async def _wait(self, header: bytes, pending: _Pending, timeout: float) -> bytes:
        try:
            with anyio.move_on_after(timeout):
                await pending.event.wait()
        finally:
            if pending.payload is None:
                self.pending.pop(header, None)
        if not pending.event.is_set():
            raise TimeoutError
        if not pending.payload:
            raise ConnectionLostError
        return pending.payload

    def close(self) -> None:
        self.closed = True
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    async def run(self) -> None:
        reason = "closed"
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                if self.closed:
                    tg.cancel_scope.cancel()
                tg.start_soon(self._writer)
                reason = await self._reader()
                tg.cancel_scope.cancel()
        finally:
            self.closed = True
            for pending in self.pending.values():
                pending.payload = b""  # connection lost
                pending.event.set()
            self.pending.clear()
            with anyio.CancelScope(shield=True):
                await self.stream.aclose()
            self.owner.connection_closed(self, reason)

    async def _writer(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = anyio.Event()
            data = b"".join(self._outbox)
            self._outbox.clear()
            try:
                await self.stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                await self.stream.aclose()
                return

    async def _reader(self) -> str:
        framer = Framer(MAX_FRAME)
        while True:
            try:
                data = await self.stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return "closed by peer"
            except (OSError, ssl.SSLError) as exc:
                return f"read error: {type(exc).__name__}"
            framer.feed(data)
            try:
                while (frame := framer.next_frame()) is not None:
                    pending = self.pending.pop(frame[: proto.HEADER_LENGTH], None)
                    if pending is None:
                        self.owner.unmatched_response(proto.peek_header(frame))
                        continue
                    pending.payload = frame
                    pending.event.set()
            except FramingError as exc:
                return f"framing error: {exc.reason}"
