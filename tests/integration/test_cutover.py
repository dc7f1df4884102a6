"""The business day on real sockets (issue 16 item 6): a 23:00 Asia/Shanghai cutover.

The gateway's clock is moved (it runs on, offset from the real one) to 30 s before the cutover
of 7 December 2026 (15:00 UTC). Purchases before it, one in flight across it (the issuer
answers 1.5 s late while the clock jumps past the cutover), purchases and a reversal of a
pre-cutover purchase after it: every transaction is totalled in the business day it was
received in (the reversal in its original's), although all happen on one UTC calendar day.
Every issuer link gets its 0800/201, with field 15 on the links that send settlement dates;
an issuer's own 0800/201 is answered 0810 00.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from gateway.config import SwitchConfig
from gateway.journal import SettlementTotal, TxnState
from gateway.upstream.links import CUTOVER
from protocols.message import Message
from tests.helpers import Stack, eventually, purchase, reversal_of, running_stack, terminal
from tests.integration.journal_support import JournalSetup, journal_of, journal_setup, txn

pytestmark = pytest.mark.anyio

ALPHA = "4761730000000011"  # a MACed link: 15 is under the MAC
BETA = "5413330000000035"
GAMMA = "6250940000000019"
CUTOVER_AT = dt.datetime(2026, 12, 7, 15, 0, tzinfo=dt.UTC)  # 23:00 in Shanghai
DEC7, DEC8 = dt.date(2026, 12, 7), dt.date(2026, 12, 8)


class MovableClock:
    """UTC wall clock at an offset from the real one, which tests move; time keeps running."""

    def __init__(self, at: dt.datetime) -> None:
        self.offset = dt.timedelta()
        self.move_to(at)

    def move_to(self, at: dt.datetime) -> None:
        self.offset = at - dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset


@pytest.fixture(params=["sqlite", "postgres"])
def journal(
    request: pytest.FixtureRequest, tmp_path: Path, anyio_backend: tuple[str, dict[str, Any]]
) -> Iterator[JournalSetup]:
    yield from journal_setup(request, tmp_path, anyio_backend)


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock(CUTOVER_AT - dt.timedelta(seconds=30))


@pytest.fixture
async def stack(pki_dir: Path, journal: JournalSetup, clock: MovableClock) -> AsyncIterator[Stack]:
    async with running_stack(
        pki_dir,
        link_timeout=5.0,
        risk="",
        journal=journal.conf,
        clock=clock,
        switch=SwitchConfig(cutover="23:00", timezone="Asia/Shanghai"),
        # gamma's host does not use field 15: it gets none.
        link_options={
            "alpha": {"send_settlement_date": True},
            "beta": {"send_settlement_date": True},
        },
    ) as s:
        yield s


def _totals(rows: list[SettlementTotal]) -> dict[str, tuple[int, int]]:
    return {t.issuer_id: (t.debit_count, t.debit_amount) for t in rows}


async def test_transactions_on_both_sides_of_the_cutover_land_in_their_business_day(
    stack: Stack, clock: MovableClock
) -> None:
    gateway = stack.gateway
    answers: dict[str, Message] = {}
    async with terminal(stack.port) as term:
        # Before the cutover (22:59:30 in Shanghai).
        for name, pan, amount in [("a1", ALPHA, 100), ("a2", ALPHA, 200)]:
            answers[name] = await term.exchange(purchase(pan, amount, stan=None))
        assert gateway.status()["business_day"]["date"] == "2026-12-07"
        assert gateway.status()["business_day"]["next_cutover"] == CUTOVER_AT.isoformat()

        # Received before the cutover, answered after it.
        stack.issuers["beta"].faults.latency_ms = 1500
        async with anyio.create_task_group() as tg:

            async def in_flight() -> None:
                answers["b1"] = await term.exchange(purchase(BETA, 400))

            tg.start_soon(in_flight)
            await eventually(lambda: stack.issuers["beta"].by_mti.get("0200", 0) == 1)
            clock.move_to(CUTOVER_AT + dt.timedelta(seconds=1))
        stack.issuers["beta"].faults.latency_ms = 0

        # Every link gets its cutover message, field 15 the new business date where used.
        await eventually(lambda: all(s.host.cutovers for s in stack.issuers.values()))
        fifteen = {name: s.host.cutovers[-1][1] for name, s in stack.issuers.items()}
        assert fifteen == {"alpha": "1208", "beta": "1208", "gamma": None}
        await eventually(lambda: len(gateway.cutover.announced) == 1)
        assert gateway.cutover.announced[-1] == (
            DEC8,
            {"alpha": "00", "beta": "00", "gamma": "00"},
        )
        assert gateway.status()["business_day"]["date"] == "2026-12-08"
        metrics = gateway.metrics.registry
        for issuer in ("alpha", "beta", "gamma"):
            labels = {"issuer": issuer, "outcome": "ok"}
            assert metrics.get_sample_value("switch_cutover_messages_total", labels) == 1

        # After the cutover: new purchases, and a reversal of a pre-cutover one.
        answers["a3"] = await term.exchange(purchase(ALPHA, 800))
        answers["g1"] = await term.exchange(purchase(GAMMA, 1600))
        answers["r2"] = await term.exchange(reversal_of(purchase_of(answers["a2"])))

    assert {name: a.fields["39"] for name, a in answers.items()} == dict.fromkeys(answers, "00")
    expected = {"a1": DEC7, "a2": DEC7, "b1": DEC7, "a3": DEC8, "g1": DEC8, "r2": DEC7}
    sent_15: dict[str, str | None] = {}
    for name, answer in answers.items():
        stored = await txn(gateway, answer.fields["37"])
        assert stored.business_date == expected[name], name
        assert stored.request is not None
        sent_15[name] = stored.request.get("15")  # what the issuer got
    assert sent_15 == {
        "a1": "1207",
        "a2": "1207",
        "b1": "1207",
        "a3": "1208",
        "g1": None,
        "r2": "1207",
    }
    assert (await txn(gateway, answers["a2"].fields["37"])).state is TxnState.REVERSED

    journal = journal_of(gateway)
    assert _totals(await journal.settlement(DEC7, by="business")) == {
        "alpha": (1, 100),
        "beta": (1, 400),
    }
    assert _totals(await journal.settlement(DEC8, by="business")) == {
        "alpha": (1, 800),
        "gamma": (1, 1600),
    }
    # One UTC calendar day holds them all.
    assert _totals(await journal.settlement(DEC7)) == {
        "alpha": (2, 900),
        "beta": (1, 400),
        "gamma": (1, 1600),
    }


def purchase_of(answer: Message) -> Message:
    """The request an answer echoes (MTI, 2, 3, 4, 7, 11, 41, 42, 49), for its reversal."""
    fields = {
        k: v for k, v in answer.fields.items() if k in ("2", "3", "4", "7", "11", "41", "42", "49")
    }
    return Message("0200", fields)


async def test_an_issuers_cutover_is_answered_in_kind(stack: Stack) -> None:
    gamma = stack.issuers["gamma"]
    await eventually(lambda: stack.gateway.pools["gamma"].ready)
    assert await gamma.send_cutover(DEC8) >= 1
    await eventually(lambda: len(gamma.answers_received) >= 1)
    answer = gamma.answers_received[0]
    assert answer.mti == "0810"
    assert (answer.fields["39"], answer.fields["70"], answer.fields["15"]) == (
        "00",
        CUTOVER,
        "1208",
    )
    assert stack.gateway.pools["gamma"].cutovers_received >= 1


@pytest.mark.parametrize("framing", ["ascii4", "binary2-tpdu"])
async def test_cutover_both_ways_in_every_framing(pki_dir: Path, framing: str) -> None:
    clock = MovableClock(CUTOVER_AT - dt.timedelta(seconds=5))
    async with running_stack(
        pki_dir,
        risk="",
        clock=clock,
        switch=SwitchConfig(cutover="23:00", timezone="Asia/Shanghai"),
        framings={"gamma": framing},
        link_options={"gamma": {"send_settlement_date": True}},
    ) as stack:
        gamma = stack.issuers["gamma"]
        await eventually(lambda: stack.gateway.pools["gamma"].ready)
        assert await gamma.send_cutover(DEC8) >= 1
        await eventually(lambda: len(gamma.answers_received) >= 1)
        fields = gamma.answers_received[0].fields
        assert (fields["39"], fields["70"], fields["15"]) == ("00", CUTOVER, "1208")
        clock.move_to(CUTOVER_AT)
        await eventually(lambda: bool(gamma.host.cutovers))
        assert gamma.host.cutovers[-1][1] == "1208"
