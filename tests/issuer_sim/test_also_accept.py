"""``also_accept``: one issuer-sim port answering two dialects, each connection in the one its
first message is in (an ASCII MTI begins with a digit byte, a BCD one with 0x00-0x09). The
demo's beta speaks ``iso87-bcd`` to the gateway and SPEC's ASCII dialect to the jPOS rig's
channel (``../shared/bench/jpos``), on asyncio, uvloop and trio."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from issuer_sim.accounts import AccountBook
from issuer_sim.config import IssuerEndpoint, IssuerSimConfig
from issuer_sim.host import IssuerHost
from issuer_sim.server import IssuerServer
from kit.conf import load
from protocols.dialects import get_dialect
from protocols.fastcodec import best_codec
from protocols.framing import BINARY2
from protocols.message import Message
from tests.helpers import DEMO_CONF, demo_dataset

pytestmark = pytest.mark.anyio

ASCII = best_codec(get_dialect("iso87-ascii"))
BCD = best_codec(get_dialect("iso87-bcd"))
DATA = demo_dataset()


@asynccontextmanager
async def beta() -> AsyncIterator[int]:
    book = AccountBook.from_cards("beta", DATA.cards, DATA.issuer_behaviour.synthetic)
    srv = IssuerServer(IssuerHost(book), None, codec=BCD, alternate=ASCII)
    async with anyio.create_task_group() as tg:
        await tg.start(srv.run)
        try:
            yield srv.port
        finally:
            srv.stop()


async def exchange(port: int, codec: object, stans: list[str]) -> list[Message]:
    assert codec is ASCII or codec is BCD
    out = []
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        for stan in stans:
            msg = Message("0800", {"7": "1207101500", "11": stan, "70": "301"})
            await stream.send(BINARY2.encode(codec.encode(msg), 8192))
            buf = b""
            with anyio.fail_after(5):
                while len(buf) < 2 or len(buf) < 2 + int.from_bytes(buf[:2], "big"):
                    buf += await stream.receive()
            out.append(codec.decode(buf[2:]))  # in the connection's own dialect
    return out


async def test_each_connection_is_answered_in_its_first_messages_dialect() -> None:
    async with beta() as port:
        bcd, ascii_ = (
            await exchange(port, BCD, ["000001", "000002"]),
            await exchange(port, ASCII, ["000003", "000004"]),
        )
    assert [(m.mti, m["11"], m["39"]) for m in bcd] == [
        ("0810", "000001", "00"),
        ("0810", "000002", "00"),
    ]
    assert [(m.mti, m["11"], m["39"]) for m in ascii_] == [
        ("0810", "000003", "00"),
        ("0810", "000004", "00"),
    ]


def test_the_demo_beta_answers_the_rigs_ascii_channel_too() -> None:
    cfg = load(IssuerSimConfig, DEMO_CONF / "issuer-sim.toml")
    beta_ = next(ep for ep in cfg.issuers if ep.id == "beta")
    assert (beta_.dialect, beta_.also_accept) == ("iso87-bcd", "iso87-ascii")


@pytest.mark.parametrize(
    ("dialect", "also", "header", "error"),
    [
        ("iso87-bcd", "iso93-bcd", "", "both have a BCD MTI"),
        ("terminal", "iso93-ascii", "", "both have an ASCII MTI"),
        ("iso87-bcd", "iso87-ascii", "ISO", "not with a static header"),
        ("iso87-bcd", "nonsense", "", "nonsense"),
    ],
)
def test_also_accept_must_be_told_apart_by_the_first_byte(
    dialect: str, also: str, header: str, error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        IssuerEndpoint(
            id="beta",
            dialect=dialect,
            also_accept=also,
            header=header,
            allowed_clients=("switch",),
        )
