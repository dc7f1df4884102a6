"""The recent-transaction window's compact entries: answers replayed byte for byte, the entry
as its own completion event, times and bounds."""

from __future__ import annotations

import datetime as dt
from typing import cast

import anyio
import pytest

from gateway.config import SafConfig
from gateway.flow.journal_stage import JournalRuntime, JournalStage
from gateway.flow.participants import CheckDuplicate
from gateway.flow.pipeline import BaseParticipant, Context
from gateway.flow.recent import RecentTransactions, TxnEntry
from gateway.flow.switch import Switch
from gateway.journal import Journal, JournalError
from gateway.metrics import Metrics
from protocols.dialects import get_dialect
from protocols.fastcodec import best_codec
from protocols.keys import key_of
from protocols.message import Message

CODEC = best_codec(get_dialect("terminal"))
NOW = dt.datetime(2026, 11, 27, 10, 0, 0, 123456, tzinfo=dt.UTC)
KEY = key_of("2", "T0000001", "000001", "1127100000")

ANSWERS = [
    Message(
        "0210",
        {
            "2": "4761730000000011",
            "3": "000000",
            "4": "000000001250",
            "7": "1127100000",
            "11": "000001",
            "37": "0HOJNP18UZS0",
            "38": "A1B2C3",
            "39": "00",
            "41": "T0000001",
            "42": "M00000000000001",
            "49": "156",
            "54": "1002156C000000050000",
            "55": "910A0011223344556677883030",
        },
    ),
    Message("0410", {"39": "00", "90": "0200" + "0" * 38}),
    Message("0210", {"39": "96"}),
    Message("0210", {}),
    # Values a JSON text must escape: quotes, backslashes, control characters, non-ASCII.
    Message("0210", {"39": "05", "44": 'a"b\\c\x00\x1f\n', "48": "café ✓"}),
]


@pytest.mark.parametrize("answer", ANSWERS, ids=range(len(ANSWERS)))
def test_a_recorded_answer_comes_back_with_the_same_fields(answer: Message) -> None:
    entry = RecentTransactions(window=60.0).begin(KEY, 1.0, NOW)
    assert entry.response is None
    entry.finish(answer, approved=True)
    replayed = entry.response
    assert replayed is not None
    assert replayed == answer
    assert list(replayed.fields) == list(answer.fields)  # the same order too
    assert replayed is not answer


def test_a_replayed_answer_has_the_same_bytes() -> None:
    answer = ANSWERS[0]
    entry = TxnEntry(1.0)
    entry.finish(answer, approved=True)
    replayed = entry.response
    assert replayed is not None
    assert CODEC.encode(replayed) == CODEC.encode(answer)


def test_an_answer_json_cannot_hold_is_kept_whole() -> None:
    answer = Message("0210", {"39": "00", "44": "\ud800"})  # a lone surrogate
    entry = TxnEntry(1.0)
    entry.finish(answer, approved=True)
    assert entry.response == answer


def test_the_recorded_answer_is_a_copy_and_can_be_set_again() -> None:
    answer = Message("0210", {"38": "A1B2C3", "39": "00"})
    entry = TxnEntry(1.0)
    entry.finish(answer, approved=True)
    answer.fields["39"] = "96"  # changed after it was recorded: the entry keeps the first
    replayed = entry.response
    assert replayed is not None
    assert replayed["39"] == "00"
    replayed.fields.clear()  # a replay changed by its reader changes nothing kept
    assert entry.response == Message("0210", {"38": "A1B2C3", "39": "00"})
    entry.response = answer
    assert entry.response == answer
    entry.response = None
    assert entry.response is None


def test_wall_clock_time_kept_to_the_microsecond() -> None:
    recent = RecentTransactions(window=60.0)
    entry = recent.begin(KEY, 1.0, NOW)
    assert entry.when == NOW
    entry.when = NOW + dt.timedelta(days=400, microseconds=1)
    assert entry.when == NOW + dt.timedelta(days=400, microseconds=1)
    before = dt.datetime.now(dt.UTC)
    default = recent.begin(key_of("2", "T0000001", "000002", "1127100000"), 2.0)
    assert before - dt.timedelta(seconds=1) <= default.when <= dt.datetime.now(dt.UTC)


def test_finished_entries_share_their_mti_and_currency_strings() -> None:
    recent = RecentTransactions(window=60.0)
    entries = []
    for i in range(2):
        entry = recent.begin(key_of("2", "T0000001", f"{i:06d}", "1127100000"), 1.0, NOW)
        entry.currency = "".join(["1", "5", "6"])  # a new string each time, as decoded
        entry.issuer_mti = "".join(["02", "00"])
        entry.finish(Message("0210", {"39": "00"}), approved=True)
        entries.append(entry)
    assert entries[0].currency is entries[1].currency
    assert entries[0].issuer_mti is entries[1].issuer_mti
    assert entries[0].approved


def test_repr_shows_no_card_number() -> None:
    entry = TxnEntry(1.0)
    entry.pan = "4761730000000011"
    entry.finish(ANSWERS[0], approved=True)
    assert "4761730000000011" not in repr(entry)
    assert "done=True" in repr(entry)


@pytest.mark.anyio
async def test_a_waiter_wakes_when_the_entry_is_finished() -> None:
    entry = RecentTransactions(window=60.0).begin(KEY, 1.0, NOW)
    assert entry.done is entry
    assert not entry.done.is_set()
    woke: list[Message | None] = []

    async def wait() -> None:
        await entry.done.wait()
        woke.append(entry.response)

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        tg.start_soon(wait)
        await anyio.sleep(0.01)
        assert woke == []
        entry.finish(Message("0210", {"39": "00"}), approved=True)
    assert woke == [Message("0210", {"39": "00"})] * 2
    await entry.done.wait()  # done: returns at once
    entry.done.set()  # idempotent
    assert entry.done.is_set()


def test_an_entry_made_again_moves_behind_and_its_old_place_is_skipped() -> None:
    recent = RecentTransactions(window=10.0, max_entries=2)
    first, second = KEY, key_of("2", "T0000001", "000002", "1127100000")
    old = recent.begin(first, now=0.0)
    recent.begin(second, now=1.0)
    again = recent.begin(first, now=2.0)  # first is the newest now
    assert again is not old
    recent.begin(key_of("2", "T0000001", "000003", "1127100000"), now=3.0)  # over the count
    assert recent.get(second, now=3.0) is None  # the oldest went, not first
    assert recent.get(first, now=3.0) is again
    assert len(recent) == 2
    for i in range(10):  # made again and again: still two entries
        recent.begin(first, now=4.0 + i)
    assert len(recent) == 2
    assert len(recent._order) <= 12


def test_insert_puts_a_made_entry_and_evicts_as_of_its_time() -> None:
    recent = RecentTransactions(window=10.0)
    recent.begin(key_of("2", "T0000001", "000009", "1127100000"), now=0.0)
    made = TxnEntry(20.0, NOW)
    made.rrn = "0HOJNP18UZS0"
    made.done.set()
    recent.insert(KEY, made)
    assert made.key == KEY
    assert recent.get(KEY, now=20.0) is made
    assert len(recent) == 1  # the first was past the window as of the made entry


class FailingJournalStage(JournalStage):
    """The journal stage whose outcome record fails: an approval is withheld (96)."""

    async def _record(self, journal: Journal, ctx: Context, first: bool) -> None:
        raise JournalError("disk full")


class Approve(BaseParticipant):
    name = "approve"

    async def prepare(self, ctx: Context) -> str | None:
        ctx.rc = "00"
        return None


@pytest.mark.anyio
async def test_a_repeat_of_a_withheld_approval_gets_the_96_the_terminal_got() -> None:
    runtime = JournalRuntime("12345678901", SafConfig(), window=60.0)
    runtime.journal = cast(Journal, object())  # never used: _record fails first
    recent = RecentTransactions(window=60.0)
    sw = Switch(
        [FailingJournalStage(runtime, set(), {}), CheckDuplicate(recent, Metrics()), Approve()],
        Metrics(),
        clock=lambda: NOW,
        log_transactions=False,
    )
    request = Message(
        "0200",
        {"3": "000000", "4": "000000000100", "7": "1127100000", "11": "000001", "41": "T0000001"},
    )
    first = await sw.handle(request)
    repeat = await sw.handle(request)
    assert first is not None
    assert repeat is not None
    assert first["39"] == "96"
    assert CODEC.encode(repeat) == CODEC.encode(first)
