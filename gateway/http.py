"""Run an ASGI app with hypercorn on the current AnyIO backend (asyncio or trio); middleware
for what hypercorn leaves to the app (:class:`DrainBody`)."""

from __future__ import annotations

import os
import socket
from typing import Any

import anyio
import sniffio
from anyio.abc import TaskStatus
from hypercorn.config import Config
from starlette.types import ASGIApp, Message, Receive, Scope, Send


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
    reuse_port: bool = False,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; reports the bound port (useful with port 0)."""
    sock = bind_socket(host, port, reuse_port=reuse_port)
    config = Config()
    # hypercorn closes the descriptor it is given: hand it a duplicate and keep ours.
    config.bind = [f"fd://{os.dup(sock.fileno())}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    stop = anyio.Event()
    bound: int = sock.getsockname()[1]
    try:
        async with anyio.create_task_group() as tg:
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
