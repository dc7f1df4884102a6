"""The issuer simulator in each framing of ``protocols.framing``, on each backend (asyncio and
uvloop parse in ``data_received``, trio over the frame channel): answers come back in the
request's framing (a TPDU with its addresses swapped), and a bad frame closes only that
connection."""

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
from protocols.framing import ASCII4, BINARY2_TPDU, FRAMINGS, Framing, answer_tpdu, make_tpdu
from protocols.message import Message
from tests.helpers import demo_dataset

pytestmark = pytest.mark.anyio

CODEC = Codec(get_dialect("terminal"))
DATA = demo_dataset()
TPDU = make_tpdu(0x0003, 0x0000)


@asynccontextmanager
async def server(framing: Framing, faults: LiveFaults | None = None) -> AsyncIterator[int]:
    book = AccountBook.from_cards("beta", DATA.cards, DATA.issuer_behaviour.synthetic)
    srv = IssuerServer(IssuerHost(book), None, faults=faults, framing=framing)
    async with anyio.create_task_group() as tg:
        await tg.start(srv.run)
        try:
            yield srv.port
        finally:
            srv.stop()


def echo(stan: str) -> Message:
    return Message("0800", {"7": "1207101500", "11": stan, "70": "301"})


def request(framing: Framing, msg: Message) -> bytes:
    body = CODEC.encode(msg)
    return framing.encode(TPDU + body if framing.tpdu else body, 8192)


async def answers(stream: anyio.abc.ByteStream, framing: Framing, n: int) -> list[bytes]:
    """``n`` frames as the framing's framer splits them (with their TPDU)."""
    framer, out = framing.framer(), list[bytes]()
    with anyio.fail_after(5):
        while len(out) < n:
            frame = framer.next_frame()
            if frame is None:
                framer.feed(await stream.receive())
            else:
                out.append(frame)
    return out


@pytest.mark.parametrize("name", sorted(FRAMINGS))
async def test_pipelined_answers_come_back_in_the_links_framing(name: str) -> None:
    framing = FRAMINGS[name]
    keepalive = b"0000" if framing is ASCII4 else b"\x00\x00"
    async with server(framing) as port, await anyio.connect_tcp("127.0.0.1", port) as stream:
        wire = request(framing, echo("000001")) + keepalive + request(framing, echo("000002"))
        for i in range(0, len(wire), 7):  # dripped: headers split across reads
            await stream.send(wire[i : i + 7])
        frames = await answers(stream, framing, 2)
    if framing.tpdu:
        assert (
            [f[:5] for f in frames] == [answer_tpdu(TPDU)] * 2 == [bytes.fromhex("6000000003")] * 2
        )
        frames = [f[5:] for f in frames]
    got = [CODEC.decode(f) for f in frames]
    assert [(m.mti, m["11"], m["39"]) for m in got] == [
        ("0810", "000001", "00"),
        ("0810", "000002", "00"),
    ]


async def test_ascii4_answer_header_is_four_digits() -> None:
    async with server(ASCII4) as port, await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(request(ASCII4, echo("000003")))
        with anyio.fail_after(5):
            head = await stream.receive()
    body = CODEC.encode(
        Message("0810", {"7": "1207101500", "11": "000003", "39": "00", "70": "301"})
    )
    assert head[:4] == b"%04d" % len(body)


async def test_a_delayed_answer_keeps_its_tpdu() -> None:
    faults = LiveFaults(latency_ms=20, apply_to_network=True)
    async with (
        server(BINARY2_TPDU, faults) as port,
        await anyio.connect_tcp("127.0.0.1", port) as s,
    ):
        await s.send(request(BINARY2_TPDU, echo("000004")))
        (frame,) = await answers(s, BINARY2_TPDU, 1)
    assert frame[:5] == answer_tpdu(TPDU)
    assert CODEC.decode(frame[5:])["11"] == "000004"


async def closed(stream: anyio.abc.ByteStream) -> bool:
    """True once the peer closed ``stream`` (whatever it sent before is skipped)."""
    with anyio.fail_after(5):
        try:
            while True:
                await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return True


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("ascii4", b"01x9" + b"0" * 20),  # the length is not 4 digits
        ("ascii4", b"9999" + b"0" * 20),  # over the 8192-byte limit
        ("binary2-tpdu", b"\x00\x03\x60\x00\x01"),  # shorter than its TPDU
        ("binary2-tpdu", b"\x00\x06\x61\x00\x01\x00\x00x"),  # not a TPDU
        ("binary2-tpdu", b"\x20\x06" + TPDU),  # over the limit and its TPDU
    ],
)
async def test_a_bad_frame_closes_only_its_connection(name: str, bad: bytes) -> None:
    framing = FRAMINGS[name]
    async with server(framing) as port, await anyio.connect_tcp("127.0.0.1", port) as good:
        async with await anyio.connect_tcp("127.0.0.1", port) as broken:
            await broken.send(request(framing, echo("000005")) + bad)
            assert len(await answers(broken, framing, 1)) == 1  # the frame before it
            assert await closed(broken)
        await good.send(request(framing, echo("000006")))
        (frame,) = await answers(good, framing, 1)
    assert CODEC.decode(frame[5:] if framing.tpdu else frame)["11"] == "000006"
