"""Issuer links in three dialects end to end on real sockets (issue 16 items 3-5): alpha's host
speaks iso87-ascii, beta's iso87-bcd, gamma's iso93-bcd (translated at the link, both ends).
Terminals see SPEC's messages whatever the issuer speaks; the issuer simulator sees its own
dialect's bytes; an action code the table lacks becomes the fallback, logged and counted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
import structlog

from gateway.config import SafConfig
from issuer_sim.server import IssuerServer
from kit.linkdialect import TranslationConfig
from loadtest.pos_sim import add_pin_block, terminal_of
from protocols import qr_cpm
from protocols.message import Message
from tests.helpers import (
    Stack,
    demo_dataset,
    eventually,
    purchase,
    reversal_of,
    running_stack,
    terminal,
)
from tests.integration.journal_support import saf_depth, write_conf

pytestmark = pytest.mark.anyio

DATA = demo_dataset()
TERMINAL = terminal_of(DATA, "T0000001")  # fixed TPK, no MAC
DIALECTS = {"alpha": "iso87-ascii", "beta": "iso87-bcd", "gamma": "iso93-bcd"}
CARDS = {  # issuer: (PAN, PIN) from conf/demo/data.toml
    "alpha": ("4761730000000011", "1234"),
    "beta": ("5413330000000019", "4321"),
    "gamma": ("6250940000000019", "6666"),
}
# The MTI as a frame carries it: ASCII (iso87-ascii) or BCD (iso87-bcd, iso93-bcd).
WIRE_MTI = {
    "alpha": lambda frame: frame[:4].decode(),
    "beta": lambda frame: frame[:2].hex(),
    "gamma": lambda frame: frame[:2].hex(),
}


def wiretap(server: IssuerServer) -> list[tuple[bytes, Message]]:
    """Every frame the issuer host receives, with the canonical message it read from it."""
    seen: list[tuple[bytes, Message]] = []
    serve = server.serve_frame
    decode = server.codec.decode

    def tapped(frame: bytes, codec: object = None):  # type: ignore[no-untyped-def]
        seen.append((frame, decode(frame)))
        return serve(frame, codec)  # type: ignore[arg-type]

    server.serve_frame = tapped  # type: ignore[method-assign]
    return seen


@pytest.fixture
async def stack(pki_dir: Path) -> AsyncIterator[Stack]:
    async with running_stack(
        pki_dir,
        dialects=DIALECTS,
        # gamma's host says "not sufficient funds" with 199, a code the switch's table lacks.
        issuer_translations={"gamma": TranslationConfig(response_codes={"51": "199"})},
    ) as s:
        yield s


@pytest.mark.parametrize("issuer", sorted(DIALECTS))
async def test_purchase_pin_purchase_reversal_balance_on_each_dialect(
    stack: Stack, issuer: str
) -> None:
    pan, pin = CARDS[issuer]
    tap = wiretap(stack.issuers[issuer])
    before = stack.account_balance(issuer, pan)
    async with terminal(stack.port) as term:
        plain = purchase(pan, 1000, terminal_id=TERMINAL.id, merchant=TERMINAL.merchant)
        answer = await term.exchange(plain)
        assert (answer.mti, answer["39"], answer["11"], answer["41"]) == (
            "0210",
            "00",
            plain["11"],
            TERMINAL.id,
        )
        assert len(answer["38"]) == 6
        assert answer["54"].startswith("0002156C")

        with_pin = purchase(pan, 2000, terminal_id=TERMINAL.id, merchant=TERMINAL.merchant)
        add_pin_block(with_pin, TERMINAL, pin, pan, None)
        assert (await term.exchange(with_pin))["39"] == "00"
        wrong_pin = purchase(pan, 2000, terminal_id=TERMINAL.id, merchant=TERMINAL.merchant)
        add_pin_block(wrong_pin, TERMINAL, "0000" if pin != "0000" else "9999", pan, None)
        assert (await term.exchange(wrong_pin))["39"] == "55"  # 117 on a 1993 link

        reversed_ = await term.exchange(reversal_of(with_pin))
        assert (reversed_.mti, reversed_["39"]) == ("0410", "00")

        inquiry = purchase(
            pan, 0, terminal_id=TERMINAL.id, merchant=TERMINAL.merchant, processing="310000"
        )
        balance = await term.exchange(inquiry)
        assert (balance.mti, balance["39"]) == ("0210", "00")
        assert int(balance["54"][-12:]) == before - 1000
    assert stack.account_balance(issuer, pan) == before - 1000

    # The host read its own dialect's bytes into the canonical messages the terminal sent.
    mtis = [msg.mti for _, msg in tap if msg.mti != "0800"]
    assert mtis == ["0200", "0200", "0200", "0400", "0200"]
    on_wire = [WIRE_MTI[issuer](frame) for frame, _ in tap]
    expected = {"alpha": mtis, "beta": mtis, "gamma": ["1200", "1200", "1200", "1420", "1200"]}
    assert [m for m in on_wire if m not in ("0800", "1804")] == expected[issuer]


async def test_starting_counts_no_translation_fallback(stack: Stack) -> None:
    # The key-exchange probe once encoded a key-change 0800 through the 1993 translator at
    # start: two fallback warnings and counts (70 and 53) for a message never sent.
    registry = stack.gateway.metrics.registry
    counted = [
        s
        for m in registry.collect()
        if m.name == "switch_translation_fallbacks"
        for s in m.samples
        if s.name.endswith("_total") and s.value
    ]
    assert counted == []


async def test_unmapped_action_code_becomes_the_fallback_with_a_log_and_a_count(
    stack: Stack,
) -> None:
    low_balance = "6250940000000035"  # gamma, balance 100: its host answers 199
    counter = stack.gateway.metrics.translation_fallbacks.labels("gamma", "from_link", "39", "199")
    before = counter._value.get()
    with structlog.testing.capture_logs() as logs:
        async with terminal(stack.port) as term:
            req = purchase(low_balance, 5000, terminal_id=TERMINAL.id, merchant=TERMINAL.merchant)
            answer = await term.exchange(req)
    assert answer["39"] == "05"  # the fallback decline, not 51 and never 00
    assert counter._value.get() == before + 1
    [line] = [e for e in logs if e["event"] == "link_translation_fallback"]
    assert (line["issuer"], line["field"], line["code"], line["used"]) == (
        "gamma",
        "39",
        "199",
        "05",
    )


@pytest.mark.parametrize("header", ["", "ISO026000075"])
async def test_link_mac_on_a_1993_link_covers_the_1993_bytes(pki_dir: Path, header: str) -> None:
    """Alpha's link MACs (ZAK): on iso93-bcd the switch MACs what it sends and the host
    verifies what it receives (a MAC over anything else would be answered 63), and the
    switch verifies the host's MAC over the 1993 answer as it came; a static header travels
    before every message both ways and is not MACed."""
    pan, pin = CARDS["alpha"]
    async with running_stack(
        pki_dir, dialects={"alpha": "iso93-bcd"}, headers={"alpha": header}
    ) as stack:
        tap = wiretap(stack.issuers["alpha"])
        async with terminal(stack.port) as term:
            req = purchase(pan, 1250, terminal_id=TERMINAL.id, merchant=TERMINAL.merchant)
            add_pin_block(req, TERMINAL, pin, pan, None)
            assert (await term.exchange(req))["39"] == "00"
            reversal = await term.exchange(reversal_of(req))
            assert reversal["39"] == "00"
        checks = stack.gateway.security_metrics.checks
        assert checks.labels("issuer_mac", "verified")._value.get() >= 2
        [(frame, msg), (rframe, rmsg)] = [(f, m) for f, m in tap if m.mti != "0800"]
    assert frame.startswith(header.encode())
    assert rframe.startswith(header.encode())
    frame, rframe = frame[len(header) :], rframe[len(header) :]
    inner = stack.issuers["alpha"].codec.inner  # type: ignore[attr-defined]
    assert frame.startswith(bytes.fromhex("1200"))
    assert "64" in msg
    assert "64" in inner.decode(frame)
    # Canonically the reversal's MAC is in 128 (field 90 brings the secondary bitmap); its
    # 90 becomes 1993's 56, no secondary bitmap is left, and on the wire the MAC is in 64.
    assert rframe.startswith(bytes.fromhex("1420"))
    assert "128" in rmsg
    on_wire = inner.decode(rframe)
    assert "64" in on_wire
    assert "128" not in on_wire
    assert "56" in on_wire


async def test_timeout_advice_reaches_a_1993_host_as_1420_and_is_applied_once(
    pki_dir: Path, tmp_path: Path
) -> None:
    """The switch's own 0420 (store-and-forward after a timeout) leaves the journal in the
    canonical form and reaches gamma's host as a 1420 with reason 4021; its 1430 clears it."""
    pan = CARDS["gamma"][0]
    saf = SafConfig(reversal_delay=0.3, poll_interval=0.1, backoff_base=0.05, backoff_max=0.3)
    async with running_stack(
        pki_dir,
        link_timeout=0.3,
        risk="",
        journal=write_conf(tmp_path),
        saf=saf,
        dialects=DIALECTS,
    ) as stack:
        gamma = stack.issuers["gamma"]
        tap = wiretap(gamma)
        before = stack.account_balance("gamma", pan)
        gamma.faults.drop_ratio = 1.0  # processed, answer lost: the switch times out
        async with terminal(stack.port) as term:
            lost = await term.exchange(purchase(pan, 700, terminal_id=TERMINAL.id))
        assert lost["39"] == "91"
        gamma.faults.drop_ratio = 0.0
        await eventually(lambda: gamma.host.reversals_applied == 1)
        await eventually(lambda: stack.account_balance("gamma", pan) == before)
        with anyio.fail_after(10):
            while await saf_depth(stack.gateway, "gamma"):  # noqa: ASYNC110 - polls the journal
                await anyio.sleep(0.02)
    inner = gamma.codec.inner  # type: ignore[attr-defined]
    advices = [inner.decode(frame) for frame, msg in tap if msg.mti == "0420"]
    assert advices
    assert {(a.mti, a["24"], a["25"]) for a in advices} == {("1420", "400", "4021")}
    assert gamma.by_mti.get("0420", 0) >= 1  # canonical at the host


async def test_qr_payments_reach_a_1993_host_and_come_back_canonical(pki_dir: Path) -> None:
    """Gamma is the demo's QR wallet bank: a consumer-presented QR payment enters the pipeline
    as a 0200 with 22 = 031 and reaches gamma's iso93-bcd host with a POS data code whose
    card data input mode is bar code (3); the API answers in SPEC's codes (00, 51)."""
    wallet, low = CARDS["gamma"][0], "6250940000000035"
    async with running_stack(pki_dir, dialects=DIALECTS) as stack:
        tap = wiretap(stack.issuers["gamma"])
        headers = {"Authorization": "Bearer demo-qr-acquirer-key-0001"}
        async with httpx.AsyncClient(base_url=stack.qr_url, headers=headers, timeout=10) as client:
            answers = []
            for pan, key in ((wallet, "t16-1"), (low, "t16-2")):
                body = {
                    "qr": qr_cpm.build(aid="A000000333010101", pan=pan, expiry="3012"),
                    "amount": 500,
                    "currency": "156",
                    "merchant_id": "M00000000000001",
                    "idempotency_key": key,
                }
                resp = await client.post("/v1/qr/payments", json=body)
                assert resp.status_code == 201, resp.text
                answers.append(resp.json()["response_code"])
    assert answers == ["00", "51"]
    inner = stack.issuers["gamma"].codec.inner  # type: ignore[attr-defined]
    sent = [inner.decode(frame) for frame, msg in tap if msg.mti == "0200"]
    assert [m.mti for m in sent] == ["1200", "1200"]
    assert all(m["22"][6] == "3" and m["24"] == "200" for m in sent)
    assert all(msg["22"] == "031" for _, msg in tap if msg.mti == "0200")


@pytest.mark.parametrize("framing", ["ascii4", "binary2-tpdu"])
async def test_a_1993_link_in_another_framing(pki_dir: Path, framing: str) -> None:
    """Framing and dialect are independent per link: gamma in iso93-bcd inside a 4-digit ASCII
    length or a UnionPay TPDU, a purchase and its reversal approved and mapped back."""
    pan = CARDS["gamma"][0]
    async with running_stack(
        pki_dir, dialects={"gamma": "iso93-bcd"}, framings={"gamma": framing}
    ) as stack:
        before = stack.account_balance("gamma", pan)
        tap = wiretap(stack.issuers["gamma"])
        async with terminal(stack.port) as term:
            req = purchase(pan, 300, terminal_id=TERMINAL.id, merchant=TERMINAL.merchant)
            assert (await term.exchange(req))["39"] == "00"
            assert (await term.exchange(reversal_of(req)))["39"] == "00"
        assert stack.account_balance("gamma", pan) == before
    assert [frame[:2].hex() for frame, _ in tap] == ["1200", "1420"]


@pytest.mark.parametrize("issuer", sorted(DIALECTS))
async def test_a_track2_purchase_reaches_the_issuer_on_each_dialect(
    stack: Stack, issuer: str
) -> None:
    """Track 2 from an ASCII terminal (``PAN=YYMM...``) travels as BCD nibbles on a BCD link,
    whose separator is ``D``: before, the switch could not encode it for beta's iso87-bcd link,
    answered 91 as if beta were down and stood in once its breaker opened (found by
    ``loadtest fuzz-live``'s checks: every magstripe purchase of the demo's beta)."""
    pan, _ = CARDS[issuer]
    card = next(c for c in DATA.cards if c.pan == pan)
    tap = wiretap(stack.issuers[issuer])
    track2 = f"{pan}={card.expiry}1010000000000"
    request = purchase(pan, 1000, terminal_id=TERMINAL.id, merchant=TERMINAL.merchant)
    del request.fields["2"]
    request.fields["35"] = track2
    async with terminal(stack.port) as term:
        answer = await term.exchange(request)
    assert answer["39"] == "00"
    sent = [m for _, m in tap if m.mti in ("0200", "1200")]
    assert len(sent) == 1  # the issuer answered, not the stand-in
    separator = "D" if issuer == "beta" else "="
    assert sent[0]["35"] == track2.replace("=", separator)
