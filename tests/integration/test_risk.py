"""Limits and risk end to end through the gateway, with the demo data (issue 5)."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest

from kit.dataset import Terminal
from loadtest.generator import synthetic_pan
from protocols.message import Message
from tests.helpers import DEMO_CONF, Stack, demo_dataset, purchase, reversal_of, running_stack
from tests.helpers import terminal as connect

pytestmark = pytest.mark.anyio

RICH = "4761730000000060"  # balance 99,999,999: only the switch's limits stop it


@pytest.fixture
async def stack(pki_dir: Path) -> AsyncIterator[Stack]:
    data = demo_dataset()
    casino = Terminal(id="C0000001", merchant="M00000000000009")
    data = dataclasses.replace(data, terminals=(*data.terminals, casino))
    async with running_stack(pki_dir, dataset=data) as s:
        yield s


async def test_blacklisted_pan_59(stack: Stack) -> None:
    async with connect(stack.port) as term:
        assert (await term.exchange(purchase("4761730000000052", 100)))["39"] == "59"


async def test_blocked_mcc_57(stack: Stack) -> None:
    async with connect(stack.port) as term:
        resp = await term.exchange(
            purchase("4761730000000011", 100, terminal_id="C0000001", merchant="M00000000000009")
        )
    assert resp["39"] == "57"


async def test_single_amount_61(stack: Stack) -> None:
    async with connect(stack.port) as term:
        assert (await term.exchange(purchase(RICH, 5_000_001)))["39"] == "61"
        assert (await term.exchange(purchase(RICH, 5_000_000)))["39"] == "00"


async def test_daily_amount_61_and_reversal_gives_back(stack: Stack) -> None:
    async with connect(stack.port) as term:
        first = purchase(RICH, 5_000_000)
        assert (await term.exchange(first))["39"] == "00"
        assert (await term.exchange(purchase(RICH, 5_000_000)))["39"] == "00"
        assert (await term.exchange(purchase(RICH, 1)))["39"] == "61"
        assert (await term.exchange(reversal_of(first)))["39"] == "00"
        assert (await term.exchange(purchase(RICH, 5_000_000)))["39"] == "00"


async def test_velocity_65(stack: Stack) -> None:
    async with connect(stack.port) as term:
        codes = [(await term.exchange(purchase("4761730000000011", 10)))["39"] for _ in range(6)]
    assert codes == ["00"] * 5 + ["65"]


async def test_impossible_travel_59(stack: Stack) -> None:
    async with connect(stack.port) as term:
        assert (await term.exchange(purchase(RICH, 100)))["39"] == "00"
        tokyo = purchase(RICH, 100, terminal_id="X0000001", merchant="M00000000000003")
        assert (await term.exchange(tokyo))["39"] == "59"


async def test_issuer_decline_does_not_consume_the_daily_amount(stack: Stack) -> None:
    low = "4761730000000029"  # balance 500: the issuer declines 51
    async with connect(stack.port) as term:
        assert (await term.exchange(purchase(low, 1000)))["39"] == "51"
        assert (await term.exchange(purchase(low, 400)))["39"] == "00"
    assert stack.gateway.risk is not None


async def test_daily_count_65(pki_dir: Path, tmp_path: Path) -> None:
    text = (DEMO_CONF / "risk.toml").read_text()
    text = text.replace(
        "velocity = { count = 5, seconds = 60 }", "velocity = { count = 100, seconds = 60 }"
    )
    text = text.replace("velocity_attempts = 4", "velocity_attempts = 1000")
    risk = tmp_path / "risk.toml"
    risk.write_text(text)
    async with running_stack(pki_dir, risk=str(risk)) as stack, connect(stack.port) as term:
        codes = [(await term.exchange(purchase("5413330000000035", 10)))["39"] for _ in range(21)]
    assert codes == ["00"] * 20 + ["65"]


async def test_concurrent_purchases_exactly_fill_the_daily_limit(stack: Stack) -> None:
    # 200 purchases of 100,000 at once on one card against a 10,000,000 daily limit: the limit
    # fits exactly 100 whatever the interleaving (velocity and count limits raised so only
    # the daily amount binds).
    assert stack.gateway.risk is not None
    cfg = stack.gateway.risk.config
    assert cfg.velocity is not None
    velocity = dataclasses.replace(cfg.velocity, count=1000)
    stack.gateway.risk.reload(
        dataclasses.replace(cfg, velocity=velocity, daily_count_per_card=1000)
    )
    codes: list[str] = []

    async def one(term_port: int) -> None:
        async with connect(term_port) as term:
            codes.append((await term.exchange(purchase(RICH, 100_000), timeout=30))["39"])

    async with anyio.create_task_group() as tg:
        for _ in range(200):
            tg.start_soon(one, stack.port)
    assert codes.count("00") == 100
    assert codes.count("61") == 100


async def test_reload_while_traffic_flows(stack: Stack, tmp_path: Path) -> None:
    assert stack.gateway.risk is not None
    assert stack.gateway.risk_path is not None
    stack.gateway.risk_path = tmp_path / "risk.toml"
    original = (DEMO_CONF / "risk.toml").read_text()
    stack.gateway.risk_path.write_text(original)
    rnd = random.Random(3)
    results: list[str] = []
    stop = anyio.Event()

    async def traffic() -> None:
        async with connect(stack.port) as term:
            while not stop.is_set():
                results.append(
                    (await term.exchange(purchase(synthetic_pan("5413339", rnd), 500)))["39"]
                )

    base = f"http://127.0.0.1:{stack.gateway.admin_port}"
    async with anyio.create_task_group() as tg, httpx.AsyncClient(base_url=base) as http:
        for _ in range(4):
            tg.start_soon(traffic)
        await anyio.sleep(0.3)
        stack.gateway.risk_path.write_text(
            original.replace("max_single_amount = 5000000", "max_single_amount = 400")
        )
        assert (await http.post("/admin/reload")).json()["reloaded"] is True
        async with connect(stack.port) as term:
            assert (await term.exchange(purchase(synthetic_pan("5413339", rnd), 500)))["39"] == "61"
        stack.gateway.risk_path.write_text("max_single_amount = 'lots'\n")
        refused = await http.post("/admin/reload")
        assert refused.status_code == 422
        assert "max_single_amount" in refused.json()["reason"]
        async with connect(stack.port) as term:  # the old (reloaded) rules stay
            assert (await term.exchange(purchase(synthetic_pan("5413339", rnd), 500)))["39"] == "61"
        await anyio.sleep(0.2)
        stop.set()
    assert results
    assert set(results) <= {"00", "61"}  # nothing in flight failed
    alerts = stack.gateway.risk.recent_alerts()
    assert any(a.get("rc") == "61" or "single" in str(a) for a in alerts)


async def test_another_currency_does_not_escape_the_daily_amount(stack: Stack) -> None:
    """Issue 12 item 3 as reported: a synthetic card changed field 49 to start a new daily
    total (16,000,000 approved against 10,000,000). One total, in the limit currency (156)."""
    card = synthetic_pan("4761739", random.Random(12))
    alpha = stack.issuers["alpha"]
    before = alpha.by_mti.get("0200", 0)

    def in_currency(currency: str) -> Message:
        return purchase(card, 4_000_000, extra={"49": currency})

    async with connect(stack.port) as term:
        codes = [(await term.exchange(in_currency("156")))["39"] for _ in range(3)]
        assert codes == ["00", "00", "61"]
        for inactive in ("157", "000", "999"):  # not ISO 4217 payment currencies
            assert (await term.exchange(in_currency(inactive)))["39"] == "30"
        assert (await term.exchange(in_currency("978")))["39"] == "12"  # no rate for EUR
        # 563,380 USD cents = 3,999,998 fen: converted, it is over the same total
        usd = purchase(card, 563_380, extra={"49": "840"})
        assert (await term.exchange(usd))["39"] == "61"
    assert alpha.by_mti.get("0200", 0) - before == 2  # the issuer was asked twice only
