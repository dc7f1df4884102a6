"""Frame channels: the transport under every connection driver loop.

A channel has ``receive_frame``, ``send_frame`` and ``aclose``. On trio it is a
:class:`kit.framed.FramedStream` over AnyIO streams. On asyncio (and uvloop) it is a
:class:`FrameProtocol`: an ``asyncio.Protocol`` that feeds the sans-IO framer straight from
``data_received``, with the loop's native TLS. ARCHITECTURE.md measured AnyIO streams at
≈15 µs per message against ≈2 µs for a Protocol; the drivers above see the same interface,
and the tasks that serve connections still live in the owner's AnyIO task group.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, cast

import anyio
import sniffio
from anyio.abc import SocketAttribute, TaskGroup

from kit.admission import Admission
from kit.framed import Deadlines, FramedStream
from protocols.errors import FramingError
from protocols.framing import BINARY2, TPDU_ID, TPDU_SIZE, Framer, Framing

# Frames buffered before reading pauses: back-pressure instead of an unbounded queue.
_HIGH_FRAMES = 256
_NEVER = float("inf")


class FrameChannel(Protocol):
    peer: str

    async def receive_frame(self) -> bytes: ...

    async def send_frame(self, payload: bytes) -> None: ...

    async def aclose(self) -> None: ...


def stream_transport(transport: asyncio.BaseTransport) -> asyncio.Transport:
    """A new connection's transport, with Nagle off (small frames each way, answered at once).

    uvloop's transports are not ``asyncio.Transport`` subclasses, but have its methods."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return cast(asyncio.Transport, transport)


def transport_peer(transport: asyncio.BaseTransport) -> str:
    """The peer's ``host:port`` (``?`` when the transport does not say)."""
    peer = transport.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"


def fast_path() -> bool:
    """True on asyncio (and uvloop): use :class:`FrameProtocol`."""
    return sniffio.current_async_library() == "asyncio"


class Watchdog:
    """One timer per connection enforcing its :class:`kit.framed.Deadlines` on asyncio. A read
    only stores times, and moves the timer only when a partial frame begins whose deadline
    comes first (a rare read, not one per frame); when the timer fires, it calls
    ``on_expired`` with the limit's error, or arms itself for the deadline as it now stands.
    ``ours()`` true means data read waits for us (back-pressure): not held against the peer."""

    __slots__ = ("_at", "_framer", "_handle", "_loop", "_on_expired", "_ours", "deadlines")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        deadlines: Deadlines,
        framer: Framer,
        on_expired: Callable[[Exception], object],
        ours: Callable[[], bool] | None = None,
    ) -> None:
        self._loop = loop
        self.deadlines = deadlines
        self._framer = framer
        self._on_expired = on_expired
        self._ours = ours
        self._handle: asyncio.TimerHandle | None = None
        self._at = _NEVER
        deadlines.last_read = loop.time()
        self._arm(deadlines.due(False))

    def read(self, completed: bool) -> None:
        """Bytes were just fed to the framer; ``completed``: they completed a frame."""
        deadlines = self.deadlines
        if deadlines.read(self._loop.time(), self._framer.has_partial, completed):
            due = deadlines.due(True)
            if due is not None and due < self._at:
                self._arm(due)

    def stop(self) -> None:
        self._arm(None)

    def _arm(self, at: float | None) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._at = _NEVER if at is None else at
        if at is not None:
            self._handle = self._loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self._handle, self._at = None, _NEVER
        now, partial, deadlines = self._loop.time(), self._framer.has_partial, self.deadlines
        if self._ours is not None and self._ours():
            deadlines.waiting_on_us(now)
        expired = deadlines.expired(now, partial)
        if expired is not None:
            self._on_expired(expired)
        else:
            self._arm(deadlines.due(partial))


class FrameProtocol(asyncio.Protocol):
    """A frame channel on asyncio. Its time limits (idle, partial frame, whole frame:
    :class:`kit.framed.Deadlines`) share one timer per connection (:class:`Watchdog`), as the
    partial-frame timeout alone used to: no timer is made per frame, and an idle connection's
    timer fires once per ``idle_timeout``."""

    def __init__(
        self,
        max_size: int,
        partial_timeout: float,
        on_connect: Callable[[FrameProtocol], object] | None = None,
        *,
        idle_timeout: float | None = None,
        frame_deadline: float | None = None,
        admission: Admission | None = None,
        framing: Framing = BINARY2,
    ) -> None:
        self.max_size = max_size
        self.partial_timeout = partial_timeout
        self.peer = "?"
        self._admission = admission
        self._admitted = False
        self._deadlines = Deadlines(
            partial_timeout, frame_deadline=frame_deadline, idle_timeout=idle_timeout
        )
        self._expired: Exception | None = None
        self._watchdog: Watchdog | None = None
        self._framer: Framer = framing.framer(max_size)
        self._encode = framing.encode
        self._frames: deque[bytes] = deque()
        self._waiter: asyncio.Future[bool] | None = None
        self._transport: asyncio.Transport | None = None
        self._eof = False
        self._framing_error: FramingError | None = None
        self._lost: BaseException | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._out: list[bytes] = []
        self._on_connect = on_connect
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- asyncio callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = stream_transport(transport)
        self._loop = loop = asyncio.get_running_loop()  # kept: the lookup is not free per frame
        self.peer = transport_peer(transport)
        if self._admission is not None:
            if not self._admission.admit(self.peer):
                self._eof = True
                self._transport.abort()  # over a cap: nothing read, nothing to send
                return
            self._admitted = True
        self._watchdog = Watchdog(loop, self._deadlines, self._framer, self._expire, self._ours)
        if self._on_connect is not None:
            self._on_connect(self)

    def data_received(self, data: bytes) -> None:
        framer = self._framer
        frames = self._frames
        queued = len(frames)
        framer.feed(data)
        try:
            while (frame := framer.next_frame()) is not None:
                frames.append(frame)
        except FramingError as exc:
            self._framing_error = exc
            if self._transport is not None:
                self._transport.pause_reading()
        if self._watchdog is not None:
            self._watchdog.read(len(frames) > queued)
        if len(self._frames) >= _HIGH_FRAMES and not self._reading_paused:
            self._reading_paused = True
            if self._transport is not None:
                self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()
        if self._admitted and self._admission is not None:
            self._admitted = False
            self._admission.release(self.peer)
        self._eof = True
        self._lost = exc
        self._wake()
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(False)

    def _ours(self) -> bool:
        return bool(self._frames) or self._reading_paused

    def _expire(self, expired: Exception) -> None:
        self._expired = expired
        if self._transport is not None:
            self._transport.pause_reading()
        self._wake()

    # -- the channel ------------------------------------------------------------------------

    async def receive_frame(self) -> bytes:
        frames = self._frames
        while not frames:
            if self._framing_error is not None:
                raise self._framing_error
            if self._expired is not None:
                raise self._expired
            if self._eof:
                if self._lost is not None:
                    raise anyio.BrokenResourceError from self._lost
                raise anyio.EndOfStream
            loop = self._loop or asyncio.get_running_loop()
            waiter: asyncio.Future[bool] = loop.create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None
        frame = frames.popleft()
        if self._reading_paused and len(frames) < _HIGH_FRAMES // 2:
            self._reading_paused = False
            if self._transport is not None and self._framing_error is None:
                self._transport.resume_reading()
        return frame

    async def send_frame(self, payload: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            raise anyio.BrokenResourceError
        # Coalesce: frames sent in the same loop iteration leave in one write. A write to a
        # peer process costs tens of microseconds here (syscall and wake-up), more than the
        # rest of a frame's handling, and under load several answers are ready at once.
        out = self._out
        out.append(self._encode(payload, self.max_size))
        loop = self._loop or asyncio.get_running_loop()
        if len(out) == 1:
            loop.call_soon(self._flush)
        if self._writing_paused:
            self._drain = loop.create_future()
            await self._drain
            if self._eof and self._lost is not None:
                raise anyio.BrokenResourceError from self._lost

    def _flush(self) -> None:
        out, transport = self._out, self._transport
        if out and transport is not None and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    async def aclose(self) -> None:
        self._flush()
        if self._transport is not None:
            self._transport.close()


class _StreamChannel(FramedStream):
    """The AnyIO-streams channel (trio), with the peer name the drivers log."""

    __slots__ = ("peer",)

    def __init__(self, stream: Any, **options: Any) -> None:
        super().__init__(stream, **options)
        try:
            address = stream.extra(SocketAttribute.remote_address)
            self.peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else "?"
        except Exception:
            self.peer = "?"


async def connect(
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None,
    server_hostname: str | None,
    max_size: int,
    partial_timeout: float,
    framing: Framing = BINARY2,
    tpdu: bytes = b"",
) -> FrameChannel:
    """A client channel (TCP, or TLS when ``ssl_context`` is given) in ``framing``; with a
    TPDU framing, every frame sent carries ``tpdu`` (:class:`TpduChannel`)."""
    if framing.tpdu and (len(tpdu) != TPDU_SIZE or tpdu[0] != TPDU_ID):
        raise ValueError("a TPDU is 5 bytes beginning with 60")  # before connecting
    channel = await _connect(
        host, port, ssl_context, server_hostname, max_size, partial_timeout, framing
    )
    return TpduChannel(channel, tpdu) if framing.tpdu else channel


class TpduChannel:
    """A client's channel in a TPDU framing: each frame sent begins with ``tpdu``, and each
    frame received loses its own (the server's answer to it, addresses swapped)."""

    __slots__ = ("_channel", "_tpdu", "peer")

    def __init__(self, channel: FrameChannel, tpdu: bytes) -> None:
        self._channel = channel
        self._tpdu = tpdu
        self.peer = channel.peer

    async def receive_frame(self) -> bytes:
        return (await self._channel.receive_frame())[TPDU_SIZE:]

    async def send_frame(self, payload: bytes) -> None:
        await self._channel.send_frame(self._tpdu + payload)

    async def aclose(self) -> None:
        await self._channel.aclose()


async def _connect(
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    server_hostname: str | None,
    max_size: int,
    partial_timeout: float,
    framing: Framing,
) -> FrameChannel:
    if fast_path():
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(
            lambda: FrameProtocol(max_size, partial_timeout, framing=framing),
            host,
            port,
            ssl=ssl_context,
            server_hostname=server_hostname if ssl_context is not None else None,
        )
        return proto
    if ssl_context is None:
        stream: Any = await anyio.connect_tcp(host, port)
    else:
        stream = await anyio.connect_tcp(
            host,
            port,
            ssl_context=ssl_context,
            tls_hostname=server_hostname,
            tls_standard_compatible=False,
        )
    return _StreamChannel(
        stream, max_size=max_size, partial_timeout=partial_timeout, framing=framing
    )


async def serve(
    tg: TaskGroup,
    handler: Callable[[FrameChannel], Coroutine[Any, Any, None]],
    *,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    max_size: int,
    partial_timeout: float,
    idle_timeout: float | None = None,
    frame_deadline: float | None = None,
    handshake_timeout: float = 10.0,
    admission: Admission | None = None,
    reuse_port: bool = False,
    framing: Framing = BINARY2,
) -> int:
    """Listen and serve each connection with ``handler`` in ``tg``; returns the bound port.

    The listener lives until ``tg`` is cancelled. ``reuse_port`` lets several worker
    processes listen on one port (SO_REUSEPORT: the kernel spreads connections); ``framing``
    is the listener's (a TPDU framing's frames reach ``handler`` with their TPDU). A connection
    over one of ``admission``'s caps is closed before ``handler`` sees it. With TLS, a
    connection is counted once its handshake is done: until then ``handshake_timeout`` bounds it.
    """
    options: dict[str, Any] = {
        "max_size": max_size,
        "partial_timeout": partial_timeout,
        "idle_timeout": idle_timeout,
        "frame_deadline": frame_deadline,
        "framing": framing,
    }
    if fast_path():
        loop = asyncio.get_running_loop()

        def factory() -> FrameProtocol:
            return FrameProtocol(
                on_connect=lambda p: tg.start_soon(handler, p), admission=admission, **options
            )

        server = await loop.create_server(
            factory,
            host,
            port,
            ssl=ssl_context,
            backlog=4096,
            reuse_address=True,
            reuse_port=reuse_port or None,
            ssl_handshake_timeout=handshake_timeout if ssl_context is not None else None,
        )
        bound: int = server.sockets[0].getsockname()[1]
        tg.start_soon(_hold_server, server)
        return bound

    from anyio.streams.tls import TLSListener

    raw = await anyio.create_tcp_listener(
        local_host=host, local_port=port, backlog=4096, reuse_port=reuse_port
    )
    bound = raw.extra(SocketAttribute.local_port)
    listener: Any = (
        TLSListener(
            raw, ssl_context, standard_compatible=False, handshake_timeout=handshake_timeout
        )
        if ssl_context is not None
        else raw
    )

    async def on_stream(stream: Any) -> None:
        channel = _StreamChannel(stream, **options)
        if admission is None:
            await handler(channel)
        elif not admission.admit(channel.peer):
            await stream.aclose()
        else:
            try:
                await handler(channel)
            finally:
                admission.release(channel.peer)

    async def run_listener() -> None:
        async with listener:
            await listener.serve(on_stream, task_group=tg)

    tg.start_soon(run_listener)
    return bound


async def _hold_server(server: asyncio.Server) -> None:
    try:
        await anyio.sleep_forever()
    finally:
        server.close()
