"""The load generator's wire: a lean ISO 8583 codec and its client connections.

The generator must cost much less CPU per transaction than the switch it measures (they share
the machine). pyiso8583 spends ~25 us per message on validation and generality; this encoder
writes the message straight from the dialect's field table, and :meth:`LeanCodec.peek` reads
only the fields the generator needs from an answer (11, 39, ...), stopping after the last one.
The tests check both against :class:`protocols.codec.Codec` on every kind of request.

Only the shapes the terminal dialect uses are supported (ASCII MTI, binary bitmaps, ASCII
length prefixes, ASCII or binary data); the constructor refuses anything else.

Connections (:func:`connect`): on asyncio and uvloop an ``asyncio.Protocol`` that hands each
answer to a callback straight from ``data_received`` (no reader task, no await per answer) and
writes the frames queued in one loop iteration at once; on trio a reader and a writer task
over AnyIO streams doing the same. Measured on the stack bench, the AnyIO stream path cost the
generator more CPU per transaction than building and reading the messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from binascii import a2b_hex
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import anyio
import anyio.abc
import sniffio

from kit.fastio import stream_transport
from kit.framed import FramedStream, StalledFrameError
from protocols.errors import ProtocolError


class WireError(ValueError):
    """A message that the lean codec cannot write or read (the generator counts it)."""


class LeanCodec:
    """Encoder and answer reader for one dialect.

    Both keep a small memo of message shapes (field keys -> bitmap and field table; bitmap ->
    fields to walk) and take the plain path (``_encode_exact``, ``_peek_exact``) for anything
    the memo does not cover or the fast path does not expect, so results and errors are those
    of the plain path."""

    __slots__ = ("_enc_plans", "_fields", "_lengths", "_peek_plans")

    def __init__(self, spec: Mapping[str, Mapping[str, Any]]) -> None:
        fields: dict[int, tuple[bool, int, int]] = {}
        for key, f in spec.items():
            if not key.isdigit() or key == "1":
                continue
            if f["len_enc"] != "ascii" or f["data_enc"] not in ("ascii", "b"):
                raise WireError(f"field {key}: encoding not supported by the lean codec")
            if f.get("left_pad") or f.get("len_count", "bytes") != "bytes":
                raise WireError(f"field {key}: padding/length count not supported")
            fields[int(key)] = (f["data_enc"] == "b", f["len_type"], f["max_len"])
        self._fields = fields
        self._enc_plans: dict[tuple[str, ...], _EncPlan | None] = {}
        self._peek_plans: dict[tuple[bytes, tuple[str, ...]], _PeekPlan | None] = {}
        # Exactly len_type ASCII digits -> the length they say, for the widths in use.
        widths = {len_type for _, len_type, _ in fields.values() if len_type}
        self._lengths = {
            str(n).rjust(w, "0").encode("ascii"): n for w in widths for n in range(10**w)
        }

    # -- encode ---------------------------------------------------------------------------

    def encode(self, mti: str, values: Mapping[str, str]) -> bytes:
        """``mti`` and fields (binary ones as hex text, as :class:`Message` holds them)."""
        keys = tuple(values)
        plans = self._enc_plans
        plan = plans.get(keys, _MISSING)
        if plan is _MISSING:
            plan = self._encode_plan(keys)
            if len(plans) < _PLANS_MAX:
                plans[keys] = plan
        if plan is not None and (raw := self._encode_planned(plan, mti, values)) is not None:
            return raw
        return self._encode_exact(mti, values)

    def _encode_plan(self, keys: tuple[str, ...]) -> _EncPlan | None:
        """Bitmap and fields in wire order for these keys; ``None`` unless every key is a field
        of the dialect written canonically."""
        numbers: list[int] = []
        for key in keys:
            if not (isinstance(key, str) and key.isascii() and key.isdigit()):
                return None
            n = int(key)
            if str(n) != key or n not in self._fields:
                return None
            numbers.append(n)
        numbers.sort()
        secondary = bool(numbers) and numbers[-1] > 64
        bitmap = 1 << 127 if secondary else 0
        plan: list[tuple[str, bool, int, int, tuple[str, ...]]] = []
        for n in numbers:
            binary, len_type, max_len = self._fields[n]
            prefixes = tuple(str(size).rjust(len_type, "0") for size in range(max_len + 1))
            plan.append((str(n), binary, len_type, max_len, prefixes))
            bitmap |= 1 << ((128 if secondary else 64) - n)
        raw_bitmap = bitmap.to_bytes(16 if secondary else 8, "big").decode("latin-1")
        return raw_bitmap, tuple(plan)

    @staticmethod
    def _encode_planned(plan: _EncPlan, mti: str, values: Mapping[str, str]) -> bytes | None:
        """The message built as latin-1 text and encoded once; ``None`` for anything unusual
        (the exact path then gives the result or the error)."""
        bitmap, fields = plan
        if not (isinstance(mti, str) and mti.isascii()):
            return None
        parts = [mti, bitmap]
        append = parts.append
        try:
            for key, binary, len_type, max_len, prefixes in fields:
                text = values[key]
                if binary:
                    text = a2b_hex(text).decode("latin-1")
                elif not text.isascii():
                    return None
                size = len(text)
                if len_type:
                    if size > max_len:
                        return None
                    append(prefixes[size])
                elif size != max_len:
                    return None
                append(text)
        except (ValueError, TypeError, AttributeError):
            return None
        return "".join(parts).encode("latin-1")

    def _encode_exact(self, mti: str, values: Mapping[str, str]) -> bytes:
        numbers = sorted(int(k) for k in values)
        bitmap = 0
        secondary = bool(numbers) and numbers[-1] > 64
        if secondary:
            bitmap |= 1 << 127
        parts: list[bytes] = []
        for n in numbers:
            spec = self._fields.get(n)
            if spec is None:
                raise WireError(f"field {n} is not in the dialect")
            binary, len_type, max_len = spec
            text = values[str(n)]
            data = bytes.fromhex(text) if binary else text.encode("ascii")
            size = len(data)
            if len_type == 0:
                if size != max_len:
                    raise WireError(f"field {n}: {size} bytes, needs {max_len}")
            elif size > max_len:
                raise WireError(f"field {n}: {size} bytes, at most {max_len}")
            else:
                parts.append(str(size).rjust(len_type, "0").encode("ascii"))
            parts.append(data)
            bitmap |= 1 << ((128 if secondary else 64) - n)
        raw_bitmap = bitmap.to_bytes(16 if secondary else 8, "big")
        return mti.encode("ascii") + raw_bitmap + b"".join(parts)

    # -- peek -----------------------------------------------------------------------------

    def peek(self, raw: bytes, wanted: Iterable[str]) -> tuple[str, dict[str, str]]:
        """The MTI and the ``wanted`` fields present in ``raw`` (binary ones as hex)."""
        if type(wanted) is tuple and type(raw) is bytes and len(raw) >= 20:
            secondary = raw[4] >= 0x80
            bitmap = raw[4:20] if secondary else raw[4:12]
            plans = self._peek_plans
            key = (bitmap, wanted)
            plan = plans.get(key, _MISSING)
            if plan is _MISSING:
                plan = self._peek_plan(bitmap, wanted)
                if len(plans) < _PLANS_MAX:
                    plans[key] = plan
            if plan is not None:
                found = self._peek_planned(plan, raw, 20 if secondary else 12)
                if found is not None:
                    return found
        return self._peek_exact(raw, wanted)

    def _peek_plan(self, bitmap: bytes, wanted: tuple[str, ...]) -> _PeekPlan | None:
        """The fields to walk (up to the last wanted one) and the name each wanted one goes
        under; ``None`` when a wanted name is odd or a field is not in the dialect."""
        try:
            want = {int(w) for w in wanted}
        except (TypeError, ValueError):
            return None
        if any(str(n) not in wanted for n in want):
            return None  # e.g. "011": let the exact path name it as it does
        last = max(want) if want else 0
        value = int.from_bytes(bitmap, "big")
        width = len(bitmap) * 8
        plan: list[tuple[bool, int, int, str | None]] = []
        for n in range(2, min(last, width) + 1):
            if not (value >> (width - n)) & 1:
                continue
            spec = self._fields.get(n)
            if spec is None:
                return None
            binary, len_type, max_len = spec
            plan.append((binary, len_type, max_len, str(n) if n in want else None))
        return tuple(plan)

    def _peek_planned(
        self, plan: _PeekPlan, raw: bytes, pos: int
    ) -> tuple[str, dict[str, str]] | None:
        if not raw[:4].isdigit():  # also refuses non-ASCII bytes
            return None
        lengths = self._lengths
        end_of_raw = len(raw)
        out: dict[str, str] = {}
        for binary, len_type, max_len, name in plan:
            if len_type:
                size = lengths.get(raw[pos : pos + len_type])
                if size is None:
                    return None
                pos += len_type
            else:
                size = max_len
            end = pos + size
            if end > end_of_raw:
                return None
            if name is not None:
                chunk = raw[pos:end]
                if binary:
                    out[name] = chunk.hex().upper()
                elif chunk.isascii():
                    out[name] = chunk.decode("ascii")
                else:
                    return None
            pos = end
        return raw[:4].decode("ascii"), out

    def _peek_exact(self, raw: bytes, wanted: Iterable[str]) -> tuple[str, dict[str, str]]:
        want = {int(w) for w in wanted}
        last = max(want) if want else 0
        try:
            mti = raw[:4].decode("ascii")
            bitmap = int.from_bytes(raw[4:12], "big")
            pos, width = 12, 64
            if bitmap >> 63:
                bitmap = (bitmap << 64) | int.from_bytes(raw[12:20], "big")
                pos, width = 20, 128
            out: dict[str, str] = {}
            for n in range(2, min(last, width) + 1):
                if not (bitmap >> (width - n)) & 1:
                    continue
                binary, len_type, max_len = self._fields[n]
                if len_type:
                    size = int(raw[pos : pos + len_type])
                    pos += len_type
                else:
                    size = max_len
                chunk = raw[pos : pos + size]
                if len(chunk) != size:
                    raise WireError(f"field {n} is truncated")
                pos += size
                if n in want:
                    out[str(n)] = chunk.hex().upper() if binary else chunk.decode("ascii")
        except (ValueError, KeyError, UnicodeDecodeError) as exc:
            raise WireError(f"undecodable answer ({type(exc).__name__})") from None
        if len(raw) < 12 or not mti.isdigit():
            raise WireError("undecodable answer (no MTI/bitmap)")
        return mti, out


_PLANS_MAX = 256
_MISSING: Any = object()
_EncPlan = tuple[str, tuple[tuple[str, bool, int, int, tuple[str, ...]], ...]]
_PeekPlan = tuple[tuple[bool, int, int, str | None], ...]


# -- connections ------------------------------------------------------------------------

FrameHandler = Callable[[bytes], None]
"""Called with each whole frame received (its length prefix removed)."""
LostHandler = Callable[[], None]
"""Called once when the connection ends (closed, broken, bad framing, stalled)."""

_GONE = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
    ssl.SSLError,
    ProtocolError,
    StalledFrameError,
)


class FrameConnection(Protocol):
    def send(self, frame: bytes) -> None:
        """Queue one frame (length prefix included); it leaves with the others queued in the
        same loop iteration. Dropped once the connection is gone."""

    def check_stall(self, now: float) -> None:
        """End the connection when a partial frame has waited longer than allowed."""

    async def run(self) -> None:
        """Serve the connection until it ends (trio: the reader and writer tasks)."""

    async def aclose(self) -> None: ...


class _AsyncioConnection(asyncio.Protocol):
    """The asyncio/uvloop connection: answers are handled inside ``data_received``."""

    def __init__(
        self, on_frame: FrameHandler, on_lost: LostHandler, max_size: int, partial_timeout: float
    ) -> None:
        self._on_frame = on_frame
        self._on_lost = on_lost
        self._max_size = max_size
        self._partial_timeout = partial_timeout
        self._partial_since = 0.0
        """time.monotonic() when an incomplete frame started waiting (0: none waits)."""
        self._buf = b""
        self._out: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()  # built by create_connection, in the loop
        self._ended = False
        self._reading = False
        self._done: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = stream_transport(transport)

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        size_all = len(buf)
        pos = 0
        on_frame = self._on_frame
        # Requests the answers trigger (closed loop) leave in one write when this returns.
        self._reading = True
        try:
            while size_all - pos >= 2:
                size = (buf[pos] << 8) | buf[pos + 1]
                if size > self._max_size:
                    self._buf = b""
                    self._end()  # the stream cannot be resynchronised
                    return
                end = pos + 2 + size
                if end > size_all:
                    break
                if size:  # a zero-length frame is a keep-alive
                    on_frame(buf[pos + 2 : end])
                pos = end
        finally:
            self._reading = False
            if self._out:
                self._flush()
        self._buf = buf[pos:] if pos < size_all else b""
        if not self._buf:
            self._partial_since = 0.0
        elif not self._partial_since:
            self._partial_since = time.monotonic()

    def eof_received(self) -> bool:
        return False  # close: the generator has nothing to say to a peer that hung up

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended_now()

    def _end(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._ended_now()

    def _ended_now(self) -> None:
        if self._ended:
            return
        self._ended = True
        self._out.clear()
        if self._done is not None and not self._done.done():
            self._done.set_result(None)
        self._on_lost()

    def check_stall(self, now: float) -> None:
        since = self._partial_since
        if since and now - since > self._partial_timeout and not self._ended:
            self._end()

    def send(self, frame: bytes) -> None:
        if self._ended:
            return
        out = self._out
        out.append(frame)
        if len(out) == 1 and not self._reading:
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        out, transport = self._out, self._transport
        if out and transport is not None and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    async def run(self) -> None:
        if self._ended:
            return
        self._done = asyncio.get_running_loop().create_future()
        await self._done

    async def aclose(self) -> None:
        self._flush()
        if self._transport is not None:
            self._transport.close()


class _StreamConnection:
    """The trio connection (AnyIO streams): a reader task and a writer task."""

    def __init__(self, framed: FramedStream, on_frame: FrameHandler, on_lost: LostHandler) -> None:
        self._framed = framed
        self._on_frame = on_frame
        self._on_lost = on_lost
        self._outbox: list[bytes] = []
        self._wake = anyio.Event()
        self._ended = False

    def send(self, frame: bytes) -> None:
        if self._ended:
            return
        self._outbox.append(frame)
        self._wake.set()

    def check_stall(self, now: float) -> None:
        pass  # FramedStream raises StalledFrameError in the reader

    async def run(self) -> None:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._writer)
                await self._reader()
                tg.cancel_scope.cancel()
        finally:
            if not self._ended:
                self._ended = True
                self._on_lost()

    async def _reader(self) -> None:
        on_frame = self._on_frame
        with contextlib.suppress(*_GONE):
            while True:
                on_frame(await self._framed.receive_frame())

    async def _writer(self) -> None:
        """The connection's only sender: whatever queued up since the last write leaves in
        one write (a syscall per message costs more than the generator's own work)."""
        stream = self._framed.stream
        with contextlib.suppress(*_GONE):
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                data = b"".join(self._outbox)
                self._outbox.clear()
                await stream.send(data)
        # On failure the reader sees the connection end.

    async def aclose(self) -> None:
        await self._framed.aclose()


async def connect(
    host: str,
    port: int,
    on_frame: FrameHandler,
    on_lost: LostHandler,
    *,
    tls: ssl.SSLContext | None = None,
    tls_hostname: str | None = None,
    max_size: int = 8192,
    partial_timeout: float = 30.0,
) -> FrameConnection:
    """A client connection to ``host:port`` (TLS with ``tls``); raises OSError (or
    ssl.SSLError) when it cannot be made."""
    if sniffio.current_async_library() == "asyncio":
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            lambda: _AsyncioConnection(on_frame, on_lost, max_size, partial_timeout),
            host,
            port,
            ssl=tls,
            server_hostname=tls_hostname if tls is not None else None,
        )
        return conn
    if tls is None:
        stream: anyio.abc.ByteStream = await anyio.connect_tcp(host, port)
    else:
        stream = await anyio.connect_tcp(
            host, port, ssl_context=tls, tls_hostname=tls_hostname, tls_standard_compatible=False
        )
    framed = FramedStream(stream, max_size=max_size, partial_timeout=partial_timeout)
    return _StreamConnection(framed, on_frame, on_lost)
