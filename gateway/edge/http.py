"""Run an ASGI app with hypercorn on the current AnyIO backend (asyncio or trio); what the
HTTP APIs (admin, QR) share: middleware for what hypercorn leaves to the app
(:class:`DrainBody`), the throttle of failed authentications (:class:`AuthFailures`), the caps
on open connections (:class:`ConnectionGate`)."""

from __future__ import annotations

import contextlib
import math
import os
import socket
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import anyio
import orjson
import sniffio
from anyio.abc import TaskStatus
from hypercorn.config import Config
from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.config import HttpLimits
from kit.logs import PeerWarnings, get_logger
from protocols.bounded import BoundedFifo

log = get_logger("gateway.edge.http")

AUTH_FAILURES_LIMIT: Final = 20
"""Failed authentications one address may make within ``AUTH_FAILURES_WINDOW`` seconds; past
it, 429 without looking at the credentials (no brute force, no log or audit flood)."""
AUTH_FAILURES_WINDOW: Final = 60.0
AUTH_FAILURES_DETAIL: Final = (
    f"{AUTH_FAILURES_LIMIT} failed authentications from this address within "
    f"{AUTH_FAILURES_WINDOW:.0f} s; retry later"
)
"""The ``detail`` of the 429 problem document."""
_AUTH_PEERS: Final = 10_000  # addresses tracked at most (oldest forgotten first)


def bind_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def serve_asgi(
    app: Any,
    host: str,
    port: int,
    *,
    limits: HttpLimits | None = None,
    refused: Refused | None = None,
    reuse_port: bool = False,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; reports the bound port (useful with port 0). ``refused`` hears
    of each request refused by a limit (peer, reason)."""
    limits = limits or HttpLimits()
    sock = bind_socket(host, port, reuse_port=reuse_port)
    config = Config()
    # hypercorn closes the descriptor it is given: hand it a duplicate and keep ours.
    config.bind = [f"fd://{os.dup(sock.fileno())}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    # A head must complete within keep_alive_timeout: hypercorn's idle timer runs until then.
    # Its read_timeout stays off: it would also cut a request whose answer takes longer.
    config.keep_alive_timeout = limits.header_timeout
    config.h11_max_incomplete_size = limits.max_header_bytes
    app = BodyDeadline(app, timeout=limits.body_timeout, refused=refused)
    gate = ConnectionGate(limits.max_connections, limits.max_connections_per_address, refused)
    setattr(config, _GATE, gate)  # hypercorn's Config has no field of ours
    stop = anyio.Event()
    bound: int = sock.getsockname()[1]
    try:
        async with anyio.create_task_group() as tg:
            _gate_connections()
            if sniffio.current_async_library() == "trio":
                from hypercorn.trio import serve as trio_serve

                tg.start_soon(_run, trio_serve, app, config, stop)
            else:
                from hypercorn.asyncio import serve as asyncio_serve

                tg.start_soon(_run, asyncio_serve, app, config, stop)
            task_status.started(bound)
            try:
                await anyio.sleep_forever()
            finally:
                stop.set()
    finally:
        sock.close()


async def _run(serve: Any, app: Any, config: Config, stop: anyio.Event) -> None:
    # Shielded: hypercorn is stopped through its shutdown trigger (graceful, bounded by
    # graceful_timeout), never by cancellation, which its asyncio worker does not survive.
    with anyio.CancelScope(shield=True):
        await serve(app, config, shutdown_trigger=stop.wait)


Refused = Callable[[str, str], object]
"""Told of each request refused by a limit: (peer ``host:port``, reason)."""

_GATE: Final = "payswitch_connection_gate"
_REFUSAL_BODY: Final = orjson.dumps(
    {"title": "Service Unavailable", "status": 503, "detail": "too many connections"}
)
_REFUSAL: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n"
    b"retry-after: 1\r\nconnection: close\r\n"
    + f"content-length: {len(_REFUSAL_BODY)}\r\n\r\n".encode()
    + _REFUSAL_BODY
)


class ConnectionGate:
    """Open connections of one HTTP listener, in all and per source address; one past a cap
    is refused (503, closed) and told to ``refused`` (reasons ``max_connections``,
    ``max_per_address``): counted and logged, never silent."""

    def __init__(self, max_connections: int, per_address: int, refused: Refused | None) -> None:
        self.max_connections = max_connections
        self.per_address = per_address
        self.refused = refused
        self.open = 0
        self.by_address: dict[str, int] = {}

    def enter(self, host: str) -> str | None:
        """Count a new connection from ``host`` in; the reason it is refused, or ``None``."""
        if self.open >= self.max_connections:
            return "max_connections"
        held = self.by_address.get(host, 0)
        if held >= self.per_address:
            return "max_per_address"
        self.open += 1
        self.by_address[host] = held + 1
        return None

    def leave(self, host: str) -> None:
        self.open -= 1
        held = self.by_address[host] - 1
        if held:
            self.by_address[host] = held
        else:
            del self.by_address[host]  # bounded by the addresses connected now


_gated = False


def _gate_connections() -> None:
    """Wrap hypercorn's per-connection server (both backends) so each connection passes its
    listener's :class:`ConnectionGate` first: hypercorn accepts on its own and offers no hook
    (tests/gateway/test_http_limits.py fails if an upgrade moves what is wrapped here)."""
    global _gated
    if _gated:
        return
    import hypercorn.asyncio.run as asyncio_run
    from hypercorn.asyncio.tcp_server import TCPServer as AsyncioServer

    # setattr: the name is what hypercorn's run module imported, not an attribute it exports.
    setattr(asyncio_run, "TCPServer", _gated_server(AsyncioServer))  # noqa: B010
    with contextlib.suppress(ImportError):  # trio is optional
        import hypercorn.trio.run as trio_run
        from hypercorn.trio.tcp_server import TCPServer as TrioServer

        setattr(trio_run, "TCPServer", _gated_server(TrioServer))  # noqa: B010
    _gated = True


def _gated_server(base: type[Any]) -> type[Any]:
    class GatedTCPServer(base):  # type: ignore[misc]
        async def run(self) -> None:
            gate: ConnectionGate | None = getattr(self.config, _GATE, None)
            try:
                host, port = _peer(self)[:2]
            except OSError:
                host = ""  # already gone: hypercorn's own run ends it
            if gate is None or not host:
                await super().run()
                return
            reason = gate.enter(host)
            if reason is None:
                try:
                    await super().run()
                finally:
                    gate.leave(host)
                return
            if gate.refused is not None:
                gate.refused(f"{host}:{port}", reason)
            await _refuse(self)

    return GatedTCPServer


def _peer(server: Any) -> tuple[str, int]:
    writer = getattr(server, "writer", None)
    if writer is not None:  # asyncio
        peer = writer.get_extra_info("peername")
        if peer is None:
            raise OSError("no peer")
        return peer[0], peer[1]
    stream = server.stream  # trio: a SocketStream (no TLS on these APIs)
    sock = getattr(stream, "socket", None) or stream.transport_stream.socket
    peer = sock.getpeername()
    return peer[0], peer[1]


async def _refuse(server: Any) -> None:
    """503 and close, without reading the request (at most a second to write it)."""
    with anyio.move_on_after(1.0), contextlib.suppress(Exception):
        writer = getattr(server, "writer", None)
        if writer is not None:
            writer.write(_REFUSAL)
            await writer.drain()
        else:
            await server.stream.send_all(_REFUSAL)
    with contextlib.suppress(Exception):
        writer = getattr(server, "writer", None)
        if writer is not None:
            writer.close()
        else:
            with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                await server.stream.aclose()


_TIMEOUT_BODY: Final = orjson.dumps(
    {"title": "Request Timeout", "status": 408, "detail": "the request body came too slowly"}
)


class BodyDeadline:
    """ASGI middleware: a request's body must arrive within ``timeout`` seconds of its head,
    however it is dripped. Past that, the client gets 408 with ``Connection: close`` (unless
    an answer has started) and the app sees the client gone (``http.disconnect``); what the
    app sends then is dropped. Without it, a client holding a partial body held the
    connection and its task for as long as it liked."""

    def __init__(self, app: ASGIApp, *, timeout: float, refused: Refused | None = None) -> None:
        self.app = app
        self.timeout = timeout
        self.refused = refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = anyio.current_time() + self.timeout
        started = complete = expired = ours = False

        async def timed_receive() -> Message:
            nonlocal complete, expired, ours
            if expired:
                return {"type": "http.disconnect"}
            if complete:
                return await receive()  # only the client's going remains to be told
            with anyio.move_on_after(deadline - anyio.current_time()):
                message = await receive()
                complete = message["type"] != "http.request" or not message.get("more_body")
                return message
            expired = True
            if self.refused is not None:
                client = scope.get("client") or ("?", 0)
                self.refused(f"{client[0]}:{client[1]}", "body_timeout")
            if not started:
                ours = True
                headers = [
                    (b"content-type", b"application/problem+json"),
                    (b"connection", b"close"),
                ]
                await send({"type": "http.response.start", "status": 408, "headers": headers})
                await send({"type": "http.response.body", "body": _TIMEOUT_BODY})
            return {"type": "http.disconnect"}

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if ours:
                return  # our 408 went out instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, timed_receive, guarded_send)


class Rejections:
    """An HTTP API's requests refused by a limit: counted in ``switch_http_rejected{api,
    reason}`` and a warning rate-limited per address (a flood must not flood the logs)."""

    def __init__(self, counter: Counter, api: str) -> None:
        self.counter = counter
        self.api = api
        self.warnings = PeerWarnings(log)

    def __call__(self, peer: str, reason: str) -> None:
        self.counter.labels(self.api, reason).inc()
        self.warnings.warning("http_limit", peer, api=self.api, reason=reason)


class DrainBody:
    """ASGI middleware: an answer about to go out while the request body is still coming (an
    early 401, 413 or 415) first reads and drops the rest of it, at most ``limit`` bytes in all
    within ``timeout`` seconds; past either, or with the client gone, the answer says
    ``Connection: close``.

    Why: hypercorn ends a keep-alive connection whose request body was not all received when
    the answer ended (h11 cannot start the next request), without ``Connection: close``, so a
    client sends its next request into a closed socket (httpx: RemoteProtocolError).
    """

    def __init__(self, app: ASGIApp, *, limit: int, timeout: float = 5.0) -> None:
        self.app = app
        self.limit = limit
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received = 0
        complete = gone = False

        async def tracking_receive() -> Message:
            nonlocal received, complete, gone
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
            elif message["type"] == "http.disconnect":
                gone = True
            return message

        async def drained() -> bool:
            """True once the whole body is in (nothing left to keep the connection from)."""
            if self._declared(scope) > self.limit:
                return False  # not worth reading: the client is told to stop instead
            with anyio.move_on_after(self.timeout):
                while not complete and not gone and received <= self.limit:
                    await tracking_receive()
            return complete

        async def draining_send(message: Message) -> None:
            started = message["type"] == "http.response.start"
            if started and not complete and (gone or not await drained()):
                headers = [*message.get("headers", ()), (b"connection", b"close")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, tracking_receive, draining_send)

    @staticmethod
    def _declared(scope: Scope) -> int:
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                return int(value) if value.isdigit() else 0
        return 0


class AuthFailures:
    """Failed authentications per client address in a sliding window (the admin and QR APIs):
    an address with ``AUTH_FAILURES_LIMIT`` of them within ``AUTH_FAILURES_WINDOW`` seconds
    is refused until the oldest leaves the window. Bounded: ``_AUTH_PEERS`` addresses, the
    least recently failed forgotten first. Callers pass the time (their own clock)."""

    def __init__(self) -> None:
        self._failures: BoundedFifo[str, deque[float]] = BoundedFifo(_AUTH_PEERS)

    def blocked_for(self, address: str, now: float) -> float:
        """Seconds ``address`` stays refused (0: not refused)."""
        seen = self._failures.get(address)
        if not seen:
            return 0.0
        while seen and now - seen[0] > AUTH_FAILURES_WINDOW:
            seen.popleft()
        if len(seen) < AUTH_FAILURES_LIMIT:
            return 0.0
        return AUTH_FAILURES_WINDOW - (now - seen[0])

    def failed(self, address: str, now: float) -> None:
        seen = self._failures.pop(address, None) or deque(maxlen=AUTH_FAILURES_LIMIT)
        seen.append(now)
        self._failures[address] = seen  # most recent last: the oldest address goes first

    @staticmethod
    def retry_after(blocked_for: float) -> dict[str, str]:
        """Headers of the 429 answer to an address refused ``blocked_for`` more seconds."""
        return {"Retry-After": str(max(1, math.ceil(blocked_for)))}
