"""Run an ASGI app with hypercorn on the current AnyIO backend (asyncio or trio)."""

from __future__ import annotations

import os
import socket
from typing import Any

import anyio
import sniffio
from anyio.abc import TaskStatus
from hypercorn.config import Config


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
