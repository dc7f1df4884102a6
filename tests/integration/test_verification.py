"""Limits that know how the payer was verified, over real sockets: contactless taps without a
CVM above the demo cap (CNY 1,000) are soft-declined 65 "PIN required", the retry with the PIN
is approved, and a consumer-device CVM is approved as it is."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from loadtest.pos_sim import INITIAL_KSN, add_pin_block, card_for, terminal_of
from tests.helpers import Stack, demo_dataset, running_stack, terminal
from tests.integration.test_contactless import BETA_CARDS, NFC, contactless

pytestmark = pytest.mark.anyio

CAP = 100_000  # conf/demo/risk.toml [contactless] no_cvm_max_amount, fen


@pytest.fixture
async def stack(pki_dir: Path) -> AsyncIterator[Stack]:
    async with running_stack(pki_dir) as s:
        yield s


async def test_no_cvm_above_cap_65_then_pin_retry_00(stack: Stack) -> None:
    data = demo_dataset()
    pan = BETA_CARDS[0]
    card = card_for(data, pan, atc=100)
    pin = next(c.pin for c in data.cards if c.pan == pan)
    before = stack.account_balance("beta", pan)
    seen = stack.issuers["beta"].by_mti.get("0200", 0)
    with structlog.testing.capture_logs() as logs:
        async with terminal(stack.port) as term:
            tap, _ = contactless(card, CAP + 1)
            resp = await term.exchange(tap)
            assert resp["39"] == "65"
            assert stack.issuers["beta"].by_mti.get("0200", 0) == seen  # not sent on
            retry, _ = contactless(card, CAP + 1)  # the terminal asks for the PIN: a new tap
            add_pin_block(retry, terminal_of(data, NFC), pin, pan, INITIAL_KSN)
            assert (await term.exchange(retry))["39"] == "00"
            below, _ = contactless(card, CAP - 1)  # within the cap: no CVM needed
            assert (await term.exchange(below))["39"] == "00"
    assert stack.account_balance("beta", pan) == before - 2 * CAP
    declined = [e for e in logs if e.get("rc") == "65" and e.get("event") == "risk_alert"]
    assert declined
    assert declined[0]["hits"][0]["detail"] == "PIN required"
    assert pan not in repr(logs)


async def test_consumer_device_cvm_above_cap_approved(stack: Stack) -> None:
    pan = BETA_CARDS[1]
    card = card_for(demo_dataset(), pan, atc=100)
    icc = card.icc_data(CAP * 2)
    # A phone wallet: CTQ 9F6C byte 2 bit 8, "consumer device CVM performed".
    cdcvm = icc.extended([("9F6C", bytes.fromhex("0080"))])
    async with terminal(stack.port) as term:
        req, _ = contactless(card, CAP * 2, icc=cdcvm)
        resp = await term.exchange(req)
    assert resp["39"] == "00"
    ok, note = card.check_issuer_auth(cdcvm, resp.get("55"))
    assert ok, note


def test_demo_cap_is_what_this_test_assumes() -> None:
    from gateway.risk import load_config
    from tests.helpers import DEMO_CONF

    assert load_config(DEMO_CONF / "risk.toml").contactless.no_cvm_max_amount == CAP
