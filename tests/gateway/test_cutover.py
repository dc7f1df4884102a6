"""The cutover announcement on bare objects: the link's 0800/201, each issuer's outcome, and
the task firing when the (moved) clock passes the cutover instant."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl

import anyio
import pytest

from gateway.config import LinkConfig
from gateway.upstream.cutover import CutoverAnnouncer
from gateway.upstream.links import CUTOVER, IssuerPool
from kit import fastio
from protocols.business_day import BusinessCalendar
from protocols.dialects import get_dialect
from protocols.fastcodec import best_codec
from protocols.message import Message
from tests.gateway.test_links import Channel

pytestmark = pytest.mark.anyio
CODEC = best_codec(get_dialect("terminal"))
NOW = dt.datetime(2026, 12, 7, 14, 59, 59, tzinfo=dt.UTC)


def pool(*, send_settlement_date: bool, up: tuple[bool, ...]) -> IssuerPool:
    cfg = LinkConfig(
        issuer="beta",
        endpoints=("127.0.0.1:1",),
        connections=len(up),
        send_settlement_date=send_settlement_date,
    )
    p = IssuerPool(cfg, CODEC, ssl.create_default_context(), clock=lambda: NOW)
    for conn, is_up in zip(p.connections, up, strict=True):
        conn._framed = Channel()
        conn._loop = asyncio.get_running_loop() if fastio.fast_path() else None
        conn.state = "up" if is_up else "down"
    return p


async def _answer_when_sent(p: IssuerPool, rc: str) -> Message:
    """The issuer's side: answers the 0800 once it is on a connection's wire."""
    while True:
        for conn in p.connections:
            for key, pending in list(conn._pending.items()):
                assert isinstance(conn._framed, Channel)
                sent = CODEC.decode(conn._framed.sent[-1])
                pending.response = Message("0810", {**sent.fields, "39": rc})
                conn._pending.pop(key)
                pending.set()
                return sent
        await anyio.sleep(0.001)


@pytest.mark.parametrize("send_settlement_date", [True, False])
async def test_the_link_sends_201_on_a_signed_on_connection(send_settlement_date: bool) -> None:
    p = pool(send_settlement_date=send_settlement_date, up=(False, True))
    sent: list[Message] = []

    async def issuer() -> None:
        sent.append(await _answer_when_sent(p, "00"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(issuer)
        assert await p.cutover(dt.date(2026, 12, 8), timeout=2.0) == "00"
    (msg,) = sent
    assert msg.mti == "0800"
    assert msg.fields["70"] == CUTOVER
    assert msg.fields["7"] == "1207145959"
    assert msg.fields.get("15") == ("1208" if send_settlement_date else None)
    assert isinstance(p.connections[0]._framed, Channel)
    assert p.connections[0]._framed.sent == []  # down: not used


async def test_no_signed_on_connection_is_no_answer() -> None:
    p = pool(send_settlement_date=True, up=(False, False))
    assert await p.cutover(dt.date(2026, 12, 8), timeout=0.05) is None


async def test_a_silent_connection_is_tried_then_the_next() -> None:
    p = pool(send_settlement_date=True, up=(True, True))
    # The first connection never answers; the second does.
    first, second = p.connections

    async def issuer() -> None:
        while not second._pending:  # noqa: ASYNC110 - the link task fills it
            await anyio.sleep(0.001)
        assert isinstance(second._framed, Channel)
        sent = CODEC.decode(second._framed.sent[-1])
        key, pending = next(iter(second._pending.items()))
        second._pending.pop(key)
        pending.response = Message("0810", {**sent.fields, "39": "00"})
        pending.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(issuer)
        assert await p.cutover(dt.date(2026, 12, 8), timeout=0.1) == "00"
    assert isinstance(first._framed, Channel)
    tried = CODEC.decode(first._framed.sent[0])
    assert tried.fields["70"] == CUTOVER
    assert isinstance(second._framed, Channel)
    assert CODEC.decode(second._framed.sent[0]).fields["11"] != tried.fields["11"]  # new STAN


class FakePool:
    def __init__(self, issuer: str, rc: str | None) -> None:
        self.issuer = issuer
        self.rc = rc
        self.days: list[dt.date] = []

    async def cutover(self, day: dt.date, timeout: float) -> str | None:
        self.days.append(day)
        return self.rc


class Clock:
    def __init__(self, at: dt.datetime) -> None:
        self.at = at

    def __call__(self) -> dt.datetime:
        return self.at


async def test_at_the_cutover_every_link_is_told_and_each_outcome_counted() -> None:
    pools = {
        "alpha": FakePool("alpha", "00"),
        "beta": FakePool("beta", "12"),
        "gamma": FakePool("gamma", None),
    }
    outcomes: list[tuple[str, str]] = []
    clock = Clock(dt.datetime(2026, 12, 7, 14, 59, 59, tzinfo=dt.UTC))
    announcer = CutoverAnnouncer(
        BusinessCalendar.of("23:00", "Asia/Shanghai"),
        pools,  # type: ignore[arg-type]
        clock=clock,
        poll=0.01,
        on_outcome=lambda issuer, outcome: outcomes.append((issuer, outcome)),
    )
    async with anyio.create_task_group() as tg:
        await tg.start(announcer.run)
        await anyio.sleep(0.05)
        assert not announcer.announced  # a second before the cutover: nothing yet
        clock.at = dt.datetime(2026, 12, 7, 15, 0, tzinfo=dt.UTC)
        with anyio.fail_after(2):
            while not announcer.announced:  # noqa: ASYNC110 - state of another task
                await anyio.sleep(0.005)
        await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    assert list(announcer.announced) == [
        (dt.date(2026, 12, 8), {"alpha": "00", "beta": "12", "gamma": None})
    ]  # once: the next cutover is a day later
    assert sorted(outcomes) == [("alpha", "ok"), ("beta", "refused"), ("gamma", "no_answer")]
    assert all(p.days == [dt.date(2026, 12, 8)] for p in pools.values())


async def test_a_stepped_clock_announces_todays_date_and_never_one_twice() -> None:
    pools = {"alpha": FakePool("alpha", "00")}
    clock = Clock(dt.datetime(2026, 12, 7, 14, 59, 59, tzinfo=dt.UTC))
    announcer = CutoverAnnouncer(
        BusinessCalendar.of("23:00", "Asia/Shanghai"),
        pools,  # type: ignore[arg-type]
        clock=clock,
        poll=0.01,
    )

    async def announced(count: int) -> None:
        with anyio.fail_after(2):
            while len(announcer.announced) < count:  # noqa: ASYNC110 - another task's state
                await anyio.sleep(0.005)

    async with anyio.create_task_group() as tg:
        await tg.start(announcer.run)
        clock.at = dt.datetime(2026, 12, 7, 15, 0, 1, tzinfo=dt.UTC)
        await announced(1)
        # Stepped back over the cutover and forward again: the 8th was announced already.
        clock.at = dt.datetime(2026, 12, 7, 14, 59, 59, tzinfo=dt.UTC)
        await anyio.sleep(0.05)
        clock.at = dt.datetime(2026, 12, 7, 15, 0, 2, tzinfo=dt.UTC)
        await anyio.sleep(0.05)
        assert len(announcer.announced) == 1
        # Three days on at once (a suspended machine): the date of now, not of the next day.
        clock.at = dt.datetime(2026, 12, 10, 16, 0, tzinfo=dt.UTC)
        await announced(2)
        tg.cancel_scope.cancel()
    assert [day for day, _ in announcer.announced] == [dt.date(2026, 12, 8), dt.date(2026, 12, 11)]
