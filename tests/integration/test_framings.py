"""Framings and terminal dialects per listener and per issuer link, on real sockets: a
UnionPay-style terminal (TPDU framing, iso87-bcd) gets its answers with the TPDU's addresses
swapped; issuer links in ascii4 and binary2-tpdu to simulators framed the same; bad input in
each framing closes only that connection, logged and counted."""

from __future__ import annotations

import io
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import orjson
import pytest
import structlog

from gateway.config import ListenerConfig
from hsm_sim import terminal as pinpad
from kit.framed import FramedStream
from kit.logs import configure
from loadtest import pos_sim
from loadtest.pos_sim import terminal_of
from protocols.dialects import get_dialect
from protocols.fastcodec import best_codec
from protocols.framing import (
    ASCII4,
    BINARY2_TPDU,
    Framing,
    answer_tpdu,
    make_tpdu,
)
from protocols.message import Message
from tests.helpers import (
    DEMO_CONF,
    Stack,
    demo_dataset,
    purchase,
    reversal_of,
    running_stack,
    terminal,
)

pytestmark = pytest.mark.anyio

BCD = best_codec(get_dialect("iso87-bcd"))
ASCII = best_codec(get_dialect("iso87-ascii"))
TPDU = bytes.fromhex("6000030000")  # to NII 0003 from 0000, as a UnionPay POS sends
LISTENERS = (
    ListenerConfig(name="cup", port=0, framing="binary2-tpdu", dialect="iso87-bcd"),
    ListenerConfig(name="text", port=0, framing="ascii4"),
    ListenerConfig(name="cuptls", port=0, tls=True, framing="binary2-tpdu", dialect="iso87-bcd"),
)
PAN, PIN = "4761730000000011", "1234"  # alpha; T0000001 has a TPK
BETA_PAN = "5413330000000019"  # beta: no link MAC (the stacks without an HSM)


@asynccontextmanager
async def connect(
    port: int, framing: Framing, tls: ssl.SSLContext | None = None
) -> AsyncIterator[FramedStream]:
    if tls is None:
        stream: anyio.abc.ByteStream = await anyio.connect_tcp("127.0.0.1", port)
    else:
        stream = await anyio.connect_tcp(
            "127.0.0.1",
            port,
            ssl_context=tls,
            tls_hostname="localhost",
            tls_standard_compatible=False,
        )
    framed = FramedStream(stream, max_size=8192, partial_timeout=10.0, framing=framing)
    try:
        yield framed
    finally:
        await framed.aclose()


async def cup_exchange(framed: FramedStream, msg: Message, tpdu: bytes = TPDU) -> Message:
    """One request as a UnionPay POS sends it; the answer's TPDU must be ours, swapped."""
    await framed.send_frame(tpdu + BCD.encode(msg))
    with anyio.fail_after(10):
        frame = await framed.receive_frame()
    assert frame[:5] == answer_tpdu(tpdu)
    return BCD.decode(frame[5:])


@pytest.fixture
async def stack(pki_dir: Path) -> AsyncIterator[Stack]:
    async with running_stack(pki_dir, terminal_options={"listeners": LISTENERS}) as s:
        yield s


async def test_tpdu_bcd_terminal_purchase_pin_reversal_and_balance(stack: Stack) -> None:
    port = stack.gateway.listener_ports["cup"]
    before = stack.account_balance("alpha", PAN)
    sale = purchase(PAN, 1250)
    tpk = terminal_of(demo_dataset(), "T0000001").tpk
    assert tpk is not None
    pin_sale = purchase(PAN, 700)
    pin_sale["52"] = pinpad.pin_block_under_tpk(tpk.key, PIN, PAN).hex().upper()
    async with connect(port, BINARY2_TPDU) as term:
        answer = await cup_exchange(term, sale)
        assert answer.mti == "0210"
        assert (answer["39"], answer["11"], answer["41"]) == ("00", sale["11"], "T0000001")
        assert len(answer["37"]) == 12
        assert (await cup_exchange(term, pin_sale, make_tpdu(0x0001, 0x0123)))["39"] == "00"
        reversal = await cup_exchange(term, reversal_of(sale))
        assert (reversal.mti, reversal["39"]) == ("0410", "00")
        balance = await cup_exchange(term, purchase(PAN, 0, processing="310000"))
        assert (balance["39"], balance["54"][:4]) == ("00", "0002")  # available, in field 54
        assert stack.gateway.metrics.connections.labels("cup")._value.get() == 1  # its label
    assert stack.account_balance("alpha", PAN) == before - 700


async def test_a_tls_listener_in_tpdu_framing(stack: Stack) -> None:
    port = stack.gateway.listener_ports["cuptls"]
    async with connect(port, BINARY2_TPDU, stack.client_tls()) as term:
        assert (await cup_exchange(term, purchase(PAN, 1250)))["39"] == "00"


async def test_tpdu_answers_follow_each_requests_tpdu_when_pipelined(stack: Stack) -> None:
    port = stack.gateway.listener_ports["cup"]
    sent = {make_tpdu(0x0003 + i, 0x0100 + i): purchase(PAN, 100 + i) for i in range(4)}
    async with connect(port, BINARY2_TPDU) as term:
        for tpdu, msg in sent.items():
            await term.send_frame(tpdu + BCD.encode(msg))
        with anyio.fail_after(10):
            frames = [await term.receive_frame() for _ in sent]
    by_stan = {BCD.decode(f[5:])["11"]: f[:5] for f in frames}
    assert by_stan == {msg["11"]: answer_tpdu(tpdu) for tpdu, msg in sent.items()}


async def test_spec_listener_is_unchanged_beside_the_others(stack: Stack) -> None:
    async with terminal(stack.port) as term:
        assert (await term.exchange(purchase(PAN, 1250)))["39"] == "00"
    async with connect(stack.gateway.listener_ports["text"], ASCII4) as term:
        await term.send_frame(ASCII.encode(purchase(PAN, 1250)))
        with anyio.fail_after(10):
            assert ASCII.decode(await term.receive_frame())["39"] == "00"


@pytest.mark.parametrize(
    ("listener", "bad", "reason"),
    [
        ("cup", b"\x00\x03\x60\x00\x03", "shorter than its 5-byte TPDU"),
        ("cup", b"\x00\x08\x61\x00\x03\x00\x00" + b"020", "TPDU id 61 is not 60"),
        ("cup", b"\x20\x06" + TPDU, "exceeds the 8192 byte limit"),
        ("text", b"01a9" + b"0" * 20, "is not 4 ASCII digits"),
        ("text", b"9000" + b"0" * 20, "exceeds the 8192 byte limit"),
    ],
)
async def test_bad_framing_closes_only_that_connection(
    pki_dir: Path, listener: str, bad: bytes, reason: str
) -> None:
    out = io.BytesIO()
    configure("info", stream=out)
    structlog.configure(cache_logger_on_first_use=False)
    try:
        async with running_stack(
            pki_dir, hsm=False, terminal_options={"listeners": LISTENERS}
        ) as stack:
            port = stack.gateway.listener_ports[listener]
            framing = BINARY2_TPDU if listener == "cup" else ASCII4
            async with connect(port, framing) as good:
                broken = await anyio.connect_tcp("127.0.0.1", port)
                await broken.send(bad)
                with anyio.fail_after(5):
                    with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                        await broken.receive()
                await broken.aclose()
                if listener == "cup":
                    assert (await cup_exchange(good, purchase(BETA_PAN, 1250)))["39"] == "00"
                else:
                    await good.send_frame(ASCII.encode(purchase(BETA_PAN, 1250)))
                    with anyio.fail_after(10):
                        assert ASCII.decode(await good.receive_frame())["39"] == "00"
            assert stack.gateway.metrics.rejected.labels("framing")._value.get() == 1
    finally:
        structlog.reset_defaults()
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [x for x in lines if x["level"] in ("error", "critical") or "exception" in x] == []
    [warning] = [x for x in lines if x["event"] == "terminal_framing_error"]
    assert reason in warning["reason"]


async def test_links_in_ascii4_and_tpdu_framing_to_issuers_framed_the_same(
    pki_dir: Path,
) -> None:
    framings = {"beta": "ascii4", "gamma": "binary2-tpdu"}
    async with running_stack(pki_dir, framings=framings) as stack:
        assert {i: stack.issuers[i].framing.name for i in framings} == framings
        async with terminal(stack.port) as term:
            for issuer, pan in (("beta", "5413330000000019"), ("gamma", "6250940000000019")):
                received = stack.issuers[issuer].received
                before = stack.account_balance(issuer, pan)
                answer = await term.exchange(purchase(pan, 1250))
                assert answer["39"] == "00", issuer
                assert stack.account_balance(issuer, pan) == before - 1250
                assert stack.issuers[issuer].received > received  # sign-on, echoes, this


async def test_pos_sim_cup_speaks_to_the_tpdu_listener(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = str(stack.gateway.listener_ports["cup"])
    common = ["--port", port, "--data", str(DEMO_CONF / "data.toml")]
    argv = ["purchase", "--cup", *common, "--pan", PAN, "--amount", "1250", "--pin", PIN]
    assert await anyio.to_thread.run_sync(pos_sim.main, argv) == 0
    out = capsys.readouterr().out
    assert "TPDU sent 6000030000, answered 6000000003" in out
    assert "response_code        00" in out
    assert PAN not in out
    # T0000002 MACs every request: over the BCD bytes it sends, as the gateway checks them.
    mac = ["purchase", "--cup", *common, "--terminal", "T0000002", "--pan", PAN]
    assert await anyio.to_thread.run_sync(pos_sim.main, mac) == 0
    assert "MAC sent (TAK)" in capsys.readouterr().out
    assert await anyio.to_thread.run_sync(pos_sim.main, [*mac, "--mac", "bad"]) == 1
    assert "response_code        63" in capsys.readouterr().out
    # Contactless: field 55 both ways (the ARQC in, the ARPC back) in BCD's binary layout.
    tap = ["contactless", "--cup", *common, "--terminal", "N0000001", "--pan", BETA_PAN]
    tap += ["--atc-state", str(tmp_path / "atc.json")]
    assert await anyio.to_thread.run_sync(pos_sim.main, tap) == 0
    assert "card: ARPC verified" in capsys.readouterr().out
    # A DUKPT terminal's 20-hex KSN does not fit iso87-bcd's n16 field 53: said, not a trace.
    dukpt = ["purchase", "--cup", *common, "--terminal", "T0000002", "--pan", PAN, "--pin", PIN]
    dukpt += ["--ksn-state", str(tmp_path / "ksn.json")]
    assert await anyio.to_thread.run_sync(pos_sim.main, dukpt) == 2
    err = capsys.readouterr().err
    assert "pos-sim: iso87-bcd: " in err
    assert "53" in err
