"""HTTP limits on the QR and admin APIs (issue 15 item 2), over real sockets: a request whose
body does not arrive within ``body_timeout`` of its head (held back, or dripped) gets 408 and
its connection is closed; headers that do not complete within ``header_timeout`` are cut by
hypercorn. Before, complete headers with a partial body were held for at least 90 s. (The
admin API reads no request body: it answers and hypercorn closes a connection whose body is
left unread, so only its headers can be held.)"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog

from gateway.config import AdminConfig, HttpLimits, QrApiConfig
from tests.helpers import Stack, running_stack

pytestmark = pytest.mark.anyio

LIMITS = HttpLimits(body_timeout=0.4, header_timeout=0.4)
HEAD = b"POST /v1/qr/payments HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"


async def _until_closed(stream: anyio.abc.ByteStream, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes (bounded in time)."""
    data = b""
    with anyio.fail_after(timeout):
        try:
            while True:
                data += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            return data


def rejected(stack: Stack, api: str, reason: str) -> float:
    value: float = stack.gateway.metrics.http_rejected.labels(api, reason)._value.get()
    return value


def warnings(logs: Sequence[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == "http_limit" and e["log_level"] == "warning"]


def stack_options() -> dict[str, Any]:
    return {
        "qr_api": QrApiConfig(port=0, limits=LIMITS),
        "admin": AdminConfig(port=0, limits=LIMITS),
    }


async def test_a_body_held_back_or_dripped_gets_408_at_the_body_timeout(pki_dir: Path) -> None:
    with structlog.testing.capture_logs() as logs:
        async with running_stack(pki_dir, hsm=False, **stack_options()) as stack:
            port = stack.gateway.qr_port
            assert port is not None
            async with await anyio.connect_tcp("127.0.0.1", port) as held:
                await held.send(HEAD + b"content-length: 100\r\n\r\n" + b'{"qr": "')
                start = anyio.current_time()
                answer = await _until_closed(held)
                assert anyio.current_time() - start < 2.0
            assert answer.startswith(b"HTTP/1.1 408 ")
            async with await anyio.connect_tcp("127.0.0.1", port) as dripped:
                await dripped.send(HEAD + b"content-length: 100\r\n\r\n")
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_drip, dripped)  # 5 s in all, each byte well in time
                    answer = await _until_closed(dripped)
                    tg.cancel_scope.cancel()
            assert answer.startswith(b"HTTP/1.1 408 ")
            assert rejected(stack, "qr", "body_timeout") == 2
    assert len(warnings(logs)) == 1  # rate-limited per address


async def _drip(stream: anyio.abc.ByteStream) -> None:
    try:
        for _ in range(100):
            await stream.send(b" ")
            await anyio.sleep(0.05)
    except (anyio.BrokenResourceError, OSError):
        pass  # closed by the server


@pytest.mark.parametrize("api", ["qr", "admin"])
async def test_headers_that_do_not_complete_are_cut(pki_dir: Path, api: str) -> None:
    async with running_stack(pki_dir, hsm=False, **stack_options()) as stack:
        port = stack.gateway.qr_port if api == "qr" else stack.gateway.admin_port
        assert port is not None
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(HEAD)  # no blank line: the head never ends
            start = anyio.current_time()
            assert await _until_closed(stream) == b""
            assert anyio.current_time() - start < 2.0
