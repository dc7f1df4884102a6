from __future__ import annotations

import datetime as dt
import io

import orjson
import pytest
import structlog

from gateway.flow.recent import RecentTransactions
from gateway.flow.routing import BinTable
from gateway.flow.rrn import RrnGenerator
from issuer_sim.accounts import AccountBook
from issuer_sim.host import IssuerHost, balance_field
from kit.logs import configure, get_logger
from protocols.keys import key_of
from protocols.message import Message
from tests.helpers import demo_dataset

NOW = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.UTC)


def test_longest_prefix_wins() -> None:
    table = BinTable([("4", "visa"), ("476173", "alpha"), ("4761739", "synthetic")])
    assert table.route("4761730000000011") == "alpha"
    assert table.route("4761739000000001") == "synthetic"
    assert table.route("4000000000000010") == "visa"
    assert table.route("5413330000000019") is None
    with pytest.raises(ValueError, match="two issuers"):
        BinTable([("4", "a"), ("4", "b")])


def test_rrn_unique_increasing_and_12_chars() -> None:
    gen = RrnGenerator(3, now_us=1_700_000_000_000_000)
    seen = [gen.next(1_700_000_000_000_000) for _ in range(1000)]
    assert len(set(seen)) == 1000
    assert all(len(r) == 12 and r.isalnum() for r in seen)
    restarted = RrnGenerator(3, now_us=1_700_000_000_001_000)
    assert restarted.next(1_700_000_000_001_000) not in seen
    other_node = RrnGenerator(4, now_us=1_700_000_000_000_000)
    assert other_node.next(1_700_000_000_000_000) not in seen


def test_rrn_pieces_spell_the_whole_counter() -> None:
    # The generator keeps the high digits and looks the low ones up: same text as spelling
    # the whole value, across a change of the high digits and past 36 ** 12 (wraps).
    from gateway.flow.rrn import _base36

    for start in (1_700_000_000_000_000, 36**6 // 36 - 5, 36**11 - 3, 36**12 // 36 + 7):
        for node in (0, 35):
            gen = RrnGenerator(node, now_us=start)
            for i in range(20):
                now = start + i * 7
                expected_last = max(gen._last + 1, now)
                assert gen.next(now) == _base36(expected_last * 36 + node, 12)


@pytest.mark.anyio
async def test_recent_transactions_bounded_by_age_and_count() -> None:
    recent = RecentTransactions(window=10.0, max_entries=3)
    for i in range(5):
        recent.begin(key_of("2", "T", f"{i:06d}", "1127100000"), now=float(i))
    assert len(recent) == 3
    assert recent.get(key_of("2", "T", "000000", "1127100000"), now=5.0) is None
    assert recent.get(key_of("2", "T", "000004", "1127100000"), now=5.0) is not None
    assert recent.get(key_of("2", "T", "000004", "1127100000"), now=20.0) is None


def test_recent_transactions_evict_by_age_after_the_head_is_begun_again() -> None:
    recent = RecentTransactions(window=10.0)
    first = key_of("2", "T", "000001", "1127100000")
    second = key_of("2", "T", "000002", "1127100000")
    recent.begin(first, now=0.0)
    recent.begin(second, now=5.0)
    recent.begin(first, now=6.0)  # the head moves to the end: second is now the oldest
    recent.begin(key_of("2", "T", "000003", "1127100000"), now=15.5)  # second is past the window
    assert recent.get(second, now=15.5) is None
    assert len(recent) == 2
    assert recent.get(first, now=15.5) is not None


def test_log_redaction_masks_pans_and_hides_secrets() -> None:
    out = io.BytesIO()
    configure("info", stream=out)
    try:
        log = get_logger("test")
        log.info(
            "event",
            pan="4761730000000011",
            note="card 5413330000000019 declined",
            tpk="6D61BA0EAED6548F1A86086208A886AB",
            fields={"2": "4761730000000011", "52": "0123456789ABCDEF", "4": "000000000100"},
        )
    finally:
        structlog.reset_defaults()
    line = orjson.loads(out.getvalue().splitlines()[-1])
    text = out.getvalue().decode()
    for secret in ("4761730000000011", "5413330000000019", "6D61BA0EAED6548F", "0123456789ABCDEF"):
        assert secret not in text
    assert line["pan"] == "476173******0011"
    assert line["note"] == "card 541333******0019 declined"
    assert line["fields"]["4"] == "000000000100"


def host(issuer: str = "alpha") -> IssuerHost:
    data = demo_dataset()
    return IssuerHost(AccountBook.from_cards(issuer, data.cards, data.issuer_behaviour.synthetic))


def msg(mti: str, pan: str, amount: int, stan: str, code: str = "000000", **extra: str) -> Message:
    fields = {
        "2": pan,
        "3": code,
        "4": f"{amount:012d}",
        "7": "1127100000",
        "11": stan,
        "49": "156",
        **extra,
    }
    return Message(mti, fields)


def test_issuer_purchase_refund_inquiry_and_reversal_once() -> None:
    h = host()
    pan = "4761730000000011"
    acct = h.book.find(pan)
    assert acct is not None
    start = acct.balance
    ans = h.handle(msg("0200", pan, 500, "000001"), NOW)
    assert ans.mti == "0210"
    assert ans["39"] == "00"
    assert ans["54"] == balance_field("156", start - 500)
    assert h.handle(msg("0200", pan, 500, "000001"), NOW) is ans  # retransmission: same answer
    assert acct.balance == start - 500
    h.handle(msg("0200", pan, 200, "000002", "200000"), NOW)  # refund
    assert acct.balance == start - 300
    inquiry = h.handle(msg("0200", pan, 0, "000003", "310000"), NOW)
    assert inquiry["54"] == balance_field("156", start - 300)
    f90 = "0200" + "000001" + "1127100000" + "0" * 22
    assert h.handle(msg("0400", pan, 500, "000004", **{"90": f90}), NOW)["39"] == "00"
    assert h.handle(msg("0420", pan, 500, "000005", **{"90": f90}), NOW)["39"] == "00"
    assert acct.balance == start + 200
    assert h.reversals_applied == 1
    unknown = "0200" + "999999" + "1127100000" + "0" * 22
    assert h.handle(msg("0400", pan, 1, "000006", **{"90": unknown}), NOW)["39"] == "25"


def test_issuer_records_are_bounded_oldest_first() -> None:
    data = demo_dataset()
    book = AccountBook.from_cards("alpha", data.cards, data.issuer_behaviour.synthetic)
    h = IssuerHost(book, max_records=3)
    pan = "4761730000000011"
    acct = book.find(pan)
    assert acct is not None
    start = acct.balance
    first = h.handle(msg("0200", pan, 100, "000001"), NOW)
    assert h.handle(msg("0200", pan, 100, "000001"), NOW) is first  # replayed, not kept twice
    for stan in ("000002", "000003", "000004"):
        h.handle(msg("0200", pan, 100, stan), NOW)
    assert [k[1] for k in h.answers] == ["000002", "000003", "000004"]
    assert [k[0] for k in h.postings] == ["000002", "000003", "000004"]
    # the first is forgotten: its retransmission is a new purchase, now the newest record
    assert h.handle(msg("0200", pan, 100, "000001"), NOW) is not first
    assert acct.balance == start - 500
    assert [k[1] for k in h.answers] == ["000003", "000004", "000001"]


def test_issuer_hold_and_completion() -> None:
    h = host()
    pan = "4761730000000011"
    acct = h.book.find(pan)
    assert acct is not None
    start = acct.balance
    assert h.handle(msg("0100", pan, 1000, "000010"), NOW)["39"] == "00"
    assert acct.available == start - 1000
    assert acct.balance == start
    f90 = "0100" + "000010" + "1127100000" + "0" * 22
    assert h.handle(msg("0220", pan, 800, "000011", **{"90": f90}), NOW)["39"] == "00"
    assert acct.holds == {}
    assert acct.balance == start - 800


@pytest.mark.parametrize(
    ("pan", "rc"),
    [
        ("4761730000000029", "51"),
        ("4761730000000037", "54"),
        ("4761730000000045", "41"),
        ("4761739999999992", "00"),  # synthetic load-test range
        ("4761731111111111", "14"),
    ],
)
def test_issuer_declines(pan: str, rc: str) -> None:
    assert host().handle(msg("0200", pan, 1000, "000020"), NOW)["39"] == rc


def test_issuer_expiry_mismatch_is_54() -> None:
    ans = host().handle(msg("0200", "4761730000000011", 1, "000030", **{"14": "2701"}), NOW)
    assert ans["39"] == "54"
