"""The journal API, shared by both backends; backends supply connections and commits.

Use it as an async context manager (it owns the committer task)::

    async with open_journal(config) as journal:
        await journal.append(JournalEvent(txn_id=..., state=TxnState.RECEIVED, at=now, ...))

Every write goes through group commit (:mod:`.groupcommit`); ``append`` returns once the
record is committed and, with ``durable=True`` (default), synced to disk. Reads decrypt the
PAN and payloads with the configured keys.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, aclosing
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, Self

import anyio

from gateway.journal.archive import ArchiveInfo, ArchiveWriter, verify_archive
from gateway.journal.chain import GENESIS, ChainVerifier
from gateway.journal.config import JournalConfig, JournalKeys, resolve_keys
from gateway.journal.errors import ArchiveFormatError, JournalClosedError, JournalStateError
from gateway.journal.groupcommit import GroupCommitter, Op, OpKind, SendFn
from gateway.journal.model import (
    Advice,
    ArchiveResult,
    JournalEvent,
    JournalStatistics,
    NewAdvice,
    SafDepth,
    SettlementTotal,
    StoredTxn,
    TxnState,
    VerifyResult,
)
from gateway.journal.rows import (
    Prepared,
    from_us,
    prepare_advice,
    prepare_event,
    stored_advice,
    stored_txn,
    to_us,
)
from gateway.journal.sql import Sql

BUSINESS_WINDOW = timedelta(days=2)

_CHUNK = 2000


class Reader(Protocol):
    """A read-only view; inside ``_read()`` all calls see one consistent snapshot."""

    async def fetchall(self, sql: str, *params: Any) -> list[Sequence[Any]]: ...

    async def fetchone(self, sql: str, *params: Any) -> Sequence[Any] | None: ...

    def chunks(self, sql: str, *params: Any) -> AsyncGenerator[list[Sequence[Any]], None]: ...


class JournalBase(abc.ABC):
    """Backend-neutral part of the journal. See :class:`gateway.journal.Journal`."""

    def __init__(
        self,
        config: JournalConfig,
        *,
        keys: JournalKeys | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self._keys = keys if keys is not None else resolve_keys(config, environ)
        self._protector = self._keys.protector
        self._chain = self._keys.chain
        self._sql = self._make_sql()
        self._committer: GroupCommitter | None = None
        self._tg: Any = None
        self._commit_depth = 1
        """Batches committing at once (the backend sets more if it applies them in order)."""

    # -- backend hooks -----------------------------------------------------------------------

    @abc.abstractmethod
    def _make_sql(self) -> Sql: ...

    @abc.abstractmethod
    async def _open_backend(self) -> None: ...

    @abc.abstractmethod
    async def _close_backend(self) -> None: ...

    @abc.abstractmethod
    async def _commit(self, ops: list[Op]) -> None:
        """Apply ``ops`` in one transaction (all or nothing), setting each ``op.result``."""

    @abc.abstractmethod
    def _read(self) -> AbstractAsyncContextManager[Reader]: ...

    async def _fetchone(self, sql: str, *params: Any) -> Sequence[Any] | None:
        """One statement's first row (a lone statement sees one snapshot on its own)."""
        async with self._read() as reader:
            return await reader.fetchone(sql, *params)

    async def _fetchall(self, sql: str, *params: Any) -> list[Sequence[Any]]:
        async with self._read() as reader:
            return await reader.fetchall(sql, *params)

    @abc.abstractmethod
    def _archive_commit_op(self, prev: tuple[int, bytes], new: tuple[int, bytes]) -> Any:
        """CUSTOM op body: check the anchor is ``prev``, delete up to ``new``, move it."""

    @abc.abstractmethod
    def _restore_op(self, path: Path, info: ArchiveInfo) -> Any:
        """CUSTOM op body: check the anchor is the archive's end, insert its rows, move the
        anchor back to the archive's start and rebuild the index of its transactions."""

    @abc.abstractmethod
    def _rebuild_op(self) -> Any:
        """CUSTOM op body: rebuild the whole index from the events."""

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self._open_backend()
        committer = GroupCommitter(
            self._commit,
            max_batch=self.config.group_commit_max_batch,
            max_delay=self.config.group_commit_max_delay_ms / 1000.0,
            queue_size=self.config.queue_size,
            depth=self._commit_depth,
            send=self._sender(),
        )
        tg = anyio.create_task_group()
        await tg.__aenter__()
        await tg.start(committer.run)
        self._tg, self._committer = tg, committer
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        committer, tg = self._committer, self._tg
        self._committer = self._tg = None
        try:
            if committer is not None:
                committer.close()  # drain: every queued write is committed before closing
            if tg is not None:
                # The committer ends on its own once drained; the body's exception is not
                # handed to the task group, so it propagates as is (not in an ExceptionGroup).
                await tg.__aexit__(None, None, None)
            return None
        finally:
            with anyio.CancelScope(shield=True):
                await self._close_backend()

    def _require(self) -> GroupCommitter:
        if self._committer is None:
            raise JournalClosedError("the journal is not open (use `async with`)")
        return self._committer

    def statistics(self) -> JournalStatistics:
        """Group-commit counters: ops, batches, largest batch, failed batches."""
        return self._require().statistics()

    # -- writes -----------------------------------------------------------------------------

    def _sender(self) -> SendFn | None:
        """A backend that can start a commit without awaiting (see ``GroupCommitter``)."""
        return None

    def _prepare_event(self, event: JournalEvent) -> Prepared:
        """The record to commit: encrypted here (a backend with a writer process of its own
        may hand that work to it: :func:`.rows.defer_event`)."""
        return prepare_event(event, self._protector)

    async def append(self, event: JournalEvent, *, durable: bool = True) -> int:
        """Append one state change; returns its sequence number once committed.

        ``durable=False`` still commits before returning but without waiting for the fsync
        (SQLite synchronous=NORMAL, PostgreSQL synchronous_commit=off for that batch, unless
        a durable record shares the batch): for events whose loss on power failure is
        harmless. Raises :class:`JournalWriteError` if the record could not be committed.
        """
        committer = self._require()
        op = Op(OpKind.APPEND, (self._prepare_event(event), None), durable=durable)
        result: tuple[int, int | None] = await committer.submit(op)
        return result[0]

    async def append_with_advice(
        self, event: JournalEvent, advice: NewAdvice, *, durable: bool = True
    ) -> tuple[int, int]:
        """Append an event and queue an advice in the same transaction: (seq, advice_id).

        E.g. ``timed_out`` plus the 0420 to send: a crash cannot keep one without the other.
        """
        committer = self._require()
        args = (self._prepare_event(event), prepare_advice(advice, self._protector))
        result: tuple[int, int] = await committer.submit(Op(OpKind.APPEND, args, durable=durable))
        return result

    async def enqueue_advice(self, advice: NewAdvice) -> int:
        """Store an advice for forwarding (durable); returns its id (FIFO order per issuer)."""
        op = Op(OpKind.ENQUEUE, prepare_advice(advice, self._protector))
        advice_id: int = await self._require().submit(op)
        return advice_id

    async def ack(self, advice_id: int) -> bool:
        """Remove an acknowledged advice (its 0430 arrived); False if it was not queued."""
        done: bool = await self._require().submit(Op(OpKind.ACK, advice_id))
        return done

    async def reschedule(
        self,
        advice_id: int,
        next_attempt_at: datetime,
        attempts: int,
        *,
        error: str | None = None,
    ) -> bool:
        """Set the next attempt time and attempt count (see :func:`.backoff.next_attempt`)."""
        if next_attempt_at.tzinfo is None:
            raise JournalStateError("next_attempt_at must be timezone-aware")
        args = (to_us(next_attempt_at), attempts, None if error is None else error[:200], advice_id)
        done: bool = await self._require().submit(Op(OpKind.RESCHEDULE, args))
        return done

    async def claim(self, advice: Advice, until: datetime) -> bool:
        """Take ``advice`` for sending until ``until``: its next attempt moves there, unless
        someone moved it since it was read (another node's sender: then False, leave it).
        A sender that dies holding it only delays it until ``until``."""
        if until.tzinfo is None:
            raise JournalStateError("until must be timezone-aware")
        args = (to_us(until), advice.advice_id, to_us(advice.next_attempt_at))
        done: bool = await self._require().submit(Op(OpKind.CLAIM, args, durable=False))
        return done

    # -- reads ------------------------------------------------------------------------------

    def _txn(self, row: Sequence[Any] | None) -> StoredTxn | None:
        return None if row is None else stored_txn(row, self._protector)

    async def _one_txn(self, sql: str, *params: Any) -> StoredTxn | None:
        self._require()
        return self._txn(await self._fetchone(sql, *params))

    async def _txns(self, sql: str, *params: Any) -> list[StoredTxn]:
        self._require()
        rows = await self._fetchall(sql, *params)
        return [stored_txn(row, self._protector) for row in rows]

    async def get(self, txn_id: str) -> StoredTxn | None:
        """Current state of a transaction by id."""
        return await self._one_txn(self._sql.get_txn, txn_id)

    async def find_duplicate(
        self,
        terminal_id: str,
        stan: str,
        transmission: str,
        now: datetime,
        *,
        mti: str | None = None,
    ) -> StoredTxn | None:
        """The latest transaction with this duplicate key (41, 11, 7) created within the
        duplicate window (24 h) before ``now``; its ``response`` is the answer to replay.

        With ``mti`` only the same message class matches (first 3 digits: 0200 and its
        repeat 0201 match, a 0400 reversal sharing the STAN does not). The caller decides
        from ``state`` what to do with one still in progress.
        """
        since = to_us(now - timedelta(hours=self.config.duplicate_window_hours))
        if mti is None:
            return await self._one_txn(
                self._sql.find_duplicate, terminal_id, stan, transmission, since
            )
        return await self._one_txn(
            self._sql.find_duplicate_mti, terminal_id, stan, transmission, since, mti[:3]
        )

    async def find_original(
        self,
        terminal_id: str,
        orig_stan: str,
        orig_transmission: str,
        *,
        orig_mti: str | None = None,
        since: datetime | None = None,
    ) -> StoredTxn | None:
        """The original of a reversal (field 90: MTI, STAN, transmission date-time) at this
        terminal: the latest non-reversal transaction with that key, optionally not older
        than ``since``."""
        start = 0 if since is None else to_us(since)
        if orig_mti is None:
            return await self._one_txn(
                self._sql.find_original, terminal_id, orig_stan, orig_transmission, start
            )
        return await self._one_txn(
            self._sql.find_original_mti,
            terminal_id,
            orig_stan,
            orig_transmission,
            start,
            orig_mti,
        )

    async def in_flight(self) -> list[StoredTxn]:
        """Transactions left in ``sent_to_issuer`` (after a crash: reverse them at start)."""
        return await self._txns(self._sql.in_flight)

    async def in_state(self, state: TxnState) -> list[StoredTxn]:
        """Every transaction whose current state is ``state`` (oldest first)."""
        return await self._txns(self._sql.in_state, TxnState(state).value)

    async def find_by_pan(
        self, pan: str, since: datetime, until: datetime, *, limit: int = 100
    ) -> list[StoredTxn]:
        """Transactions of a card (by keyed hash, never by clear PAN) in [since, until)."""
        pan_hash = self._protector.pan_hash(pan)
        return await self._txns(self._sql.by_pan, pan_hash, to_us(since), to_us(until), limit)

    async def settlement(
        self, day: date, *, by: Literal["calendar", "business"] = "calendar"
    ) -> list[SettlementTotal]:
        """Approved, not reversed 02xx totals per issuer and currency: created on ``day``
        (UTC calendar day), or ``by="business"`` of business date ``day`` (the cutover's)."""
        start = datetime.combine(day, time(0), tzinfo=UTC)
        self._require()
        if by == "business":
            # A business day lies within [date - 1 day 12:00, date + 1 day 12:00) local time,
            # local time within -12/+14 h of UTC: two days either side hold it in any zone
            # (the creation index narrows the scan; the date column decides).
            rows = await self._fetchall(
                self._sql.settlement_business,
                to_us(start - BUSINESS_WINDOW),
                to_us(start + BUSINESS_WINDOW),
                day.isoformat(),
            )
        else:
            rows = await self._fetchall(
                self._sql.settlement, to_us(start), to_us(start + timedelta(days=1))
            )
        return [
            SettlementTotal(day, r[0], r[1], int(r[2]), int(r[3]), int(r[4]), int(r[5]))
            for r in rows
        ]

    async def txn_pages(
        self,
        since: datetime,
        until: datetime,
        *,
        issuer_id: str | None = None,
        page_size: int = 1000,
    ) -> AsyncIterator[list[StoredTxn]]:
        """Transactions created in [since, until) (of ``issuer_id`` only, if given), oldest
        first, in pages of ``page_size``: one statement per page (keyset on created time and
        id), so a day of millions of rows is never held at once, nor one read open across
        pages. A row updated between pages is read as it is when its page is read."""
        if since.tzinfo is None or until.tzinfo is None:
            raise JournalStateError("since and until must be timezone-aware")
        if page_size < 1:
            raise JournalStateError("page_size must be at least 1")
        self._require()
        start, end = to_us(since), to_us(until)
        after_us, after_id = start, ""
        while True:
            if issuer_id is None:
                rows = await self._fetchall(
                    self._sql.txns_page, start, end, after_us, after_us, after_id, page_size
                )
            else:
                rows = await self._fetchall(
                    self._sql.txns_page_issuer,
                    start,
                    end,
                    after_us,
                    after_us,
                    after_id,
                    issuer_id,
                    page_size,
                )
            if not rows:
                return
            yield [stored_txn(row, self._protector) for row in rows]
            if len(rows) < page_size:
                return
            after_id, after_us = rows[-1][0], int(rows[-1][2])

    async def next_due(self, issuer_id: str, now: datetime, limit: int = 100) -> list[Advice]:
        """Advices of ``issuer_id`` due at ``now``, oldest first (FIFO by advice id)."""
        self._require()
        rows = await self._fetchall(self._sql.next_due, issuer_id, to_us(now), limit)
        return [stored_advice(row, self._protector) for row in rows]

    async def get_advice(self, advice_id: int) -> Advice | None:
        self._require()
        row = await self._fetchone(self._sql.get_advice, advice_id)
        return None if row is None else stored_advice(row, self._protector)

    async def saf_depth(self, issuer_id: str) -> SafDepth:
        """Queued advices of one issuer and the creation time of the oldest."""
        self._require()
        row = await self._fetchone(self._sql.depth_one, issuer_id)
        if row is None:
            return SafDepth(issuer_id, 0, None)
        return SafDepth(issuer_id, int(row[1]), from_us(row[2]))

    async def saf_depths(self) -> list[SafDepth]:
        """Depth per issuer with anything queued (for /metrics)."""
        self._require()
        rows = await self._fetchall(self._sql.depth_all)
        return [SafDepth(r[0], int(r[1]), from_us(r[2])) for r in rows]

    # -- integrity, retention ---------------------------------------------------------------

    async def _chain_state(self, reader: Reader, name: str) -> tuple[int, bytes, bytes] | None:
        row = await reader.fetchone(self._sql.read_state, name)
        return None if row is None else (int(row[0]), bytes(row[1]), bytes(row[2]))

    async def verify(self) -> VerifyResult:
        """Walk the whole chain from the anchor; OK with the count, or the first bad link."""
        self._require()
        async with self._read() as reader:
            anchor = await self._chain_state(reader, "anchor")
            head = await self._chain_state(reader, "head")
            if anchor is None or head is None:
                return VerifyResult(False, 0, broken_seq=0, reason="chain state missing")
            if not self._chain.tag_ok("anchor", *anchor):
                return VerifyResult(False, 0, broken_seq=anchor[0], reason="anchor tag invalid")
            if not self._chain.tag_ok("head", *head):
                return VerifyResult(False, 0, broken_seq=head[0], reason="head tag invalid")
            verifier = ChainVerifier(self._chain, anchor[0], anchor[1])
            async with aclosing(reader.chunks(self._sql.events_after, anchor[0])) as chunks:
                async for chunk in chunks:
                    for row in chunk:
                        if not verifier.feed(row):
                            return verifier.result()
            return verifier.finish(head[0], head[1])

    async def archive(
        self, out_dir: str | Path, *, now: datetime, older_than_days: int | None = None
    ) -> ArchiveResult:
        """Move events older than ``older_than_days`` (default: retention) to a gzip file in
        ``out_dir``, then delete them and move the anchor, in that order.

        Only a prefix of the chain is archived: it stops before the first event not older
        than the cutoff. Index rows whose every event was archived are removed too. Refuses
        to archive a broken chain. Nothing is ever deleted except by this explicit call.
        """
        self._require()
        days = self.config.retention_days if older_than_days is None else older_than_days
        cutoff = to_us(now - timedelta(days=days))
        async with self._read() as reader:
            anchor = await self._chain_state(reader, "anchor")
            head = await self._chain_state(reader, "head")
            if anchor is None or head is None:
                raise JournalStateError("chain state missing: run verify")
            row = await reader.fetchone(self._sql.first_seq_at, cutoff)
            last = head[0] if row is None or row[0] is None else int(row[0]) - 1
            if last <= anchor[0]:
                return ArchiveResult(None, 0, None, None)
            writer = await anyio.to_thread.run_sync(
                ArchiveWriter, Path(out_dir), self._chain, anchor[0], anchor[1]
            )
            try:
                span = (anchor[0], last)
                async with aclosing(reader.chunks(self._sql.events_range, *span)) as chunks:
                    async for chunk in chunks:
                        await anyio.to_thread.run_sync(writer.add_many, chunk)
            except BaseException:
                await anyio.to_thread.run_sync(writer.abort)
                raise
        path, first_seq, last_seq, last_mac = await anyio.to_thread.run_sync(writer.finish)
        op = Op(
            OpKind.CUSTOM,
            self._archive_commit_op((anchor[0], anchor[1]), (last_seq, last_mac)),
            exclusive=True,
        )
        try:
            removed: int = await self._require().submit(op)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(path.unlink)
            raise
        return ArchiveResult(str(path), last_seq - first_seq + 1, first_seq, last_seq, removed)

    async def restore(self, path: str | Path) -> ArchiveResult:
        """Bring an archive back: it must verify on its own and end exactly at the current
        anchor (restore the newest archive first). The index of its transactions is rebuilt.
        """
        self._require()
        file = Path(path)
        result, info = await anyio.to_thread.run_sync(verify_archive, file, self._chain)
        if info is None:
            raise ArchiveFormatError(
                f"{file.name}: archive fails verification at seq {result.broken_seq} "
                f"({result.reason})"
            )
        op = Op(
            OpKind.CUSTOM,
            self._restore_op(file, info),
            exclusive=True,
        )
        await self._require().submit(op)
        return ArchiveResult(str(file), info.count, info.first_seq, info.last_seq)

    async def rebuild_index(self) -> int:
        """Recreate the current-state index from the events; returns the events replayed."""
        count: int = await self._require().submit(
            Op(OpKind.CUSTOM, self._rebuild_op(), exclusive=True)
        )
        return count

    # -- helpers for backends ---------------------------------------------------------------

    RESTORE_MISMATCH = (
        "the archive ends at seq {seq} but the journal's anchor is at {anchor}: "
        "restore newer archives first, or it is already restored"
    )
    ARCHIVE_MOVED = "the anchor moved to {anchor} during the archive run (expected {seq})"

    def _genesis_state(self) -> list[tuple[str, int, bytes, bytes]]:
        return [
            (name, 0, GENESIS, self._chain.tag(name, 0, GENESIS)) for name in ("anchor", "head")
        ]

    @staticmethod
    def _check_anchor(anchor: Sequence[Any] | None, seq: int, mac: bytes, what: str) -> None:
        """Raise unless the live anchor row is (seq, mac) (guards concurrent admin runs)."""
        if anchor is None:
            raise JournalStateError("chain state missing: run verify")
        if int(anchor[0]) != seq or bytes(anchor[1]) != mac:
            raise JournalStateError(what.format(anchor=anchor[0], seq=seq))
