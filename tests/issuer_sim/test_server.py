"""The issuer simulator's server on each backend (asyncio and uvloop serve requests inside
``data_received``, trio over the frame channel): pipelining, keep-alives, bad frames, framing
limits, stalls and fault injection behave the same."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import pytest

from issuer_sim.accounts import AccountBook
from issuer_sim.host import IssuerHost
from issuer_sim.server import IssuerServer, LiveFaults
from protocols.codec import Codec
from protocols.dialects import get_dialect
from protocols.framing import Framer, encode_frame
from protocols.message import Message
from tests.helpers import demo_dataset, purchase

pytestmark = pytest.mark.anyio

CODEC = Codec(get_dialect("terminal"))
DATA = demo_dataset()
PAN = "5413330000000019"  # not needed to exist: unknown cards are answered 14


@asynccontextmanager
async def server(
    faults: LiveFaults | None = None, partial_timeout: float = 30.0
) -> AsyncIterator[IssuerServer]:
    book = AccountBook.from_cards("beta", DATA.cards, DATA.issuer_behaviour.synthetic)
    srv = IssuerServer(IssuerHost(book), None, faults=faults)
    srv.partial_timeout = partial_timeout
    async with anyio.create_task_group() as tg:
        await tg.start(srv.run)
        try:
            yield srv
        finally:
            srv.stop()


class Peer:
    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.framer = Framer()

    async def answers(self, n: int, timeout: float = 5.0) -> list[Message]:
        out: list[Message] = []
        with anyio.fail_after(timeout):
            while len(out) < n:
                frame = self.framer.next_frame()
                if frame is not None:
                    out.append(CODEC.decode(frame))
                    continue
                self.framer.feed(await self.stream.receive())
        return out

    async def closed(self, timeout: float = 5.0) -> bool:
        """True when the server closes the connection (answers still coming are read)."""
        with anyio.fail_after(timeout):
            try:
                while True:
                    await self.stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                return True


@asynccontextmanager
async def peer(port: int) -> AsyncIterator[Peer]:
    stream = await anyio.connect_tcp("127.0.0.1", port)
    try:
        yield Peer(stream)
    finally:
        await stream.aclose()


def request(stan: int) -> bytes:
    return encode_frame(CODEC.encode(purchase(PAN, 100, stan=f"{stan:06d}")))


async def test_pipelined_requests_and_keepalives_in_one_write_are_all_answered() -> None:
    async with server() as srv, peer(srv.port) as p:
        await p.stream.send(b"\x00\x00" + b"".join(request(i) for i in range(1, 6)) + b"\x00\x00")
        answers = await p.answers(5)
        assert [a.fields["11"] for a in answers] == [f"{i:06d}" for i in range(1, 6)]
        assert {a.mti for a in answers} == {"0210"}
        # A frame split over several writes is put back together.
        raw = request(6)
        await p.stream.send(raw[:3])
        await anyio.sleep(0.05)
        await p.stream.send(raw[3:])
        assert (await p.answers(1))[0].fields["11"] == "000006"
    assert srv.received == 6
    assert srv.by_mti == {"0200": 6}


async def test_an_undecodable_frame_is_skipped_and_the_link_stays() -> None:
    async with server() as srv, peer(srv.port) as p:
        await p.stream.send(encode_frame(b"\x00garbage!") + request(7))
        assert (await p.answers(1))[0].fields["11"] == "000007"
    assert srv.received == 1


async def test_an_oversized_frame_closes_after_answering_what_came_before() -> None:
    async with server() as srv, peer(srv.port) as p:
        await p.stream.send(request(8) + b"\xff\xff" + b"x" * 10)
        assert (await p.answers(1))[0].fields["11"] == "000008"
        assert await p.closed()


async def test_a_stalled_partial_frame_closes_the_link() -> None:
    async with server(partial_timeout=0.2) as srv, peer(srv.port) as p:
        await p.stream.send(request(9)[:5])
        assert await p.closed(timeout=3)


async def test_disconnect_after_answers_that_many_then_closes() -> None:
    async with server(LiveFaults(disconnect_after=2)) as srv, peer(srv.port) as p:
        await p.stream.send(b"".join(request(i) for i in range(10, 14)))
        answers = await p.answers(2)
        assert [a.fields["11"] for a in answers] == ["000010", "000011"]
        assert await p.closed()
    assert srv.received == 2


async def test_dropped_and_delayed_answers() -> None:
    faults = LiveFaults(drop_ratio=1.0)
    async with server(faults) as srv, peer(srv.port) as p:
        await p.stream.send(request(20))
        with pytest.raises(TimeoutError):
            await p.answers(1, timeout=0.2)
        assert srv.received == 1  # processed, answer lost
        faults.drop_ratio = 0.0
        faults.latency_ms = 150
        started = anyio.current_time()
        await p.stream.send(request(21) + request(22))
        answers = await p.answers(2)
        assert sorted(a.fields["11"] for a in answers) == ["000021", "000022"]
        assert anyio.current_time() - started >= 0.14
        # Network messages are exempt unless apply_to_network.
        sign_on = Message("0800", {"7": "1127101500", "11": "000023", "70": "001"})
        started = anyio.current_time()
        await p.stream.send(encode_frame(CODEC.encode(sign_on)))
        assert (await p.answers(1))[0].fields["70"] == "001"
        assert anyio.current_time() - started < 0.14


async def test_delayed_answers_die_with_the_server() -> None:
    async with server(LiveFaults(latency_ms=300)) as srv, peer(srv.port) as p:
        await p.stream.send(request(30))
        await anyio.sleep(0.05)
        srv.stop()
        assert await p.closed()
