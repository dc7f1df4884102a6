"""Issuer link requests: answers matched, each request's own timeout (one timer per
connection on asyncio, a cancel scope per request on trio)."""

from __future__ import annotations

import asyncio
import ssl
import time

import anyio
import pytest

from gateway.config import LinkConfig
from gateway.flow.switch import utcnow
from gateway.upstream.links import IssuerConnection, IssuerPool, IssuerTimeout
from kit import fastio
from protocols.dialects import get_dialect
from protocols.fastcodec import best_codec
from protocols.message import Message


class Channel:
    """Records what the connection sends; the test answers through the pending table."""

    peer = "issuer"

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def receive_frame(self) -> bytes:
        await anyio.sleep_forever()
        raise AssertionError

    async def send_frame(self, payload: bytes) -> None:
        self.sent.append(payload)

    async def aclose(self) -> None:
        pass


def signed_on() -> IssuerConnection:
    cfg = LinkConfig(issuer="beta", endpoints=("127.0.0.1:1",), connections=1, timeout=5.0)
    pool = IssuerPool(
        cfg, best_codec(get_dialect("terminal")), ssl.create_default_context(), clock=utcnow
    )
    conn = pool.connections[0]
    conn._framed = Channel()
    conn._loop = asyncio.get_running_loop() if fastio.fast_path() else None
    conn.state = "up"
    return conn


def request(stan: str) -> Message:
    return Message("0200", {"7": "1127100000", "11": stan, "4": "000000000100"})


def answer(conn: IssuerConnection, stan: str) -> Message:
    """What the read loop does with the issuer's answer to ``stan``."""
    msg = Message("0210", {"7": "1127100000", "11": stan, "39": "00"})
    pending = conn._pending.pop((stan, "1127100000"))
    pending.response = msg
    pending.set()
    return msg


@pytest.mark.anyio
async def test_each_request_times_out_on_its_own_deadline() -> None:
    conn = signed_on()
    outcome: dict[str, tuple[str, float]] = {}
    start = time.monotonic()

    async def ask(stan: str, timeout: float) -> None:
        try:
            await conn.request(request(stan), timeout)
            outcome[stan] = ("answered", time.monotonic() - start)
        except IssuerTimeout:
            outcome[stan] = ("timeout", time.monotonic() - start)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask, "000001", 0.30)
        tg.start_soon(ask, "000002", 0.10)  # earlier than the first: the timer moves up
        tg.start_soon(ask, "000003", 0.20)
        tg.start_soon(ask, "000004", 0.05)
        await anyio.sleep(0.02)
        sent = answer(conn, "000004")  # answered before its deadline
    assert outcome["000004"][0] == "answered"
    assert sent.fields["39"] == "00"
    for stan, timeout in (("000002", 0.10), ("000003", 0.20), ("000001", 0.30)):
        kind, at = outcome[stan]
        assert kind == "timeout"
        assert timeout - 0.005 <= at < timeout + 0.08, (stan, at)
    assert not conn._pending
    # Nothing left to time: the connection's timer is disarmed (asyncio) once all expired.
    await anyio.sleep(0.01)
    assert conn._timer is None


@pytest.mark.anyio
async def test_a_1993_hosts_echo_is_answered_in_1993() -> None:
    """An issuer on iso93-bcd may echo us (1804, function code 831): the link reads it as the
    canonical 0800/301 and answers 1814 with action code 800, its function code echoed."""
    from kit.linkdialect import link_codec

    conn = signed_on()
    codec = link_codec("iso93-bcd", clock=utcnow)
    conn.pool.codec = codec
    wire = best_codec(get_dialect("iso93-bcd"))
    echo = Message("1804", {"7": "1207101500", "11": "000777", "24": "831"})
    await conn._answer_peer_request(codec.decode(wire.encode(echo)))
    channel = conn._framed
    assert isinstance(channel, Channel)
    [sent] = channel.sent
    reply = wire.decode(sent)
    assert (reply.mti, reply["24"], reply["39"], reply["11"], reply["7"]) == (
        "1814",
        "831",
        "800",
        "000777",
        "1207101500",
    )
