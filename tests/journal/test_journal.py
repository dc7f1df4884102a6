"""The journal on both backends: durability, lookups, tamper evidence, retention, SAF."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import anyio
import pytest

from gateway.journal import (
    ArchiveFormatError,
    JournalClosedError,
    JournalEvent,
    JournalStateError,
    JournalValueError,
    NewAdvice,
    TxnState,
    UnsupportedBackendError,
)
from gateway.journal.archive import verify_archive
from gateway.journal.config import resolve_keys
from tests.journal.conftest import NOW, PAN, Backend, answered, purchase

pytestmark = pytest.mark.anyio


async def test_duplicate_survives_restart(backend: Backend) -> None:
    async with backend.open() as journal:
        await journal.append(purchase("t1", "000001"))
        await journal.append(answered("t1", "000001"))
    async with backend.open() as journal:
        later = NOW + timedelta(hours=23)
        dup = await journal.find_duplicate("TERM0001", "000001", "0314120000", later, mti="0201")
        assert dup is not None
        assert dup.txn_id == "t1"
        assert dup.state is TxnState.ANSWERED
        assert dup.response == {"t": "0210", "2": PAN, "11": "000001", "39": "00", "38": "A1B2C3"}
        assert dup.pan == PAN
        assert dup.pan_masked == "476173******0011"
        assert dup.amount == 1500
        assert dup.created_at == NOW
        # Outside the window, another class, another STAN: no match.
        too_late = NOW + timedelta(hours=24, seconds=1)
        assert await journal.find_duplicate("TERM0001", "000001", "0314120000", too_late) is None
        assert (
            await journal.find_duplicate("TERM0001", "000001", "0314120000", later, mti="0400")
            is None
        )
        assert await journal.find_duplicate("TERM0001", "000002", "0314120000", later) is None


async def test_sensitive_fields_are_never_stored(backend: Backend) -> None:
    async with backend.open() as journal:
        await journal.append(purchase("t1", "000001"))
        stored = await journal.get("t1")
    assert stored is not None
    assert stored.request is not None
    assert set(stored.request) == {"t", "2", "4", "11"}  # 35, 52, 53 stripped
    assert "pan=" not in repr(stored)
    assert PAN not in repr(stored)


async def test_original_in_flight_and_settlement(backend: Backend) -> None:
    async with backend.open() as journal:
        for i, (state, rc, proc, amount) in enumerate(
            [
                (TxnState.ANSWERED, "00", "000000", 1000),  # counted
                (TxnState.ANSWERED, "00", "010000", 2000),  # cash: counted
                (TxnState.ANSWERED, "51", "000000", 4000),  # declined
                (TxnState.REVERSED, "00", "000000", 8000),  # reversed
                (TxnState.STOOD_IN, "00", "200000", 300),  # refund (credit)
                (TxnState.SENT_TO_ISSUER, None, "000000", 500),  # in flight
            ]
        ):
            txn, stan = f"t{i}", f"{i + 1:06d}"
            await journal.append(purchase(txn, stan, processing_code=proc, amount=amount))
            if state is TxnState.SENT_TO_ISSUER:
                await journal.append(JournalEvent(txn_id=txn, state=state, at=NOW))
                continue
            await journal.append(answered(txn, stan, rc=rc or "00"))
            if state is not TxnState.ANSWERED:
                await journal.append(JournalEvent(txn_id=txn, state=state, at=NOW))
        # A reversal shares the terminal and points at its original with field 90.
        await journal.append(
            JournalEvent(
                txn_id="rev1",
                state=TxnState.RECEIVED,
                at=NOW,
                mti="0400",
                terminal_id="TERM0001",
                stan="000004",
                transmission="0314120000",
                orig_mti="0200",
                orig_stan="000004",
                orig_transmission="0314120000",
            )
        )
        await journal.append(purchase("other-day", "000099", at=NOW - timedelta(days=1)))
        await journal.append(answered("other-day", "000099", at=NOW - timedelta(days=1)))

        original = await journal.find_original("TERM0001", "000004", "0314120000")
        assert original is not None
        assert original.txn_id == "t3"
        assert (
            await journal.find_original("TERM0001", "000004", "0314120000", orig_mti="0100") is None
        )
        assert await journal.find_original("TERM0002", "000004", "0314120000") is None

        flying = await journal.in_flight()
        assert [t.txn_id for t in flying] == ["t5"]
        assert flying[0].request is not None
        assert flying[0].pan == PAN

        totals = await journal.settlement(NOW.date())
        assert [t.as_dict() for t in totals] == [
            {
                "day": "2026-03-14",
                "issuer_id": "alpha",
                "currency": "156",
                "debit_count": 2,
                "debit_amount": 3000,
                "credit_count": 1,
                "credit_amount": 300,
            }
        ]
        by_pan = await journal.find_by_pan(PAN, NOW - timedelta(days=2), NOW + timedelta(1))
        assert len(by_pan) == 7  # the reversal carries no PAN


async def test_concurrent_appends_are_group_committed_and_chained(backend: Backend) -> None:
    async with backend.open() as journal:
        seqs: list[int] = []

        async def writer(i: int) -> None:
            seqs.append(await journal.append(purchase(f"c{i}", f"{i:06d}")))

        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(writer, i)
        assert sorted(seqs) == list(range(1, 201))
        stats = journal.statistics()
        assert stats.ops == 200
        assert stats.batches < 200  # records shared commits
        result = await journal.verify()
        assert result.ok
        assert result.count == 200
        assert result.last_seq == 200
    async with backend.open() as journal:  # every acknowledged record survived the close
        assert (await journal.verify()).count == 200
        assert len(await journal.in_state(TxnState.RECEIVED)) == 200


async def test_verify_reports_edited_record(backend: Backend) -> None:
    async with backend.open() as journal:
        for i in range(5):
            await journal.append(purchase(f"t{i}", f"{i:06d}"))
        assert (await journal.verify()).ok
    await backend.tamper("UPDATE events SET amount = ? WHERE seq = ?", 1, 3)
    async with backend.open() as journal:
        result = await journal.verify()
        assert not result.ok
        assert result.broken_seq == 3
        assert result.reason is not None
        assert "altered" in result.reason
        assert result.count == 2


async def test_verify_reports_deleted_and_truncated_rows(backend: Backend) -> None:
    async with backend.open() as journal:
        for i in range(5):
            await journal.append(purchase(f"t{i}", f"{i:06d}"))
    await backend.tamper("DELETE FROM events WHERE seq = ?", 2)
    async with backend.open() as journal:
        result = await journal.verify()
        assert (result.ok, result.broken_seq) == (False, 2)
        assert result.reason is not None
        assert "gap" in result.reason
    await backend.tamper("DELETE FROM events WHERE seq >= ?", 2)
    async with backend.open() as journal:
        result = await journal.verify()
        assert (result.ok, result.broken_seq, result.count) == (False, 2, 1)
        assert result.reason is not None
        assert "truncated" in result.reason


async def test_archive_and_restore_round_trip(backend: Backend, tmp_path: Path) -> None:
    old = NOW - timedelta(days=2000)
    async with backend.open() as journal:
        for i in range(3):
            await journal.append(purchase(f"old{i}", f"{i:06d}", at=old))
            await journal.append(answered(f"old{i}", f"{i:06d}", at=old))
        for i in range(2):
            await journal.append(purchase(f"new{i}", f"{i + 10:06d}"))
        out = tmp_path / "archive"
        result = await journal.archive(out, now=NOW)  # default retention: 1826 days
        assert (result.count, result.first_seq, result.last_seq) == (6, 1, 6)
        assert result.txns_removed == 3
        assert result.path is not None
        assert await journal.get("old0") is None
        check = await journal.verify()  # the chain continues from the anchor
        assert check.ok
        assert (check.first_seq, check.count) == (7, 2)
        # Nothing left to archive: no empty file.
        assert (await journal.archive(out, now=NOW)).path is None

        keys = resolve_keys(backend.config())
        alone, info = verify_archive(Path(result.path), keys.chain)
        assert alone.ok
        assert alone.count == 6
        assert info is not None

        restored = await journal.restore(result.path)
        assert restored.count == 6
        full = await journal.verify()
        assert full.ok
        assert (full.first_seq, full.count) == (1, 8)
        back = await journal.get("old1")
        assert back is not None
        assert back.state is TxnState.ANSWERED
        assert back.created_at == old
        assert back.response is not None
        assert back.response["39"] == "00"
        with pytest.raises(JournalStateError, match="already restored"):
            await journal.restore(result.path)


async def test_archive_refuses_a_broken_chain(backend: Backend, tmp_path: Path) -> None:
    old = NOW - timedelta(days=2000)
    async with backend.open() as journal:
        for i in range(3):
            await journal.append(purchase(f"old{i}", f"{i:06d}", at=old))
    await backend.tamper("UPDATE events SET stan = ? WHERE seq = ?", "999999", 2)
    async with backend.open() as journal:
        with pytest.raises(JournalStateError, match="chain broken at seq 2"):
            await journal.archive(tmp_path, now=NOW)
        assert [p async for p in anyio.Path(tmp_path).glob("*.gz")] == []
        assert not (await journal.verify()).ok


async def test_restore_rejects_an_edited_archive(backend: Backend, tmp_path: Path) -> None:
    import gzip

    old = NOW - timedelta(days=2000)
    async with backend.open() as journal:
        await journal.append(purchase("old0", "000001", at=old))
        await journal.append(purchase("old1", "000002", at=old))
        result = await journal.archive(tmp_path, now=NOW)
        assert result.path is not None
        path = anyio.Path(result.path)
        text = gzip.decompress(await path.read_bytes())
        await path.write_bytes(gzip.compress(text.replace(b'"amount":1500', b'"amount":1501', 1)))
        with pytest.raises(ArchiveFormatError, match="seq 1"):
            await journal.restore(str(path))


async def test_rebuild_index_from_events(backend: Backend) -> None:
    async with backend.open() as journal:
        await journal.append(purchase("t1", "000001"))
        await journal.append(answered("t1", "000001"))
        before = await journal.get("t1")
        await backend.tamper("DELETE FROM txns")
        assert await journal.get("t1") is None
        assert await journal.rebuild_index() == 2
        assert await journal.get("t1") == before


async def test_saf_queue_order_survival_and_metrics(backend: Backend) -> None:
    def advice(issuer: str, txn: str, minutes: int = 0) -> NewAdvice:
        return NewAdvice(
            issuer_id=issuer,
            kind="0420",
            txn_id=txn,
            fields={"t": "0420", "2": PAN, "11": "000001", "52": "00FF", "90": "0200000001"},
            created_at=NOW + timedelta(minutes=minutes),
        )

    async with backend.open() as journal:
        first = await journal.enqueue_advice(advice("alpha", "a1"))
        second = await journal.enqueue_advice(advice("alpha", "a2", 1))
        await journal.enqueue_advice(advice("beta", "b1", 2))
        seq, third = await journal.append_with_advice(
            JournalEvent(txn_id="a3", state=TxnState.TIMED_OUT, at=NOW, response_code="91"),
            advice("alpha", "a3", 3),
        )
        assert seq == 1
        assert first < second < third
    async with backend.open() as journal:
        later = NOW + timedelta(minutes=10)
        due = await journal.next_due("alpha", later)
        assert [a.txn_id for a in due] == ["a1", "a2", "a3"]
        assert due[0].fields == {"t": "0420", "2": PAN, "11": "000001", "90": "0200000001"}
        assert due[0].attempts == 0
        assert await journal.reschedule(first, later + timedelta(seconds=30), 1, error="timeout")
        assert [a.txn_id for a in await journal.next_due("alpha", later)] == ["a2", "a3"]
        assert [a.txn_id for a in await journal.next_due("alpha", later, limit=1)] == ["a2"]
        stored = await journal.get_advice(first)
        assert stored is not None
        assert (stored.attempts, stored.last_error) == (1, "timeout")
        depth = await journal.saf_depth("alpha")
        assert depth.depth == 3
        assert depth.oldest_age(later) == timedelta(minutes=10)
        assert await journal.ack(second)
        assert not await journal.ack(second)
        assert not await journal.reschedule(second, later, 2)
        assert [(d.issuer_id, d.depth) for d in await journal.saf_depths()] == [
            ("alpha", 2),
            ("beta", 1),
        ]
        assert (await journal.saf_depth("gamma")).depth == 0
        timed_out = await journal.get("a3")
        assert timed_out is not None
        assert timed_out.state is TxnState.TIMED_OUT


async def test_bad_record_fails_alone(backend: Backend) -> None:
    """One record that cannot commit does not fail the others of its batch."""
    async with backend.open() as journal:
        from gateway.journal.groupcommit import Op, OpKind

        committer = journal._require()
        results: list[object] = []

        def boom_sync(con: object) -> None:
            raise RuntimeError("disk on fire")

        async def boom_async(conn: object) -> None:
            raise RuntimeError("disk on fire")

        async def good(i: int) -> None:
            results.append(await journal.append(purchase(f"g{i}", f"{i:06d}")))

        async def bad() -> None:
            body = boom_sync if backend.name == "sqlite" else boom_async
            try:
                await committer.submit(Op(OpKind.CUSTOM, body))
            except Exception as exc:
                results.append(type(exc).__name__)

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(good, i)
            tg.start_soon(bad)
            for i in range(20, 40):
                tg.start_soon(good, i)
        assert results.count("JournalWriteError") == 1
        assert sorted(r for r in results if isinstance(r, int)) == list(range(1, 41))
        assert (await journal.verify()).ok


async def test_closed_and_invalid_use(backend: Backend) -> None:
    journal = backend.open()
    with pytest.raises(JournalClosedError):
        await journal.append(purchase("t1", "000001"))
    with pytest.raises(JournalValueError):
        purchase("t1", "000001", pan="4761-7300")
    with pytest.raises(JournalValueError):
        JournalEvent(txn_id="t1", state=TxnState.RECEIVED, at=NOW.replace(tzinfo=None))

    async def failing_body() -> None:
        async with backend.open() as journal:
            await journal.append(purchase("t1", "000001"))
            raise KeyError("boom")

    with pytest.raises(KeyError):  # the body's error is not wrapped in an ExceptionGroup
        await failing_body()
    async with backend.open() as journal:  # ... and what was appended before it is kept
        assert await journal.get("t1") is not None


async def test_postgres_refuses_trio(anyio_backend: tuple[str, dict[str, object]]) -> None:
    if anyio_backend[0] != "trio":
        pytest.skip("only meaningful on trio")
    from gateway.journal import open_journal
    from gateway.journal.config import config_from_mapping
    from tests.journal.conftest import key_table

    config = config_from_mapping(
        {**key_table(), "backend": "postgres", "dsn": "postgresql://127.0.0.1:1/none"}
    )
    with pytest.raises(UnsupportedBackendError, match="asyncio"):
        async with open_journal(config):
            pass


async def test_claim_lets_one_of_two_senders_take_an_advice(backend: Backend) -> None:
    """Two nodes' SAF senders read the same due advice; exactly one claim wins, and the
    advice's next attempt moves to the lease's end (a dead holder only delays it)."""
    new = NewAdvice(
        issuer_id="alpha",
        kind="0420",
        txn_id="c1",
        fields={"t": "0420", "2": PAN, "11": "000001", "90": "0200000001"},
        created_at=NOW,
    )
    async with backend.open() as journal, backend.open() as other:
        advice_id = await journal.enqueue_advice(new)
        seen_here = (await journal.next_due("alpha", NOW))[0]
        seen_there = (await other.next_due("alpha", NOW))[0]
        lease = NOW + timedelta(seconds=11)
        assert await journal.claim(seen_here, lease)
        assert not await other.claim(seen_there, lease + timedelta(seconds=1))
        assert await journal.next_due("alpha", NOW) == []  # leased: not due before its end
        held = await other.get_advice(advice_id)
        assert held is not None
        assert held.next_attempt_at == lease
        assert await other.claim(held, lease + timedelta(seconds=5))  # read again: fine
        assert await journal.ack(advice_id)
        assert not await other.claim(held, lease)  # acknowledged meanwhile
