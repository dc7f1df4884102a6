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


CAPS = HttpLimits(
    body_timeout=5.0, header_timeout=5.0, max_connections=4, max_connections_per_address=3
)


def capped_options() -> dict[str, Any]:
    return {"qr_api": QrApiConfig(port=0, limits=CAPS), "admin": AdminConfig(port=0, limits=CAPS)}


async def _healthy(port: int, api: str, source: str = "127.0.0.1") -> bytes:
    """The first line of an answer to a request the API serves without credentials."""
    path = b"/healthz" if api == "admin" else b"/v1/qr/payments/none"
    async with await anyio.connect_tcp("127.0.0.1", port, local_host=source) as stream:
        await stream.send(b"GET " + path + b" HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        return (await _until_closed(stream)).split(b"\r\n", 1)[0]


@pytest.mark.parametrize("api", ["qr", "admin"])
async def test_connections_past_the_caps_get_503_and_are_counted(pki_dir: Path, api: str) -> None:
    """Three connections held from one address fill its cap: a fourth gets 503 and is closed,
    while another address is still served until the listener's cap (four) is reached; once
    they close, new ones are served again."""
    # Held with a body pending (QR), or a head that never ends (admin: it reads no body).
    hold = HEAD + b"content-length: 100\r\n\r\n" if api == "qr" else b"GET /healthz HTTP/1.1\r\n"
    with structlog.testing.capture_logs() as logs:
        async with running_stack(pki_dir, hsm=False, **capped_options()) as stack:
            port = stack.gateway.qr_port if api == "qr" else stack.gateway.admin_port
            assert port is not None
            held = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(3)]
            for stream in held:
                await stream.send(hold)
            await anyio.sleep(0.2)  # the server has taken them in
            async with await anyio.connect_tcp("127.0.0.1", port) as fourth:
                answer = await _until_closed(fourth)
            assert answer.startswith(b"HTTP/1.1 503 "), answer
            assert b'"too many connections"' in answer
            assert rejected(stack, api, "max_per_address") == 1
            # Another address: served (its first connection is the listener's fourth) ...
            assert (await _healthy(port, api, "127.0.0.2")).split(b" ")[1] != b"503"
            other = await anyio.connect_tcp("127.0.0.1", port, local_host="127.0.0.2")
            await other.send(hold)
            await anyio.sleep(0.2)
            # ... and past the listener's cap even an address with none open is refused.
            assert (await _healthy(port, api, "127.0.0.3")).startswith(b"HTTP/1.1 503 ")
            assert rejected(stack, api, "max_connections") == 1
            for stream in [*held, other]:
                await stream.aclose()
            if api == "qr":
                # A slot is free once hypercorn's task for the connection ends: at once here;
                # a connection that never sent a whole head lingers until header_timeout.
                t0 = anyio.current_time()
                while (await _healthy(port, api)).split(b" ")[1] == b"503":
                    assert anyio.current_time() - t0 < 3.0, "closed connections still counted"
                    await anyio.sleep(0.05)
    refused = [e for e in warnings(logs) if e["reason"] in ("max_per_address", "max_connections")]
    assert {e["reason"] for e in refused} == {"max_per_address", "max_connections"}
    assert all(e["api"] == api for e in refused)


async def test_a_request_slower_than_the_keep_alive_timeout_is_not_cut(pki_dir: Path) -> None:
    """hypercorn stops its keep-alive timer (``header_timeout``) while a request is read and
    answered: a body dripped for longer than it, within ``body_timeout``, is answered. So the
    two timeouts need no order, and check-config asks none."""
    limits = HttpLimits(body_timeout=3.0, header_timeout=0.5)
    async with running_stack(pki_dir, hsm=False, qr_api=QrApiConfig(port=0, limits=limits)) as s:
        port = s.gateway.qr_port
        assert port is not None
        body = b'{"amount": 1}'
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(HEAD + b"content-length: %d\r\n\r\n" % len(body))
            for byte in body:
                await stream.send(bytes([byte]))
                await anyio.sleep(1.2 / len(body))  # 1.2 s in all: past the 0.5 s
            answer = await _until_closed(stream)
        status = answer.split(b" ", 2)[1]
        assert status not in (b"408", b"503"), answer[:200]
        assert answer.startswith(b"HTTP/1.1 4")  # 401: no API key; the request was read
