"""The switch core: which participant hooks run, in which order, called how."""

from __future__ import annotations

import datetime as dt

import anyio
import pytest

from gateway.flow.participants import CheckDuplicate, FindOriginal
from gateway.flow.pipeline import WAIT, BaseParticipant, Context, resolve_hooks
from gateway.flow.recent import RecentTransactions
from gateway.flow.switch import Switch
from gateway.metrics import Metrics
from protocols.business_day import BusinessCalendar
from protocols.message import Message

NOW = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.UTC)


def purchase(stan: str = "000001") -> Message:
    return Message(
        "0200",
        {"3": "000000", "4": "000000000100", "7": "1127100000", "11": stan, "41": "T0000001"},
    )


class Recorder(BaseParticipant):
    """Async hooks that log their calls."""

    def __init__(self, name: str, calls: list[str], rc: str | None = None) -> None:
        self.name = name
        self.calls = calls
        self.rc = rc

    async def prepare(self, ctx: Context) -> str | None:
        self.calls.append(f"prepare {self.name}")
        return self.rc

    async def commit(self, ctx: Context) -> None:
        self.calls.append(f"commit {self.name}")

    async def abort(self, ctx: Context) -> None:
        self.calls.append(f"abort {self.name}")


class PlainRecorder(Recorder):
    """The same hooks as plain methods too: the switch must call those."""

    def prepare_now(self, ctx: Context) -> str | None:
        self.calls.append(f"prepare_now {self.name}")
        return self.rc

    def commit_now(self, ctx: Context) -> None:
        self.calls.append(f"commit_now {self.name}")

    def abort_now(self, ctx: Context) -> None:
        self.calls.append(f"abort_now {self.name}")


class AsyncAgain(PlainRecorder):
    """A subclass overriding the async prepare: its plain parent method must not be used."""

    async def prepare(self, ctx: Context) -> str | None:
        self.calls.append(f"prepare-override {self.name}")
        return self.rc


class Waits(PlainRecorder):
    def prepare_now(self, ctx: Context) -> str | None:
        self.calls.append(f"prepare_now {self.name}")
        return WAIT


class Quiet(BaseParticipant):
    name = "quiet"


class Approve(BaseParticipant):
    name = "approve"

    async def prepare(self, ctx: Context) -> str | None:
        ctx.rc = "00"
        return None


class Boom(BaseParticipant):
    name = "boom"

    async def prepare(self, ctx: Context) -> str | None:
        raise RuntimeError("boom")


def switch(*participants: BaseParticipant) -> Switch:
    return Switch(participants, Metrics(), log_transactions=False, clock=lambda: NOW)


def test_hooks_resolved_once() -> None:
    calls: list[str] = []
    hooks = resolve_hooks(
        (Quiet(), Recorder("a", calls), PlainRecorder("b", calls), AsyncAgain("c", calls))
    )
    quiet, a, b, c = hooks
    assert quiet.prepare is None
    assert quiet.commit is None
    assert quiet.abort is None
    assert a.prepare is not None
    assert a.prepare_now is None
    assert b.prepare_now is not None
    assert b.commit_now is not None
    assert b.abort_now is not None
    assert c.prepare_now is None
    assert c.prepare is not None
    assert c.commit_now is not None  # commit is not overridden: still plain


@pytest.mark.anyio
async def test_order_and_plain_calls_on_approval() -> None:
    calls: list[str] = []
    sw = switch(
        Recorder("a", calls),
        Quiet(),
        PlainRecorder("b", calls),
        AsyncAgain("c", calls),
        Approve(),
    )
    resp = await sw.handle(purchase())
    assert resp is not None
    assert resp["39"] == "00"
    assert calls == [
        "prepare a",
        "prepare_now b",
        "prepare-override c",
        "commit_now c",
        "commit_now b",
        "commit a",
    ]


@pytest.mark.anyio
async def test_decline_stops_and_aborts_only_those_that_prepared() -> None:
    calls: list[str] = []
    sw = switch(
        Recorder("a", calls), Quiet(), PlainRecorder("b", calls, rc="51"), Recorder("c", calls)
    )
    resp = await sw.handle(purchase())
    assert resp is not None
    assert resp["39"] == "51"
    assert calls == ["prepare a", "prepare_now b", "abort_now b", "abort a"]


@pytest.mark.anyio
async def test_a_failing_participant_answers_96_and_is_aborted() -> None:
    calls: list[str] = []
    sw = switch(Recorder("a", calls), Boom(), Recorder("c", calls))
    resp = await sw.handle(purchase())
    assert resp is not None
    assert resp["39"] == "96"
    assert calls == ["prepare a", "abort a"]


@pytest.mark.anyio
async def test_wait_falls_back_to_the_async_prepare() -> None:
    calls: list[str] = []
    sw = switch(Waits("w", calls, rc="05"))
    resp = await sw.handle(purchase())
    assert resp is not None
    assert resp["39"] == "05"
    assert calls == ["prepare_now w", "prepare w", "abort_now w"]


@pytest.mark.anyio
async def test_duplicate_waits_for_its_original_then_replays() -> None:
    recent = RecentTransactions(window=60.0)
    release = anyio.Event()

    class Slow(BaseParticipant):
        name = "slow"

        async def prepare(self, ctx: Context) -> str | None:
            await release.wait()
            ctx.rc = "00"
            return None

    sw = switch(CheckDuplicate(recent, Metrics()), Slow())
    answers: list[Message | None] = []

    async def send() -> None:
        answers.append(await sw.handle(purchase()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(send)
        await anyio.sleep(0.01)
        tg.start_soon(send)  # a duplicate while the original is in flight
        await anyio.sleep(0.01)
        release.set()
    first, second = answers
    assert first is not None
    assert first["39"] == "00"
    assert second == first  # the original's answer, replayed
    assert second is not first  # rebuilt from the window's compact copy


SIGN_ON = {"7": "1127100000", "11": "000001", "41": "T0000001", "70": "001"}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fields", "rc"),
    [
        (SIGN_ON, "00"),
        ({"70": "301"}, "30"),  # issue 12 item 4: no 7, no 11
        ({"7": "ABCDEFGHIJ", "11": "XXXXXX", "70": "301"}, "30"),
        ({**SIGN_ON, "7": "1327100000"}, "30"),  # month 13
        ({**SIGN_ON, "70": "999"}, "12"),
    ],
    ids=["valid", "no-7-no-11", "letters", "bad-date", "unknown-code"],
)
async def test_network_management_fields_are_checked(fields: dict[str, str], rc: str) -> None:
    resp = await switch().handle(Message("0800", dict(fields)))
    assert resp is not None
    # Answered with the request's network fields echoed as sent (SPEC: 30 for a bad field).
    assert (resp.mti, resp.fields) == ("0810", {**fields, "39": rc})


class SeesBusinessDate(BaseParticipant):
    name = "sees-business-date"

    def __init__(self) -> None:
        self.seen: list[dt.date | None] = []

    async def prepare(self, ctx: Context) -> str | None:
        self.seen.append(ctx.business_date)
        return "00"


@pytest.mark.anyio
async def test_the_business_date_is_fixed_from_the_switch_clock_at_receipt() -> None:
    # 23:00 in Shanghai is 15:00 UTC: a second either side is another business date.
    calendar = BusinessCalendar.of("23:00", "Asia/Shanghai")
    cutover = dt.datetime(2026, 12, 7, 15, 0, tzinfo=dt.UTC)
    moments = iter([cutover - dt.timedelta(seconds=1), cutover])
    seer = SeesBusinessDate()
    sw = Switch(
        [seer], Metrics(), log_transactions=False, clock=lambda: next(moments), calendar=calendar
    )
    await sw.handle(purchase("000001"))
    await sw.handle(purchase("000002"))
    assert seer.seen == [dt.date(2026, 12, 7), dt.date(2026, 12, 8)]
    # Default: the UTC calendar date.
    default = SeesBusinessDate()
    await Switch([default], Metrics(), log_transactions=False, clock=lambda: cutover).handle(
        purchase()
    )
    assert default.seen == [dt.date(2026, 12, 7)]


@pytest.mark.anyio
async def test_a_reversal_after_the_cutover_keeps_its_originals_business_date() -> None:
    recent = RecentTransactions(window=60)
    calendar = BusinessCalendar.of("23:00", "Asia/Shanghai")
    cutover = dt.datetime(2026, 12, 7, 15, 0, tzinfo=dt.UTC)
    moments = iter([cutover - dt.timedelta(minutes=1), cutover + dt.timedelta(minutes=1)])
    seer = SeesBusinessDate()
    sw = Switch(
        [CheckDuplicate(recent, Metrics()), FindOriginal(recent), seer],
        Metrics(),
        log_transactions=False,
        clock=lambda: next(moments),
        calendar=calendar,
    )
    original = purchase("000001")
    await sw.handle(original)
    f = original.fields
    reversal = Message("0400", {**f, "11": "000002", "90": f"0200{f['11']}{f['7']}" + "0" * 22})
    await sw.handle(reversal)
    assert seer.seen == [dt.date(2026, 12, 7), dt.date(2026, 12, 7)]
