"""Business dates in the journal, on every backend: stored with the transaction, kept by its
later events, settled by business date or by calendar day, and added to a journal written
before the column existed (whose chain keeps verifying)."""

from __future__ import annotations

import gzip
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from gateway.journal import JournalEvent, JournalValueError, SettlementTotal, TxnState
from gateway.journal.archive import verify_archive
from gateway.journal.config import resolve_keys
from protocols.business_day import BusinessCalendar
from tests.journal.conftest import Backend, answered, purchase

pytestmark = pytest.mark.anyio

SHANGHAI = BusinessCalendar.of("23:00", "Asia/Shanghai")
CUTOVER = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)  # 23:00 in Shanghai
BEFORE = CUTOVER - timedelta(seconds=1)
AFTER = CUTOVER + timedelta(seconds=1)


def _purchase(txn: str, stan: str, at: datetime, amount: int) -> JournalEvent:
    return purchase(
        txn, stan, at=at, amount=amount, business_date=SHANGHAI.business_date(at), transmission=
        at.strftime("%m%d%H%M%S"),
    )  # fmt: skip


def _totals(rows: list[SettlementTotal]) -> list[tuple[str, int, int]]:
    return [(t.day.isoformat(), t.debit_count, t.debit_amount) for t in rows]


async def test_settlement_by_business_date_splits_at_the_cutover(backend: Backend) -> None:
    async with backend.open() as journal:
        for txn, stan, at, amount in [
            ("b1", "000001", BEFORE, 100),
            ("b2", "000002", CUTOVER - timedelta(hours=10), 200),
            ("a1", "000003", CUTOVER, 400),
            ("a2", "000004", AFTER, 800),
        ]:
            await journal.append(_purchase(txn, stan, at, amount))
            await journal.append(answered(txn, stan, at=at))
        # A later event without a date keeps the transaction's (the index's COALESCE).
        await journal.append(JournalEvent(txn_id="b1", state=TxnState.ADVISED, at=AFTER))
        stored = await journal.get("b1")
        assert stored is not None
        assert stored.business_date == date(2026, 12, 7)
        stored = await journal.get("a1")
        assert stored is not None
        assert stored.business_date == date(2026, 12, 8)

        # All four happened on 7 December UTC.
        assert _totals(await journal.settlement(date(2026, 12, 7))) == [("2026-12-07", 4, 1500)]
        by_business = await journal.settlement(date(2026, 12, 7), by="business")
        assert _totals(by_business) == [("2026-12-07", 2, 300)]
        by_business = await journal.settlement(date(2026, 12, 8), by="business")
        assert _totals(by_business) == [("2026-12-08", 2, 1200)]
        assert await journal.settlement(date(2026, 12, 8)) == []
        assert (await journal.verify()).ok


async def test_a_journal_from_before_the_column_gets_it_and_keeps_verifying(
    backend: Backend,
) -> None:
    async with backend.open() as journal:
        await journal.append(purchase("old", "000001", at=BEFORE))
        await journal.append(answered("old", "000001", at=BEFORE))
    # The tables as they were written before business dates existed.
    await backend.tamper("ALTER TABLE events DROP COLUMN business_date")
    await backend.tamper("ALTER TABLE txns DROP COLUMN business_date")
    async with backend.open() as journal:
        result = await journal.verify()
        assert result.ok
        assert result.count == 2
        await journal.append(_purchase("new", "000002", AFTER, 700))
        await journal.append(answered("new", "000002", at=AFTER))
        assert (await journal.verify()).ok
        old = await journal.get("old")
        assert old is not None
        assert old.business_date is None
        assert old.state is TxnState.ANSWERED
        by_business = await journal.settlement(date(2026, 12, 8), by="business")
        assert _totals(by_business) == [("2026-12-08", 1, 700)]
        assert await journal.rebuild_index() == 4  # events replayed
        new = await journal.get("new")
        assert new is not None
        assert new.business_date == date(2026, 12, 8)


def test_a_business_date_is_a_date() -> None:
    with pytest.raises(JournalValueError, match="business_date"):
        purchase("x", "000001", business_date=datetime(2026, 12, 7, tzinfo=UTC))


async def test_archives_keep_the_date_and_older_ones_without_it_still_verify(
    backend: Backend, tmp_path: Path
) -> None:
    old = BEFORE - timedelta(days=2000)
    async with backend.open() as journal:
        await journal.append(_purchase("dated", "000001", old, 100))
        await journal.append(purchase("undated", "000002", at=old))
        await journal.append(_purchase("live", "000003", AFTER, 100))
        result = await journal.archive(tmp_path / "a", now=AFTER)
        assert result.path is not None
        assert result.count == 2
        path = Path(result.path)
        keys = resolve_keys(backend.config())
        assert verify_archive(path, keys.chain)[0].ok
        # The same archive as written before the column: no business_date key where none.
        stripped, dates = _without_null_dates(path, tmp_path / "stripped.jsonl.gz")
        assert dates == ["2021-06-16", None]
        assert verify_archive(stripped, keys.chain)[0].ok
        restored = await journal.restore(result.path)
        assert restored.count == 2
        dated = await journal.get("dated")
        assert dated is not None
        assert dated.business_date == date(2021, 6, 16)


def _without_null_dates(path: Path, out: Path) -> tuple[Path, list[object]]:
    """``path`` rewritten to ``out`` without the ``business_date`` keys whose value is null;
    and the dates of its rows."""
    lines = [orjson.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]
    kept = [{k: v for k, v in o.items() if k != "business_date" or v is not None} for o in lines]
    out.write_bytes(gzip.compress(b"".join(orjson.dumps(o) + b"\n" for o in kept)))
    return out, [o.get("business_date") for o in lines if "seq" in o]
