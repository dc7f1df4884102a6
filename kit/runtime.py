"""Running a service from the command line: backend choice and clean stop on SIGINT/SIGTERM."""

from __future__ import annotations

import gc
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import anyio


def run(main: Callable[[], Awaitable[Any]], backend: str = "asyncio") -> None:
    """Run ``main`` until it returns or SIGINT/SIGTERM arrives (then cancel and exit 0)."""

    async def supervised() -> None:
        async with anyio.create_task_group() as tg:

            async def watch_signals() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(watch_signals)
            await main()
            tg.cancel_scope.cancel()

    if backend == "uvloop":
        anyio.run(supervised, backend="asyncio", backend_options={"use_uvloop": True})
    else:
        anyio.run(supervised, backend=backend)


def tune_gc(threshold: tuple[int, int, int]) -> None:
    """After start-up: freeze what exists (config, dataset, keys, modules: never garbage) and
    collect less often. A full collection walks every live object; with the recent-transaction
    window and journal state that took tens of ms and set the p99 (measured with the spine
    bench at 64 in flight: p99 213 -> 90 ms, TPS +25 %)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*threshold)


def default_backend() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"
