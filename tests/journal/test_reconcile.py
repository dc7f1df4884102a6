"""Reconciliation: the pure comparison (every category), the posting file reader, the paged
read of a day (SQLite and PostgreSQL) and ``gateway journal reconcile`` on SQLite files."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from gateway.journal import JournalEvent, StoredTxn, TxnState, open_journal
from gateway.journal.cli import run
from gateway.journal.config import load_config, node_path
from gateway.journal.reconcile import (
    AMOUNT_DIFFERS,
    CATEGORIES,
    DUPLICATE_AT_ISSUER,
    ISSUER_ONLY,
    MATCHED,
    NOT_POSTED,
    REVERSED_ISSUER_ONLY,
    REVERSED_SWITCH_ONLY,
    SWITCH_ONLY,
    IssuerPosting,
    PostingFileError,
    Reconciler,
    SwitchRecord,
    read_postings,
    reconcile,
)
from protocols.postings import POSTING_COLUMNS
from tests.journal.conftest import NOW, PAN, Backend, purchase
from tests.journal.test_cli import _write_conf

DAY = NOW.date()
MASKED = "476173******0011"


def posting(stan: str, amount: int = 1500, **extra: Any) -> IssuerPosting:
    values: dict[str, Any] = {
        "mti": "0200",
        "stan": stan,
        "transmission": "0314120000",
        "kind": "00",
        "amount": amount,
        "auth_code": "100001",
        "approved": True,
        "reversed": False,
        "pan_masked": MASKED,
    }
    values.update(extra)
    return IssuerPosting(**values)


def record(stan: str | None, amount: int = 1500, **extra: Any) -> SwitchRecord:
    values: dict[str, Any] = {
        "rrn": f"RRN{stan}",
        "created": DAY,
        "state": "answered",
        "response_code": "00",
        "amount": amount,
        "posted": True,
        "stan": stan,
        "transmission": None if stan is None else "0314120000",
        "issuer_mti": "0200",
        "pan_masked": MASKED,
    }
    values.update(extra)
    return SwitchRecord(**values)


def declined(stan: str) -> SwitchRecord:
    return record(stan, response_code="05", posted=False)


def test_every_category() -> None:
    postings = [
        posting("000001"),  # matched
        posting("000002", approved=False),  # declined on both: matched
        posting("000003", reversed=True, amount=0),  # reversed on both: matched
        posting("000004", amount=1400),  # amount differs
        posting("000005"),  # approved at the issuer, timed out at the switch
        posting("000006"),  # unknown at the switch
        posting("000007", approved=False),  # approved at the switch, declined at the issuer
        posting("000008"),  # reversed at the switch only
        posting("000009", reversed=True, amount=0),  # reversed at the issuer only
        posting("000010", approved=False),  # declined, unknown at the switch: not posted
        posting("000014"),  # listed twice by the issuer (the later line is compared)
        posting("000014"),
    ]
    switch = [
        record("000001"),
        declined("000002"),
        record("000003", state="reversed", posted=False),
        record("000004"),
        record("000005", state="timed_out", response_code="91", posted=False),
        record("000007"),
        record("000008", state="reversed", posted=False),
        record("000009"),
        record("000011", state="stood_in"),  # stand-in, 0120 not delivered: switch only
        record("000012", state="timed_out", response_code="91", posted=False),  # never arrived
        record("000013"),  # unknown at the issuer
        record(None),  # approved but never sent
        record("000014"),
    ]
    report = reconcile(DAY, "alpha", postings, switch)
    assert report.counts == {
        MATCHED: 4,
        NOT_POSTED: 2,
        AMOUNT_DIFFERS: 1,
        ISSUER_ONLY: 2,
        SWITCH_ONLY: 4,
        REVERSED_SWITCH_ONLY: 1,
        REVERSED_ISSUER_ONLY: 1,
        DUPLICATE_AT_ISSUER: 1,
    }
    assert set(report.counts) == set(CATEGORIES)
    assert not report.ok
    by_stan = {(d.issuer_stan, d.category): d for d in report.exceptions}
    assert len(by_stan) == len(report.exceptions) == 10
    assert by_stan[("000014", DUPLICATE_AT_ISSUER)].reason == "posted twice by the issuer"

    differs = by_stan[("000004", AMOUNT_DIFFERS)]
    assert (differs.switch_amount, differs.issuer_amount) == (1500, 1400)
    assert (differs.rrn, differs.pan_masked, differs.issuer_transmission) == (
        "RRN000004",
        MASKED,
        "0314120000",
    )
    late = by_stan[("000005", ISSUER_ONLY)]
    assert "reversal (0420) is queued" in late.reason
    assert (late.switch_state, late.switch_response_code, late.issuer_state) == (
        "timed_out",
        "91",
        "approved",
    )
    unknown = by_stan[("000006", ISSUER_ONLY)]
    assert (unknown.rrn, unknown.switch_amount, unknown.reason) == (
        None,
        None,
        "unknown at the switch",
    )
    assert by_stan[("000007", SWITCH_ONLY)].issuer_state == "declined"
    assert by_stan[("000008", REVERSED_SWITCH_ONLY)].switch_state == "reversed"
    assert by_stan[("000009", REVERSED_ISSUER_ONLY)].issuer_state == "reversed"
    assert "0120" in by_stan[("000011", SWITCH_ONLY)].reason
    assert by_stan[("000013", SWITCH_ONLY)].issuer_state == "unknown"
    assert by_stan[(None, SWITCH_ONLY)].reason == "approved at the switch, never sent to the issuer"
    dumped = json.dumps(report.as_dict())
    assert PAN not in dumped


def test_all_matched_is_ok() -> None:
    report = reconcile(DAY, "alpha", [posting("000001")], [record("000001")])
    assert report.ok
    assert report.as_dict()["counts"][MATCHED] == 1
    assert report.as_dict()["exceptions"] == []


def test_a_posting_the_issuer_lists_twice_is_an_exception() -> None:
    report = reconcile(
        DAY, "alpha", [posting("000001"), posting("000001", 900)], [record("000001", 900)]
    )
    assert not report.ok
    counts = report.as_dict()["counts"]
    assert (counts[DUPLICATE_AT_ISSUER], counts[MATCHED]) == (1, 1)  # the later line matched
    (dup,) = report.as_dict()["exceptions"]
    assert (dup["category"], dup["issuer_amount"], dup["rrn"]) == (DUPLICATE_AT_ISSUER, 1500, None)


def test_the_day_boundary() -> None:
    """A pair is in scope when either side is on the day; the margin's rows that meet
    nothing of the day are left out, and so are other days' postings."""
    before = DAY - timedelta(days=1)
    postings = [
        posting("000001", transmission="0314000000"),  # created 23:59:59.9 the day before
        posting("000002", transmission="0313235900"),  # the day before, its record too
        posting("000003", transmission="0315000100"),  # next day, unknown: not this day's
        posting("000004", transmission="0314235959"),  # created just after midnight
    ]
    switch = [
        record("000001", created=before, transmission="0314000000"),
        record("000002", created=before, transmission="0313235900", amount=1),
        record("000005", created=before),  # the margin, no posting: not this day's
        record("000004", created=DAY + timedelta(days=1), transmission="0314235959"),
    ]
    report = reconcile(DAY, "alpha", postings, switch)
    assert report.ok
    assert report.counts[MATCHED] == 2
    assert sum(report.counts.values()) == 2


def test_postings_come_first() -> None:
    rec = Reconciler(DAY, "alpha")
    rec.add_switch(record("000001"))
    with pytest.raises(RuntimeError):
        rec.add_posting(posting("000001"))


def _stored(**extra: Any) -> StoredTxn:
    values: dict[str, Any] = {
        "txn_id": "RRN1",
        "state": TxnState.ANSWERED,
        "created_at": NOW,
        "updated_at": NOW,
        "last_seq": 1,
        "mti": "0200",
        "amount": 1500,
        "rrn": "RRN1",
        "response_code": "00",
        "pan_masked": MASKED,
        "request": {"t": "0200", "11": "000042", "7": "0314120001", "32": "123456"},
    }
    values.update(extra)
    return StoredTxn(**values)


def test_switch_record_of_a_journal_row() -> None:
    sent = SwitchRecord.of(_stored())
    assert sent is not None
    assert (sent.key, sent.issuer_mti, sent.posted) == (("000042", "0314120001"), "0200", True)
    # Stand-in: the 0120 is the request payload; the issuer posts it under its own 11/7.
    advice = {"t": "0120", "11": "000077", "7": "0314120005", "32": "123456", "90": "0200"}
    stood = SwitchRecord.of(_stored(state=TxnState.STOOD_IN, request=advice))
    assert stood is not None
    assert (stood.key, stood.posted) == (("000077", "0314120005"), True)
    advised = SwitchRecord.of(_stored(state=TxnState.ADVISED, request=advice))
    assert advised is not None
    assert advised.posted
    # The terminal's request (no field 32): never sent to the issuer.
    local = SwitchRecord.of(_stored(request={"t": "0200", "11": "000001", "7": "0314120000"}))
    assert local is not None
    assert local.key is None
    timed_out = SwitchRecord.of(_stored(state=TxnState.TIMED_OUT, response_code="91"))
    assert timed_out is not None
    assert not timed_out.posted
    reversed_ = SwitchRecord.of(_stored(state=TxnState.REVERSED))
    assert reversed_ is not None
    assert not reversed_.posted
    # Reversals (and anything but 01xx/02xx) post nothing of their own at the issuer.
    assert SwitchRecord.of(_stored(mti="0400")) is None
    assert SwitchRecord.of(_stored(mti=None)) is None


def write_postings(path: Path, rows: list[list[str]]) -> Path:
    lines = [",".join(POSTING_COLUMNS), *(",".join(r) for r in rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = ["0200", "000001", "0314120000", "00", "1500", "100001", "1", "0", MASKED]


def test_read_postings(tmp_path: Path) -> None:
    clear = [*GOOD[:8], PAN]  # an issuer that sends clear PANs: masked on reading
    path = write_postings(tmp_path / "p.csv", [GOOD, clear])
    first, second = list(read_postings(path))
    assert first == posting("000001", auth_code="100001")
    assert second.pan_masked == MASKED


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ([*GOOD[:1], "12345", *GOOD[2:]], "line 2: stan"),
        ([*GOOD[:2], "031412", *GOOD[3:]], "line 2: transmission"),
        ([*GOOD[:4], "-1", *GOOD[5:]], "line 2: amount"),
        ([*GOOD[:6], "yes", *GOOD[7:]], "line 2: approved"),
        ([*GOOD[:5], "ABC#12", *GOOD[6:]], "line 2: auth_code"),
        (GOOD[:5], "line 2: wrong number of columns"),
        (["02x0", *GOOD[1:]], "line 2: mti"),
    ],
)
def test_bad_posting_lines(tmp_path: Path, row: list[str], message: str) -> None:
    path = write_postings(tmp_path / "p.csv", [row])
    with pytest.raises(PostingFileError, match=message):
        list(read_postings(path))


def test_bad_posting_files(tmp_path: Path) -> None:
    with pytest.raises(PostingFileError, match="cannot read"):
        list(read_postings(tmp_path / "missing.csv"))
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(PostingFileError, match="missing mti"):
        list(read_postings(other))
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PostingFileError, match="not ASCII"):
        list(read_postings(binary))


def sent(txn_id: str, stan: str, at: datetime, *, issuer: str = "alpha") -> JournalEvent:
    """A purchase as sent to the issuer: the request payload is the issuer's message."""
    issuer_message = {"t": "0200", "2": PAN, "4": "000000001500", "11": stan, "7": "0314120000"}
    event = purchase(txn_id, stan, at=at, issuer_id=issuer, request=issuer_message | {"32": "1"})
    return dataclasses.replace(event, state=TxnState.SENT_TO_ISSUER)


def outcome(
    txn_id: str, at: datetime, state: TxnState = TxnState.ANSWERED, rc: str = "00"
) -> JournalEvent:
    return JournalEvent(txn_id=txn_id, state=state, at=at, response_code=rc, rrn=txn_id)


@pytest.mark.anyio
async def test_paged_read_of_a_day(backend: Backend) -> None:
    async with backend.open() as journal:
        for i in range(5):
            await journal.append(sent(f"T{i}", f"00000{i}", NOW + timedelta(seconds=i % 2)))
        await journal.append(sent("B1", "000009", NOW, issuer="beta"))
        await journal.append(sent("Y1", "000008", NOW - timedelta(days=1)))
        start = datetime.combine(DAY, datetime.min.time(), tzinfo=UTC)
        pages = [
            [t.txn_id for t in page]
            async for page in journal.txn_pages(
                start, start + timedelta(days=1), issuer_id="alpha", page_size=2
            )
        ]
        assert pages == [["T0", "T2"], ["T4", "T1"], ["T3"]]  # by created time, then id
        everything = [
            t.txn_id
            async for page in journal.txn_pages(start, start + timedelta(days=1), page_size=3)
            for t in page
        ]
        assert sorted(everything) == ["B1", "T0", "T1", "T2", "T3", "T4"]
        exact = [page async for page in journal.txn_pages(start, start, page_size=2)]
        assert exact == []
        first = [page async for page in journal.txn_pages(start, NOW, page_size=1)]
        assert first == []


def test_cli_reconcile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = _write_conf(tmp_path)

    async def fill() -> None:
        async with open_journal(load_config(conf)) as journal:
            await journal.append(sent("A1", "000001", NOW))
            await journal.append(outcome("A1", NOW))
            await journal.append(sent("A2", "000002", NOW))
            await journal.append(outcome("A2", NOW, rc="51"))
            await journal.append(sent("A3", "000003", NOW))
            await journal.append(outcome("A3", NOW, TxnState.TIMED_OUT, rc="91"))

    anyio.run(fill)
    day = DAY.isoformat()
    good = [
        GOOD,
        ["0200", "000002", "0314120000", "00", "1500", "", "0", "0", MASKED],
    ]
    file = write_postings(tmp_path / "alpha.csv", good)
    args = ["reconcile", "--conf", str(conf), "--date", day, "--issuer", "alpha"]
    assert run([*args, "--file", str(file)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    assert (report["counts"][MATCHED], report["counts"][NOT_POSTED]) == (2, 1)

    # The timed-out one was approved at the issuer (its 0420 not yet acknowledged).
    late = ["0200", "000003", "0314120000", "00", "1500", "100003", "1", "0", PAN]
    file = write_postings(tmp_path / "alpha.csv", [*good, late])
    assert run([*args, "--file", str(file)]) == 1
    out = capsys.readouterr().out
    assert PAN not in out
    report = json.loads(out)
    (difference,) = report["exceptions"]
    assert difference["category"] == ISSUER_ONLY
    assert (difference["rrn"], difference["pan_masked"]) == ("A3", MASKED)
    assert (difference["switch_amount"], difference["issuer_amount"]) == (1500, 1500)
    assert (difference["switch_state"], difference["issuer_state"]) == ("timed_out", "approved")

    # Another issuer's file against alpha's... as beta: nothing of beta at the switch.
    beta = ["reconcile", "--conf", str(conf), "--date", day, "--issuer", "beta"]
    assert run([*beta, "--file", str(file)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["counts"][ISSUER_ONLY] == 2

    # Bad input: exit 2 with a message, never a traceback.
    bad = write_postings(tmp_path / "bad.csv", [[*GOOD[:4], "x", *GOOD[5:]]])
    assert run([*args, "--file", str(bad)]) == 2
    assert "line 2: amount" in capsys.readouterr().err
    assert run([*args, "--file", str(tmp_path / "none.csv")]) == 2
    assert "cannot read the posting file" in capsys.readouterr().err
    assert run(["reconcile", "--conf", str(conf), "--date", day, "--file", str(file)]) == 2
    assert run([*args[:-2], "--date", "soon", "--issuer", "alpha", "--file", str(file)]) == 2


def test_cli_reconcile_over_per_node_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = _write_conf(tmp_path)
    base = load_config(conf)

    async def fill(node: int, stan: str) -> None:
        config = dataclasses.replace(base, path=node_path(base.path, node))
        async with open_journal(config) as journal:
            await journal.append(sent(f"N{node}", stan, NOW))
            await journal.append(outcome(f"N{node}", NOW))

    anyio.run(fill, 0, "000001")
    anyio.run(fill, 1, "000002")
    rows = [GOOD, ["0200", "000002", "0314120000", "00", "1500", "100002", "1", "0", MASKED]]
    file = write_postings(tmp_path / "alpha.csv", rows)
    args = ["reconcile", "--conf", str(conf), "--date", DAY.isoformat(), "--issuer", "alpha"]
    assert run([*args, "--file", str(file)]) == 0
    assert json.loads(capsys.readouterr().out)["counts"][MATCHED] == 2
    # One node alone: the other node's transaction is unknown to it.
    assert run([*args, "--file", str(file), "--node", "1"]) == 1
    (difference,) = json.loads(capsys.readouterr().out)["exceptions"]
    assert (difference["category"], difference["issuer_stan"]) == (ISSUER_ONLY, "000001")


def test_report_day_is_the_requested_one() -> None:
    assert reconcile(date(2026, 1, 2), "alpha", [], []).as_dict()["day"] == "2026-01-02"
