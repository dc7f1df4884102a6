"""Connection and resource limits on the terminal ports (issue 15 item 2), over real sockets: a
connection that sends nothing is closed after ``idle_timeout``; a frame dripped so that no gap
reaches ``partial_frame_timeout`` is still cut at ``frame_deadline`` from its first byte; each
listener caps its connections, in all and per source address. Each is counted in
``switch_terminal_rejected{reason}`` and logged as a rate-limited warning."""

from __future__ import annotations

from collections.abc import AsyncIterator, MutableMapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import structlog

from kit.framed import FramedStream
from protocols.framing import encode_frame
from protocols.message import Message
from tests.helpers import CODEC, AsyncTerminal, Stack, eventually, purchase, running_stack
from tests.integration.test_security import BETA_PAN

pytestmark = pytest.mark.anyio

ECHO = Message("0800", {"7": "1127101500", "11": "000001", "70": "301"})
_CLOSED = (anyio.EndOfStream, anyio.BrokenResourceError, OSError)


@asynccontextmanager
async def connection(port: int, source: str = "127.0.0.1") -> AsyncIterator[AsyncTerminal]:
    """A terminal connection from ``source`` (bound: the listener sees that address)."""
    stream = await anyio.connect_tcp("127.0.0.1", port, local_host=source)
    term = AsyncTerminal(FramedStream(stream, max_size=8192, partial_timeout=10.0))
    try:
        yield term
    finally:
        await term.aclose()


async def closed_by_server(term: AsyncTerminal, timeout: float = 5.0) -> bool:
    """True when the server ends the connection without answering, within ``timeout``."""
    with anyio.fail_after(timeout):
        try:
            await term.framed.receive_frame()
        except _CLOSED:
            return True
    return False


async def served(term: AsyncTerminal) -> bool:
    try:
        return (await term.exchange(ECHO, timeout=5.0))["39"] == "00"
    except _CLOSED:
        return False


def rejected(stack: Stack, reason: str) -> float:
    value: float = stack.gateway.metrics.rejected.labels(reason)._value.get()
    return value


def warnings(
    logs: Sequence[MutableMapping[str, Any]], event: str
) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == event and e["log_level"] == "warning"]


async def test_a_silent_connection_is_closed_after_the_idle_timeout(pki_dir: Any) -> None:
    # The idle timeout must exceed the request budget (check-config refuses otherwise).
    options = {"idle_timeout": 0.3, "request_timeout": 0.25}
    with structlog.testing.capture_logs() as logs:
        async with running_stack(pki_dir, hsm=False, terminal_options=options) as stack:
            async with connection(stack.port) as silent, connection(stack.port) as talking:
                for _ in range(5):  # 5 x 0.1 s: talking for longer than the idle timeout
                    assert await served(talking)
                    await anyio.sleep(0.1)
                assert await closed_by_server(silent)
                assert await served(talking)
            assert rejected(stack, "idle") == 1
    assert len(warnings(logs, "terminal_idle_timeout")) == 1


async def test_a_dripped_frame_is_cut_at_the_frame_deadline(pki_dir: Any) -> None:
    # Every gap (0.05 s) is well inside partial_frame_timeout (0.5 s): only the whole-frame
    # deadline can end it. Before it existed, the frame was answered after 1.8 s.
    options = {"frame_deadline": 0.6}
    frame = encode_frame(CODEC.encode(ECHO))
    with structlog.testing.capture_logs() as logs:
        async with running_stack(pki_dir, hsm=False, terminal_options=options) as stack:
            async with connection(stack.port) as term:
                start = anyio.current_time()
                try:
                    for byte in frame:
                        await term.framed.stream.send(bytes([byte]))
                        await anyio.sleep(0.05)
                except _CLOSED:
                    pass
                assert await closed_by_server(term)
                assert anyio.current_time() - start < 1.5
            assert rejected(stack, "frame_deadline") == 1
    assert len(warnings(logs, "terminal_frame_deadline")) == 1


async def test_connections_are_capped_per_listener_and_per_source_address(pki_dir: Any) -> None:
    options = {"max_connections": 4, "max_connections_per_address": 2}
    with structlog.testing.capture_logs() as logs:
        async with running_stack(pki_dir, hsm=False, terminal_options=options) as stack:
            port = stack.port
            async with connection(port) as a1, connection(port) as a2:
                async with connection(port) as a3:
                    assert await closed_by_server(a3)  # a third from 127.0.0.1
                assert rejected(stack, "max_per_address") == 1
                async with connection(port, "127.0.0.2") as b1, connection(port, "127.0.0.2") as b2:
                    async with connection(port, "127.0.0.3") as c1:
                        assert await closed_by_server(c1)  # the listener is full
                    assert rejected(stack, "max_connections") == 1
                    assert all([await served(t) for t in (a1, a2, b1, b2)])
                await a2.aclose()
                gauge = stack.gateway.metrics.connections.labels("tcp")
                await eventually(lambda: gauge._value.get() == 1)  # a1 only
                async with connection(port) as a4:
                    assert await served(a4)  # the closed one's place is free again
    refusals = warnings(logs, "terminal_connection_refused")
    assert sorted(e["reason"] for e in refusals) == ["max_connections", "max_per_address"]


async def test_requests_pending_per_terminal_id_are_capped(pki_dir: Any) -> None:
    options = {"max_pending_per_terminal": 2}
    with structlog.testing.capture_logs() as logs:
        async with running_stack(pki_dir, hsm=False, terminal_options=options) as stack:
            stack.issuers["beta"].faults.latency_ms = 300  # the first two stay pending
            requests = [purchase(BETA_PAN, 100 + i, stan=f"{i + 1:06d}") for i in range(3)]
            async with connection(stack.port) as one, connection(stack.port) as other:
                for term, req in zip((one, one, other), requests, strict=True):
                    await term.send(req)
                third = await other.receive()  # at once: the terminal id has two pending
                first, second = await one.receive(), await one.receive()
                stack.issuers["beta"].faults.latency_ms = 0
                assert (await one.exchange(purchase(BETA_PAN, 104)))["39"] == "00"
            assert rejected(stack, "pending_per_terminal") == 1
    assert (third.mti, third["11"], third["41"], third["39"]) == (
        "0210",
        "000003",
        "T0000001",
        "96",
    )
    assert [first["39"], second["39"]] == ["00", "00"]
    assert len(warnings(logs, "terminal_too_many_pending")) == 1
