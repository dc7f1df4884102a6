"""The spine's acceptance over real sockets on 127.0.0.1: terminals -> gateway -> issuers."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest

from loadtest.generator import synthetic_pan
from protocols.framing import encode_frame
from tests.helpers import Stack, eventually, purchase, reversal_of, running_stack, terminal

pytestmark = pytest.mark.anyio


@pytest.fixture
async def stack(pki_dir: Path) -> AsyncIterator[Stack]:
    async with running_stack(pki_dir, link_timeout=0.5) as s:
        yield s


async def test_purchase_tcp_and_reversal_exactly_once(stack: Stack) -> None:
    pan = "4761730000000011"
    before = stack.account_balance("alpha", pan)
    async with terminal(stack.port) as term:
        req = purchase(pan, 1250)
        resp = await term.exchange(req)
        assert resp.mti == "0210"
        assert resp["39"] == "00"
        assert len(resp["37"]) == 12
        assert len(resp["38"]) == 6
        for echoed in ("2", "3", "4", "7", "11", "41", "42", "49"):
            assert resp[echoed] == req[echoed]
        assert resp["54"] == f"0002156C{before - 1250:012d}"
        assert stack.account_balance("alpha", pan) == before - 1250

        rev = reversal_of(req)
        rev_resp = await term.exchange(rev)
        assert (rev_resp.mti, rev_resp["39"]) == ("0410", "00")
        assert stack.account_balance("alpha", pan) == before
        assert stack.issuers["alpha"].host.reversals_applied == 1

        # The same reversal again (a retransmission) is answered from the first, and a second
        # reversal of the same original with a new STAN changes nothing either.
        again = await term.exchange(rev)
        assert again["39"] == "00"
        assert again["37"] == rev_resp["37"]
        another = await term.exchange(reversal_of(req))
        assert another["39"] == "00"
        assert stack.account_balance("alpha", pan) == before
        assert stack.issuers["alpha"].host.reversals_applied == 1
        assert stack.issuers["alpha"].by_mti.get("0400") == 1


async def test_purchase_over_tls(stack: Stack) -> None:
    assert stack.gateway.tls_port is not None
    pan = "5413330000000019"
    before = stack.account_balance("beta", pan)
    async with terminal(stack.gateway.tls_port, tls=stack.client_tls()) as term:
        resp = await term.exchange(purchase(pan, 700))
    assert resp["39"] == "00"
    assert stack.account_balance("beta", pan) == before - 700


@pytest.mark.parametrize(
    ("pan", "amount", "rc"),
    [
        ("4761730000000029", 1250, "51"),  # low balance
        ("4761730000000037", 100, "54"),  # expired
        ("4761730000000045", 100, "41"),  # lost
        ("4761730000000012", 100, "14"),  # fails Luhn
        ("4000000000000010", 100, "15"),  # no route for the BIN
    ],
)
async def test_decline_codes(stack: Stack, pan: str, amount: int, rc: str) -> None:
    async with terminal(stack.port) as term:
        resp = await term.exchange(purchase(pan, amount))
    assert resp.mti == "0210"
    assert resp["39"] == rc
    assert "38" not in resp


async def test_format_errors_answer_30(stack: Stack) -> None:
    async with terminal(stack.port) as term:
        missing = purchase("4761730000000011", 100)
        del missing.fields["4"]
        resp = await term.exchange(missing)
        assert (resp.mti, resp["39"]) == ("0210", "30")
        assert resp["11"] == missing["11"]

        bad = purchase("4761730000000011", 100)
        bad["4"] = "00000000ABCD"
        resp = await term.exchange(bad)
        assert (resp.mti, resp["39"]) == ("0210", "30")


async def test_issuer_never_answers_gives_91(stack: Stack) -> None:
    stack.issuers["alpha"].faults.drop_ratio = 1.0
    async with terminal(stack.port) as term:
        with anyio.fail_after(5):
            resp = await term.exchange(purchase("4761730000000011", 100))
    assert resp["39"] == "91"


async def test_issuer_down_gives_91_then_link_comes_back(stack: Stack) -> None:
    pan = "6250940000000019"
    stack.issuers["gamma"].stop()
    await eventually(lambda: not stack.gateway.pools["gamma"].ready)
    async with terminal(stack.port) as term:
        resp = await term.exchange(purchase(pan, 100))
        assert resp["39"] == "91"
        await stack.restart_issuer("gamma")
        with anyio.fail_after(10):
            await stack.gateway.wait_ready()
        resp = await term.exchange(purchase(pan, 100))
        assert resp["39"] == "00"
    pool = stack.gateway.pools["gamma"]
    # every connection reconnects and signs on by itself
    await eventually(lambda: all(c.up for c in pool.connections))
    assert all(c.connects == 2 for c in pool.connections)


async def test_duplicate_transmission_replayed_issuer_sees_one(stack: Stack) -> None:
    pan = "4761730000000011"
    before = stack.account_balance("alpha", pan)
    seen = stack.issuers["alpha"].by_mti.get("0200", 0)
    req = purchase(pan, 300)
    async with terminal(stack.port) as term:
        first = await term.exchange(req)
    async with terminal(stack.port) as term:  # a new connection, as after a terminal restart
        second = await term.exchange(req)
    assert first["39"] == second["39"] == "00"
    assert first["37"] == second["37"]
    assert first["38"] == second["38"]
    assert stack.issuers["alpha"].by_mti.get("0200", 0) == seen + 1
    assert stack.account_balance("alpha", pan) == before - 300


async def test_bad_peers_close_only_their_connection(stack: Stack) -> None:
    async with terminal(stack.port) as good:
        assert (await good.exchange(purchase("4761730000000011", 10)))["39"] == "00"

        # Garbage inside a valid frame: no answer, the connection stays open.
        async with terminal(stack.port) as garbage:
            await garbage.framed.stream.send(encode_frame(b"\x00garbage!"))
            resp = await garbage.exchange(purchase("4761730000000011", 11))
            assert resp["39"] == "00"

        # An oversized length header: that connection is closed.
        async with terminal(stack.port) as oversized:
            await oversized.framed.stream.send(b"\xff\xff" + b"x" * 10)
            with anyio.fail_after(5), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await oversized.framed.receive_frame()

        # A partial frame that stalls past the read timeout: closed too.
        async with terminal(stack.port) as stalled:
            await stalled.framed.stream.send(b"\x00\x40partial")
            with anyio.fail_after(5), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await stalled.framed.receive_frame()

        assert (await good.exchange(purchase("4761730000000011", 12)))["39"] == "00"


async def test_network_management_from_terminal(stack: Stack) -> None:
    async with terminal(stack.port) as term:
        for code in ("001", "301", "002"):
            req = purchase("4761730000000011", 1, mti="0800")
            req.fields = {"7": req["7"], "11": req["11"], "41": "T0000001", "70": code}
            resp = await term.exchange(req)
            assert (resp.mti, resp["39"], resp["70"]) == ("0810", "00", code)


async def test_pipelined_requests_on_one_connection(stack: Stack) -> None:
    async with terminal(stack.port) as term:
        rnd = random.Random(7)  # distinct synthetic cards: per-card velocity rules stay quiet
        reqs = [purchase(synthetic_pan("5413339", rnd), 1) for _ in range(20)]
        for req in reqs:
            await term.send(req)
        answers = [await term.receive() for _ in reqs]
    assert sorted(a["11"] for a in answers) == sorted(r["11"] for r in reqs)
    assert {a["39"] for a in answers} == {"00"}


async def test_admin_endpoints(stack: Stack) -> None:
    async with terminal(stack.port) as term:
        await term.exchange(purchase("4761730000000011", 5))
    base = f"http://127.0.0.1:{stack.gateway.admin_port}"
    async with httpx.AsyncClient(base_url=base) as http:
        assert (await http.get("/healthz")).status_code == 200
        ready = await http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["ready"] is True
        metrics = (await http.get("/metrics")).text
        assert 'switch_transactions_total{mti="0200",rc="00"}' in metrics
        assert 'switch_link_up{conn="0",issuer="alpha"} 1.0' in metrics
        assert "switch_transaction_seconds_bucket" in metrics
        stack.issuers["beta"].stop()
        await eventually(lambda: not stack.gateway.pools["beta"].ready)
        assert (await http.get("/readyz")).status_code == 503
