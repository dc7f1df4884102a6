"""A small Redis client on AnyIO streams (RESP2), for the risk counters.

Why not ``redis.asyncio``: it is bound to asyncio, and the gateway keeps trio support (every
async test runs on asyncio, uvloop and trio). The counters need only a handful of commands, so a
pooled RESP2 client with per-command timeouts is small: connections are opened lazily, a
connection that saw any error or timeout is discarded (never returned to the pool with a reply
half read), and Lua scripts go by EVALSHA with a fallback to EVAL on NOSCRIPT.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from dataclasses import dataclass
from typing import Protocol, cast
from urllib.parse import unquote, urlsplit

import anyio
import anyio.abc
import sniffio

Arg = str | bytes | int | float

_MAX_LINE = 64 * 1024
_MAX_BULK = 64 * 1024 * 1024


class RedisError(Exception):
    """Base of the client's errors."""


class RedisReplyError(RedisError):
    """The server answered with an error reply (``-ERR ...``, ``-NOSCRIPT ...``)."""


class RedisConnectionError(RedisError):
    """Connecting, sending or receiving failed, or the server broke the protocol."""


class RedisTimeoutError(RedisConnectionError):
    """No complete answer within the command timeout."""


# An error reply is a value (it may sit inside an array); execute() raises it at top level.
RespValue = None | int | bytes | str | RedisReplyError | list["RespValue"]


@dataclass(frozen=True, slots=True)
class RedisAddress:
    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    tls: bool

    @classmethod
    def parse(cls, url: str) -> RedisAddress:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError("Redis URL must start with redis:// or rediss://")
        path = parts.path.lstrip("/")
        try:
            db = int(path) if path else 0
            port = parts.port or 6379
        except ValueError:
            raise ValueError("Redis URL has a bad port or database number") from None
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=port,
            db=db,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=parts.scheme == "rediss",
        )


def encode_command(args: tuple[Arg, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, float):
            data = repr(arg).encode()
        else:
            data = str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def parse_reply(buf: bytes, pos: int = 0) -> tuple[RespValue, int] | None:
    """One RESP2 reply from ``buf[pos:]`` and the offset after it; None while incomplete.

    Sans-IO, so a reply that arrived in one read is parsed without a suspension per line.
    """
    end = buf.find(b"\r\n", pos)
    if end < 0:
        if len(buf) - pos >= _MAX_LINE:
            raise anyio.DelimiterNotFound(_MAX_LINE)
        return None
    kind = buf[pos : pos + 1]
    rest = buf[pos + 1 : end]
    after = end + 2
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None, after
        if size > _MAX_BULK:
            raise RedisConnectionError("bulk reply too large")
        if len(buf) < after + size + 2:
            return None
        return buf[after : after + size], after + size + 2
    if kind == b":":
        return int(rest), after
    if kind == b"*":
        count = int(rest)
        if count < 0:
            return None, after
        items: list[RespValue] = []
        for _ in range(count):
            parsed = parse_reply(buf, after)
            if parsed is None:
                return None
            item, after = parsed
            items.append(item)
        return items, after
    if kind == b"+":
        return rest.decode(), after
    if kind == b"-":
        return RedisReplyError(rest.decode(errors="replace")), after
    raise RedisConnectionError("malformed reply from Redis")


class _Connection(Protocol):
    timed: bool
    """:meth:`command` enforces its ``timeout`` itself"""

    async def command(self, args: tuple[Arg, ...], timeout: float | None = None) -> RespValue:
        """Send one command, read its reply (an error reply is returned, not raised).

        ``TimeoutError`` after ``timeout`` seconds when the connection is :attr:`timed`; else
        the caller bounds the wait.
        """
        ...

    async def abort(self) -> None:
        """Close at once (a connection whose reply state is unknown is never reused)."""
        ...


class _StreamConnection:
    """A connection on AnyIO streams (trio)."""

    timed = False

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self._buffer = b""
        """received bytes not yet parsed (a reply usually arrives in one read)"""

    async def abort(self) -> None:
        await anyio.aclose_forcefully(self.stream)

    async def command(self, args: tuple[Arg, ...], timeout: float | None = None) -> RespValue:
        await self.stream.send(encode_command(args))
        return await self.read_reply()

    async def read_reply(self) -> RespValue:
        while True:
            if self._buffer:
                parsed = parse_reply(self._buffer)
                if parsed is not None:
                    value, end = parsed
                    self._buffer = self._buffer[end:]
                    return value
            try:
                chunk = await self.stream.receive()
            except anyio.EndOfStream as exc:
                raise anyio.IncompleteRead from exc
            self._buffer = self._buffer + chunk if self._buffer else chunk


class _ProtocolConnection(asyncio.Protocol):
    """A connection on asyncio and uvloop: the reply is parsed in ``data_received``, which
    resolves the caller's future. AnyIO's stream layer would pause and resume reading (two
    system calls) and pass through the event loop once more on every command."""

    timed = True

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._waiter: asyncio.Future[RespValue] | None = None
        self._lost: type[Exception] | None = None
        """what a command on this connection raises once it is gone"""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer = self._buffer + data if self._buffer else data
        waiter = self._waiter
        if waiter is None:
            return  # kept, as a stream would keep it, for the next command to read
        try:
            parsed = parse_reply(self._buffer)
        except Exception as exc:  # broken protocol: the caller discards the connection
            self._resolve(waiter, exc)
            return
        if parsed is not None:
            value, end = parsed
            self._buffer = self._buffer[end:]
            self._waiter = None
            if not waiter.done():
                waiter.set_result(value)

    def connection_lost(self, exc: Exception | None) -> None:
        # as on a stream: closed by the peer mid-reply, or broken
        self._lost = anyio.IncompleteRead if exc is None else anyio.BrokenResourceError
        if self._waiter is not None:
            self._resolve(self._waiter, self._lost())

    def _resolve(self, waiter: asyncio.Future[RespValue], exc: Exception) -> None:
        self._waiter = None
        if not waiter.done():
            waiter.set_exception(exc)

    async def command(self, args: tuple[Arg, ...], timeout: float | None = None) -> RespValue:
        transport = self._transport
        if self._lost is not None:
            raise self._lost()
        if transport is None or transport.is_closing():
            raise anyio.BrokenResourceError
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[RespValue] = loop.create_future()
        self._waiter = waiter
        transport.write(encode_command(args))
        if timeout is None:
            return await waiter
        timer = loop.call_later(timeout, self._resolve, waiter, TimeoutError())
        try:
            return await waiter
        finally:
            timer.cancel()

    async def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


async def _open(address: RedisAddress) -> _Connection:
    """A connection to ``address``: an asyncio protocol on asyncio and uvloop, else streams."""
    context = ssl.create_default_context() if address.tls else None
    if sniffio.current_async_library() == "asyncio":
        _, protocol = await asyncio.get_running_loop().create_connection(
            _ProtocolConnection,
            address.host,
            address.port,
            ssl=context,
            server_hostname=address.host if context is not None else None,
        )
        return protocol
    if context is not None:
        stream: anyio.abc.ByteStream = await anyio.connect_tcp(
            address.host, address.port, ssl_context=context, tls=True
        )
    else:
        stream = await anyio.connect_tcp(address.host, address.port)
    return _StreamConnection(stream)


class LuaScript:
    """A script with its SHA1, run by EVALSHA with a fallback to EVAL."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


class RedisClient:
    """Pooled connections to one Redis database; safe to share between tasks of one loop."""

    def __init__(self, url: str, *, pool_size: int = 16, timeout: float = 0.5) -> None:
        self.address = RedisAddress.parse(url)
        self._pool_size = pool_size
        self._timeout = timeout
        self._idle: list[_Connection] = []
        self._slots: anyio.Semaphore | None = None
        self._closed = False
        self.connects = 0
        self.eval_fallbacks = 0

    async def _connect(self) -> _Connection:
        addr = self.address
        conn = await _open(addr)
        self.connects += 1
        try:
            if addr.password is not None:
                auth: tuple[Arg, ...] = ("AUTH", addr.password)
                if addr.username:
                    auth = ("AUTH", addr.username, addr.password)
                _raise_error(await conn.command(auth))
            if addr.db:
                _raise_error(await conn.command(("SELECT", addr.db)))
        except BaseException:
            await conn.abort()
            raise
        return conn

    async def _keep(self, conn: _Connection) -> None:
        if self._closed:
            await conn.abort()
        else:
            self._idle.append(conn)

    async def execute(self, *args: Arg) -> RespValue:
        """Run one command; error replies raise :class:`RedisReplyError`."""
        return _raise_error(await self._run(args))

    async def _run(self, args: tuple[Arg, ...]) -> RespValue:
        if self._closed:
            raise RedisConnectionError("client is closed")
        if self._slots is None:
            self._slots = anyio.Semaphore(self._pool_size)
        slots = self._slots
        conn: _Connection | None = None
        try:
            try:  # a free slot costs no extra trip through the event loop
                slots.acquire_nowait()
            except anyio.WouldBlock:
                acquired = False
            else:
                acquired = True
            idle = self._idle
            if acquired and idle and idle[-1].timed:
                # the usual case on asyncio: the connection's own timer bounds the wait
                # (cheaper than a cancel scope), as fail_after bounds it below
                conn = idle.pop()
                try:
                    reply = await conn.command(args, self._timeout)
                finally:
                    slots.release()
                await self._keep(conn)
                return reply
            with anyio.fail_after(self._timeout):
                if not acquired:
                    await slots.acquire()
                try:
                    conn = idle.pop() if idle else None
                    if conn is None:
                        conn = await self._connect()
                    reply = await conn.command(args)
                    await self._keep(conn)
                    return reply
                finally:
                    slots.release()
        except TimeoutError:
            await _discard(conn)
            raise RedisTimeoutError(f"Redis {args[0]!s} timed out") from None
        except _BROKEN as exc:
            await _discard(conn)
            raise RedisConnectionError(f"Redis {args[0]!s}: {type(exc).__name__}") from None
        except BaseException:
            # cancelled mid-reply: the connection state is unknown, never reuse it
            await _discard(conn)
            raise

    async def run_script(
        self, script: LuaScript, keys: tuple[str, ...], args: tuple[Arg, ...]
    ) -> RespValue:
        """EVALSHA, and EVAL when the server does not have the script cached (NOSCRIPT)."""
        reply = await self._run(("EVALSHA", script.sha, len(keys), *keys, *args))
        if isinstance(reply, RedisReplyError) and str(reply).startswith("NOSCRIPT"):
            self.eval_fallbacks += 1
            reply = await self._run(("EVAL", script.source, len(keys), *keys, *args))
        return _raise_error(reply)

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.abort()


_BROKEN = (
    OSError,
    ValueError,
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.IncompleteRead,
    anyio.DelimiterNotFound,
    RedisConnectionError,
)


async def _discard(conn: _Connection | None) -> None:
    if conn is not None:
        await conn.abort()


def _raise_error(reply: RespValue) -> RespValue:
    if isinstance(reply, RedisReplyError):
        raise reply
    return reply
