"""The journal's hot path stays compatible: chain bytes, row layout, key checks, group commit."""

from __future__ import annotations

import hmac
import os
import pickle
from datetime import UTC, date, datetime, timedelta, timezone

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.journal import JournalEvent, JournalValueError, TxnState
from gateway.journal.chain import DATA_COLUMNS, Chain, canonical
from gateway.journal.errors import JournalClosedError, JournalWriteError
from gateway.journal.groupcommit import GroupCommitter, Op, OpKind
from gateway.journal.keyed import HmacSha256
from gateway.journal.protect import DataProtector
from gateway.journal.rows import aad, defer_event, from_us, prepare_deferred, prepare_event, to_us
from gateway.journal.sensitive import strip_sensitive
from tests.journal.conftest import NOW, PAN, Backend, answered, purchase

# Computed with the first implementation (a Python list of hex-converted values through
# orjson, hmac.new): journals and archives written by it must keep verifying.
ROW = (
    7, "R0001", "answered", 1773489600000000, "0200", "000000", 1500, "156", "TERM0001", None,
    "000123", "0314120000", "alpha", "R0001", "123456", "00", None, None, None, "note \u00e9",
    "ab" * 32, "476173******0011", bytes(range(20)), memoryview(b"\x00\xff"), None,
)  # fmt: skip
ROW_MAC = "9e8425584bdd6eaf8af590d1a6e43fe961a46870b6c452a8ee67a5a0e74c03c2"
HEAD_TAG = "79af197e383346b972d55f8ed118a4fa2444ad5de5182fe928b919a4d4d67c50"


def test_chain_bytes_are_unchanged() -> None:
    chain = Chain(b"k" * 32)
    assert canonical(ROW).endswith(b'"000102030405060708090a0b0c0d0e0f10111213","00ff",null]')
    assert canonical(ROW) == canonical(list(ROW)) == canonical(iter(ROW))  # type: ignore[arg-type]
    assert chain.mac(bytes(32), ROW).hex() == ROW_MAC
    assert chain.tag("head", 7, bytes(32)).hex() == HEAD_TAG


def test_chain_refuses_values_it_cannot_encode() -> None:
    with pytest.raises(TypeError):
        canonical((1, object()))


@given(st.datetimes(timezones=st.just(UTC)))
def test_microseconds_are_exact(moment: datetime) -> None:
    expected = (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert to_us(moment) == expected
    assert from_us(expected) == moment


def _deferred_in_a_writer(event: JournalEvent, protector: DataProtector) -> tuple[object, ...]:
    """As the writer process does it: the tuple and the protector travel pickled."""
    child = pickle.loads(pickle.dumps(protector))
    return prepare_deferred(pickle.loads(pickle.dumps(defer_event(event))), child)


@pytest.mark.parametrize("prepare", [prepare_event, _deferred_in_a_writer])
def test_prepared_event_follows_the_column_order(prepare: object) -> None:
    protector = DataProtector({"k": os.urandom(32)}, "k", os.urandom(32))
    values: dict[str, object] = {c: f"v-{c}" for c in DATA_COLUMNS if not c.startswith("pan")}
    values.update(
        mti="0200", processing_code="000000", amount=1500, currency="156", stan="000001",
        transmission="0314120000", orig_mti="0100", orig_stan="000002",
        orig_transmission="0314110000", response_code="00",
    )  # fmt: skip
    del values["request_enc"], values["response_enc"], values["business_date"]
    at = datetime(2026, 3, 14, 12, tzinfo=UTC)
    event = JournalEvent(
        txn_id="T1",
        state=TxnState.ANSWERED,
        at=at,
        business_date=date(2026, 3, 15),
        pan="4761730000000011",
        request={"2": "4761730000000011", "52": "00"},
        response={"39": "00"},
        **values,  # type: ignore[arg-type]
    )
    columns = ("txn_id", "state", "at_us", *DATA_COLUMNS)
    row = dict(zip(columns, prepare(event, protector), strict=True))  # type: ignore[operator]
    assert (row["txn_id"], row["state"], row["at_us"]) == ("T1", "answered", to_us(at))
    for column, value in values.items():
        assert row[column] == value
    assert row["business_date"] == "2026-03-15"
    assert row["pan_masked"] == "476173******0011"
    assert row["pan_hash"] == protector.pan_hash("4761730000000011")
    assert protector.reveal_pan(row["pan_enc"], aad("pan", "T1")) == "4761730000000011"
    request = protector.decrypt_fields(row["request_enc"], aad("request", "T1"))
    assert request == {"2": "4761730000000011"}  # the PIN block never reaches the row
    assert protector.decrypt_fields(row["response_enc"], aad("response", "T1")) == {"39": "00"}
    assert DataProtector.key_id_of(row["pan_enc"]) == "k"


def test_a_deferred_event_is_the_same_row_as_a_prepared_one() -> None:
    protector = DataProtector({"k": os.urandom(32)}, "k", os.urandom(32))
    for event in (
        purchase("T2", "000002"),
        answered("T2", "000002"),
        JournalEvent(txn_id="T3", state=TxnState.REVERSED, at=NOW),
    ):
        direct, deferred = prepare_event(event, protector), _deferred_in_a_writer(event, protector)
        assert len(direct) == len(deferred)
        columns = ("txn_id", "state", "at_us", *DATA_COLUMNS)
        for column, a, b in zip(columns, direct, deferred, strict=True):
            if column.endswith("_enc") and a is not None:
                assert isinstance(b, bytes)  # fresh nonces: compare what they decrypt to
                purpose = column.removesuffix("_enc")
                assert protector.decrypt(a, aad(purpose, event.txn_id)) == protector.decrypt(
                    b, aad(purpose, event.txn_id)
                )
            else:
                assert a == b, column


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("stan", "12345", "stan must be 6 digits"),
        ("orig_transmission", "031412000x", "orig_transmission must be 10 digits"),
        ("currency", "\u0661\u0665\u0666", "currency must be 3 digits"),
        ("note", "x" * 65, "note must be at most 64 printable chars"),
        ("terminal_id", "TERM\n001", "terminal_id must be at most 64 printable chars"),
    ],
)
def test_each_bad_field_is_named(field: str, value: str, message: str) -> None:
    with pytest.raises(JournalValueError, match=message):
        JournalEvent(txn_id="T1", state=TxnState.ANSWERED, at=NOW, mti="0200", **{field: value})  # type: ignore[arg-type]


def test_payload_keys_with_trailing_newline_or_zeros_are_refused() -> None:
    for key in ("35\n", "035", "0", "1000", ""):
        with pytest.raises(JournalValueError):
            strip_sensitive({key: "x"})
    assert strip_sensitive({"t": "0200", "p": "00", "999": "x"}) == {
        "t": "0200",
        "p": "00",
        "999": "x",
    }


@pytest.mark.anyio
async def test_group_commit_batches_back_pressure_and_close() -> None:
    batches: list[list[int]] = []

    async def commit(ops: list[Op]) -> None:
        await anyio.sleep(0.01)
        if any(op.args == "bad" for op in ops):
            raise ValueError("bad record")
        batches.append([op.args for op in ops])
        for op in ops:
            op.result = op.args

    committer = GroupCommitter(commit, max_batch=4, max_delay=0.0, queue_size=3)
    results: dict[object, object] = {}
    async with anyio.create_task_group() as tg:
        await tg.start(committer.run)

        async def write(value: object) -> None:
            try:
                results[value] = await committer.submit(Op(OpKind.APPEND, value))
            except JournalWriteError as exc:
                results[value] = exc

        for i in range(10):
            tg.start_soon(write, i)
        tg.start_soon(write, "bad")
        await anyio.sleep(0.2)
        committer.close()
    assert all(results[i] == i for i in range(10))
    assert isinstance(results["bad"], JournalWriteError)
    assert all(len(b) <= 4 for b in batches)
    assert sorted(v for b in batches for v in b) == list(range(10))
    with pytest.raises(JournalClosedError):
        await committer.submit(Op(OpKind.APPEND, 99))


@pytest.mark.anyio
async def test_ops_queued_during_a_commit_wake_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer waits for the batch it will be in, not also for the one committing when it
    arrived: one wake-up per record (each wake resumes the writer's whole await chain)."""
    from gateway.journal import groupcommit

    wakes = 0

    class CountingEvent:
        def __init__(self) -> None:
            self._event = anyio.Event()

        def set(self) -> None:
            self._event.set()

        def is_set(self) -> bool:
            return self._event.is_set()

        async def wait(self) -> None:
            nonlocal wakes
            await self._event.wait()
            wakes += 1

    class AnyioWithCountingEvents:
        Event = CountingEvent

        def __getattr__(self, name: str) -> object:
            return getattr(anyio, name)

    monkeypatch.setattr(groupcommit, "anyio", AnyioWithCountingEvents())
    gate = anyio.Event()
    committed: list[list[int]] = []

    async def commit(ops: list[Op]) -> None:
        committed.append([op.args for op in ops])
        if len(committed) == 1:
            await gate.wait()  # the first batch is slow (an fsync)
        await anyio.sleep(0.005)  # every batch waits for its fsync

    committer = GroupCommitter(commit, max_batch=10, max_delay=0.0, queue_size=100)
    async with anyio.create_task_group() as tg:
        await tg.start(committer.run)
        tg.start_soon(committer.submit, Op(OpKind.APPEND, 0))
        await anyio.sleep(0.02)  # batch [0] is committing
        for i in range(1, 6):
            tg.start_soon(committer.submit, Op(OpKind.APPEND, i))
        await anyio.sleep(0.02)
        wakes = 0
        gate.set()
        await anyio.sleep(0.05)
        committer.close()
    assert committed[0] == [0]
    assert sorted(committed[1]) == [1, 2, 3, 4, 5]  # (trio starts tasks in any order)
    assert wakes == 7  # ops 0-5 once each (not twice), the idle committer once at close


@pytest.mark.anyio
async def test_group_commit_exclusive_ops_run_alone_and_cancel_fails_waiters() -> None:
    seen: list[list[bool]] = []
    gate = anyio.Event()

    async def commit(ops: list[Op]) -> None:
        seen.append([op.exclusive for op in ops])
        await gate.wait()

    committer = GroupCommitter(commit, max_batch=10, max_delay=0.0, queue_size=100)
    errors: list[BaseException] = []

    async def write(op: Op) -> None:
        try:
            await committer.submit(op)
        except JournalClosedError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as outer, anyio.create_task_group() as inner:
        await inner.start(committer.run)
        outer.start_soon(write, Op(OpKind.APPEND, 1))
        await anyio.sleep(0.02)  # the first batch is committing (held by the gate)
        outer.start_soon(write, Op(OpKind.APPEND, 2))
        outer.start_soon(write, Op(OpKind.CUSTOM, 3, exclusive=True))
        outer.start_soon(write, Op(OpKind.APPEND, 4))
        await anyio.sleep(0.02)
        gate.set()
        await anyio.sleep(0.05)
        # Start order differs between backends; the exclusive op is alone either way.
        assert sum(map(len, seen)) == 4
        assert [b for b in seen if True in b] == [[True]]
        gate = anyio.Event()
        outer.start_soon(write, Op(OpKind.APPEND, 5))
        await anyio.sleep(0.02)
        inner.cancel_scope.cancel()  # the committer dies mid-commit
    assert len(errors) == 1  # op 5: never reported as committed


@pytest.mark.anyio
async def test_partial_upserts_build_the_same_index_as_a_rebuild(backend: Backend) -> None:
    """Batches mixing shapes, and one transaction twice in a batch, index like the replay."""
    async with backend.open() as journal:

        async def life(i: int) -> None:
            tid, stan = f"p{i}", f"{i:06d}"
            await journal.append(purchase(tid, stan), durable=False)
            await journal.append(JournalEvent(txn_id=tid, state=TxnState.SENT_TO_ISSUER, at=NOW))
            await journal.append(answered(tid, stan, rc="00" if i % 2 else "05"))

        async def twice() -> None:  # two writers on one transaction: same batch, in order
            async with anyio.create_task_group() as tg:
                tg.start_soon(journal.append, purchase("d1", "999999"))
                tg.start_soon(journal.append, answered("d1", "999999"))

        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(life, i)
            tg.start_soon(twice)
        before = [await journal.get(f"p{i}") for i in range(40)]
        dup = await journal.get("d1")
        assert journal.statistics().largest_batch > 1
        await backend.tamper("DELETE FROM txns")
        assert await journal.rebuild_index() == 122
        assert [await journal.get(f"p{i}") for i in range(40)] == before
        assert await journal.get("d1") == dup
        assert dup is not None
        assert dup.response_code == "00"
        assert dup.pan == PAN


@given(st.binary(min_size=0, max_size=150), st.binary(max_size=300))
def test_keyed_hmac_equals_the_standard_library(key: bytes, message: bytes) -> None:
    assert HmacSha256(key).digest(message) == hmac.digest(key, message, "sha256")
    assert repr(HmacSha256(key)) == "HmacSha256(<key>)"


@pytest.mark.parametrize(
    "bad",
    [
        {"stan": "00012\n"},
        {"stan": "00012\u0663"},  # an Arabic-Indic digit
        {"mti": "200"},
        {"amount": True},
        {"amount": 1.5},
        {"amount": 10**12},
        {"amount": -1},
        {"txn_id": "T1\n"},
        {"at": datetime(2026, 3, 14)},
        {"request": {"35\n": "track"}},
        {"response": {"39": 0}},
    ],
)
def test_event_checks_stay_strict(bad: dict[str, object]) -> None:
    values: dict[str, object] = {"txn_id": "T1", "state": TxnState.RECEIVED, "at": NOW, **bad}
    with pytest.raises(JournalValueError):
        JournalEvent(**values)  # type: ignore[arg-type]


def test_event_accepts_other_time_zones_and_state_strings() -> None:
    east = datetime(2026, 3, 14, 20, tzinfo=UTC).astimezone(timezone(timedelta(hours=8)))
    event = JournalEvent(txn_id="T1", state="answered", at=east, amount=0)  # type: ignore[arg-type]
    assert event.state is TxnState.ANSWERED
    assert to_us(event.at) == to_us(datetime(2026, 3, 14, 20, tzinfo=UTC))


@pytest.mark.anyio
async def test_group_commit_depth_two_overlaps_batches_and_exclusive_waits_for_none() -> None:
    """depth=2 (the writer process): a second batch is handed over while the first is still
    committing; every writer gets its own batch's result; an exclusive op waits until no
    batch is in flight and runs alone."""
    gates = [anyio.Event() for _ in range(3)]
    started: list[list[object]] = []
    running = [0]
    most = [0]

    async def commit(ops: list[Op]) -> None:
        started.append([op.args for op in ops])
        running[0] += 1
        most[0] = max(most[0], running[0])
        for op in ops:
            op.result = op.args
        try:
            await gates[min(len(started), 3) - 1].wait()
        finally:
            running[0] -= 1

    committer = GroupCommitter(commit, max_batch=10, max_delay=0.0, queue_size=100, depth=2)
    results: dict[object, object] = {}

    async def write(op: Op) -> None:
        results[op.args] = await committer.submit(op)

    async with anyio.create_task_group() as outer, anyio.create_task_group() as inner:
        await inner.start(committer.run)
        outer.start_soon(write, Op(OpKind.APPEND, "a"))
        await anyio.sleep(0.02)  # batch [a] is committing, held
        outer.start_soon(write, Op(OpKind.APPEND, "b"))
        await anyio.sleep(0.02)  # batch [b] is handed over too: two in flight
        assert started == [["a"], ["b"]]
        assert running[0] == 2
        outer.start_soon(write, Op(OpKind.CUSTOM, "x", exclusive=True))
        await anyio.sleep(0.02)
        assert len(started) == 2  # the exclusive op waits for both to finish
        gates[0].set()
        gates[1].set()
        await anyio.sleep(0.02)
        assert started[2] == ["x"]
        gates[2].set()
        await anyio.sleep(0.02)
        committer.close()
    assert results == {"a": "a", "b": "b", "x": "x"}
    assert most[0] == 2


class _FakeWriter:
    """An in-memory writer process: answers the batches sent to it in order, when told."""

    def __init__(self) -> None:
        self.sent: list[tuple[list[Op], object]] = []
        self.batches: list[list[object]] = []

    def send(self, ops: list[Op], done: object) -> None:
        self.sent.append((ops, done))

    def answer(self, error: BaseException | None = None) -> None:
        ops, done = self.sent.pop(0)
        if error is None:
            self.batches.append([op.args for op in ops])
            for op in ops:
                op.result = op.args
        done(error)  # type: ignore[operator]

    async def commit(self, ops: list[Op]) -> None:  # the retry path: one op at a time
        if any(op.args == "bad" for op in ops):
            raise ValueError("bad record")
        self.batches.append([op.args for op in ops])
        for op in ops:
            op.result = op.args


@pytest.mark.anyio
async def test_sent_batches_are_answered_by_callback_in_order() -> None:
    """The writer-process path: batches handed over without a task, ``depth`` at a time; an
    answer sends what queued meanwhile at once; a failed batch is retried op by op."""
    writer = _FakeWriter()
    committer = GroupCommitter(
        writer.commit, max_batch=3, max_delay=0.0, queue_size=100, depth=2, send=writer.send
    )
    results: dict[object, object] = {}

    async def write(value: object) -> None:
        try:
            results[value] = await committer.submit(Op(OpKind.APPEND, value))
        except JournalWriteError as exc:
            results[value] = exc

    async with anyio.create_task_group() as tg:
        await tg.start(committer.run)
        for i in range(8):
            tg.start_soon(write, i)
        await anyio.wait_all_tasks_blocked()
        assert len(writer.sent) == 2  # depth 2: two batches out, the rest queued
        writer.answer()  # the answer's callback sends the next batch itself
        assert len(writer.sent) == 2
        await anyio.wait_all_tasks_blocked()
        assert all(results[v] == v for v in writer.batches[0])
        tg.start_soon(write, "bad")
        await anyio.wait_all_tasks_blocked()
        while writer.sent:
            failing = any(op.args == "bad" for op in writer.sent[0][0])
            writer.answer(ValueError("bad record") if failing else None)
            await anyio.wait_all_tasks_blocked()
        committer.close()
    assert all(results[i] == i for i in range(8))
    assert isinstance(results["bad"], JournalWriteError)
    assert all(len(b) <= 3 for b in writer.batches)
    with pytest.raises(JournalClosedError):
        await committer.submit(Op(OpKind.APPEND, 99))


@pytest.mark.anyio
async def test_a_cancelled_committer_fails_the_batches_it_sent() -> None:
    writer = _FakeWriter()
    committer = GroupCommitter(
        writer.commit, max_batch=10, max_delay=0.0, queue_size=100, depth=2, send=writer.send
    )
    errors: list[BaseException] = []

    async def write(value: int) -> None:
        try:
            await committer.submit(Op(OpKind.APPEND, value))
        except JournalClosedError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as outer, anyio.create_task_group() as inner:
        await inner.start(committer.run)
        for i in range(3):
            outer.start_soon(write, i)
        await anyio.wait_all_tasks_blocked()
        assert writer.sent
        inner.cancel_scope.cancel()
    assert len(errors) == 3  # never answered: no writer takes its record as committed
    writer.answer()  # a late answer changes nothing
