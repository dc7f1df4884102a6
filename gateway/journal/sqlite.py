"""Embedded SQLite backend (default): stdlib sqlite3, WAL, synchronous=FULL, group commit.

Two connections: the writer, used only by the committer's batches (one worker thread at a
time via a capacity limiter of 1, ``BEGIN IMMEDIATE`` ... ``COMMIT`` per batch, so one WAL
fsync per batch), and a reader (WAL readers never block the writer). Runs on asyncio, uvloop
and trio: blocking calls go through ``anyio.to_thread``. Another process (the archive CLI)
may use the same file: ``BEGIN IMMEDIATE`` and ``busy_timeout`` serialize the writers, and the
head of the chain is read inside each write transaction, never cached.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from gateway.journal.archive import ArchiveInfo, read_rows
from gateway.journal.base import JournalBase, Reader
from gateway.journal.errors import JournalClosedError, JournalStateError
from gateway.journal.groupcommit import Op, OpKind
from gateway.journal.rows import txn_params, upsert_groups
from gateway.journal.sql import Sql

_CHUNK = 2000
Custom = Callable[[sqlite3.Connection], Any]


class _SqliteReader:
    """Calls on one pooled reader connection; the pool lends it to one task at a time."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self._con = con
        self._limiter = None  # anyio's default thread limiter

    async def fetchall(self, sql: str, *params: Any) -> list[Sequence[Any]]:
        rows: list[Sequence[Any]] = await anyio.to_thread.run_sync(
            lambda: self._con.execute(sql, params).fetchall(), limiter=self._limiter
        )
        return rows

    async def fetchone(self, sql: str, *params: Any) -> Sequence[Any] | None:
        row: Sequence[Any] | None = await anyio.to_thread.run_sync(
            lambda: self._con.execute(sql, params).fetchone(), limiter=self._limiter
        )
        return row

    async def chunks(self, sql: str, *params: Any) -> AsyncGenerator[list[Sequence[Any]], None]:
        cursor = await anyio.to_thread.run_sync(
            lambda: self._con.execute(sql, params), limiter=self._limiter
        )
        try:
            while True:
                chunk: list[Sequence[Any]] = await anyio.to_thread.run_sync(
                    cursor.fetchmany, _CHUNK, limiter=self._limiter
                )
                if not chunk:
                    return
                yield chunk
        finally:
            cursor.close()


class SqliteJournal(JournalBase):
    """The journal on one SQLite file (``config.path``)."""

    _writer: sqlite3.Connection | None = None

    def _make_sql(self) -> Sql:
        self._write_limiter = anyio.CapacityLimiter(1)
        self._readers: list[sqlite3.Connection] = []
        self._pool_send: MemoryObjectSendStream[sqlite3.Connection] | None = None
        self._pool_receive: MemoryObjectReceiveStream[sqlite3.Connection] | None = None
        self._sync_level = ""
        return Sql("sqlite")

    # -- open / close -----------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(
            self.config.path,
            isolation_level=None,  # explicit BEGIN/COMMIT only
            check_same_thread=False,  # used from worker threads, one at a time (limiters)
            timeout=self.config.busy_timeout_ms / 1000.0,
        )
        con.execute(f"PRAGMA busy_timeout = {int(self.config.busy_timeout_ms)}")
        return con

    def _open_sync(self) -> None:
        Path(self.config.path).parent.mkdir(parents=True, exist_ok=True)
        writer = self._connect()
        try:
            mode = writer.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise JournalStateError(f"cannot enable WAL on {self.config.path}")
            self._set_sync(writer, self.config.synchronous)
            writer.execute("BEGIN IMMEDIATE")
            try:
                for statement in self._sql.ddl():
                    writer.execute(statement)
                has_state = writer.execute("SELECT COUNT(*) FROM chain_state").fetchone()[0]
                has_events = writer.execute("SELECT 1 FROM events LIMIT 1").fetchone()
                if not has_state and has_events:
                    raise JournalStateError("chain state missing while events exist: tampered?")
                writer.executemany(self._sql.init_state, self._genesis_state())
                writer.execute("COMMIT")
            except BaseException:
                writer.execute("ROLLBACK")
                raise
            readers = []
            for _ in range(self.config.pool_size):
                reader = self._connect()
                reader.execute("PRAGMA query_only = ON")
                readers.append(reader)
        except BaseException:
            writer.close()
            raise
        self._writer, self._readers = writer, readers

    def _close_sync(self) -> None:
        readers, writer = self._readers, self._writer
        self._readers, self._writer = [], None
        for reader in readers:
            reader.close()
        if writer is not None:
            writer.close()  # the last connection checkpoints the WAL into the database

    async def _open_backend(self) -> None:
        await anyio.to_thread.run_sync(self._open_sync, limiter=self._write_limiter)
        # Free reader connections (a pool of ``pool_size``): a long verify does not hold up
        # the duplicate checks of the pipeline.
        send, receive = anyio.create_memory_object_stream[sqlite3.Connection](len(self._readers))
        for reader in self._readers:
            send.send_nowait(reader)
        self._pool_send, self._pool_receive = send, receive

    async def _close_backend(self) -> None:
        send, receive = self._pool_send, self._pool_receive
        if send is not None and receive is not None:
            with send, receive:
                for _ in self._readers:  # wait until every reader is back in the pool
                    await receive.receive()
        self._pool_send = self._pool_receive = None
        await anyio.to_thread.run_sync(self._close_sync, limiter=self._write_limiter)

    # -- writes -----------------------------------------------------------------------------

    def _set_sync(self, con: sqlite3.Connection, level: str) -> None:
        if level != self._sync_level:
            con.execute(f"PRAGMA synchronous = {level}")
            self._sync_level = level

    async def _commit(self, ops: list[Op]) -> None:
        await anyio.to_thread.run_sync(self._commit_sync, ops, limiter=self._write_limiter)

    def _commit_sync(self, ops: list[Op]) -> None:
        con = self._writer
        if con is None:
            raise JournalClosedError("the journal is closed")
        level = self.config.synchronous
        if level != "OFF" and not any(op.durable for op in ops):
            level = "NORMAL"  # commit without waiting for the fsync
        self._set_sync(con, level)
        con.execute("BEGIN IMMEDIATE")
        try:
            self._apply(con, ops)
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise

    def _apply(self, con: sqlite3.Connection, ops: list[Op]) -> None:
        sql = self._sql
        appends = [op for op in ops if op.kind is OpKind.APPEND]
        if appends:
            seq, mac, _ = con.execute(sql.get_state, ("head",)).fetchone()
            rows = []
            for op in appends:
                seq += 1
                values = (seq, *op.args[0])
                mac = self._chain.mac(mac, values)
                rows.append((*values, mac))
                op.result = seq
            con.executemany(sql.insert_event, rows)
            for present, params in upsert_groups(rows):
                con.executemany(sql.partial_upsert(present), params)
            con.execute(sql.set_state, (seq, mac, self._chain.tag("head", seq, mac), "head"))
        for op in ops:
            if op.kind is OpKind.APPEND:
                advice = op.args[1]
                advice_id = None
                if advice is not None:
                    advice_id = con.execute(sql.insert_advice, advice).fetchone()[0]
                op.result = (op.result, advice_id)
            elif op.kind is OpKind.ENQUEUE:
                op.result = con.execute(sql.insert_advice, op.args).fetchone()[0]
            elif op.kind is OpKind.ACK:
                op.result = con.execute(sql.ack, (op.args,)).rowcount > 0
            elif op.kind is OpKind.RESCHEDULE:
                op.result = con.execute(sql.reschedule, op.args).rowcount > 0
            else:
                custom: Custom = op.args
                op.result = custom(con)

    def _archive_commit_op(self, prev: tuple[int, bytes], new: tuple[int, bytes]) -> Custom:
        def run(con: sqlite3.Connection) -> int:
            anchor = con.execute(self._sql.get_state, ("anchor",)).fetchone()
            self._check_anchor(anchor, prev[0], prev[1], self.ARCHIVE_MOVED)
            con.execute(self._sql.delete_events_upto, (new[0],))
            removed = con.execute(self._sql.delete_txns_upto, (new[0],)).rowcount
            con.execute(self._sql.set_state, (*new, self._chain.tag("anchor", *new), "anchor"))
            return int(removed)

        return run

    def _replay(self, con: sqlite3.Connection, cursor: sqlite3.Cursor) -> int:
        count = 0
        while chunk := cursor.fetchmany(_CHUNK):
            con.executemany(self._sql.upsert_txn, [txn_params(row) for row in chunk])
            count += len(chunk)
        return count

    def _restore_op(self, path: Path, info: ArchiveInfo) -> Custom:
        def run(con: sqlite3.Connection) -> int:
            anchor = con.execute(self._sql.get_state, ("anchor",)).fetchone()
            self._check_anchor(anchor, info.last_seq, info.last_mac, self.RESTORE_MISMATCH)
            con.executemany(self._sql.insert_event, read_rows(path))
            prev = (info.prev_seq, info.prev_mac)
            con.execute(self._sql.set_state, (*prev, self._chain.tag("anchor", *prev), "anchor"))
            span = (info.prev_seq, info.last_seq)
            con.execute(self._sql.delete_txns_of_range, span)
            return self._replay(con, con.execute(self._sql.events_of_range_txns, span))

        return run

    def _rebuild_op(self) -> Custom:
        def run(con: sqlite3.Connection) -> int:
            con.execute(self._sql.delete_all_txns)
            return self._replay(con, con.execute(self._sql.events_after, (-1,)))

        return run

    # -- reads ------------------------------------------------------------------------------

    async def _lone(self, call: Callable[[sqlite3.Connection], Any]) -> Any:
        """One statement on a pooled reader in one worker-thread hop: in autocommit mode a
        lone SELECT is its own read transaction (one snapshot), so it needs no BEGIN/COMMIT
        round trips of its own (SAF polls, duplicate and original lookups)."""
        send, receive = self._pool_send, self._pool_receive
        if self._writer is None or send is None or receive is None:
            raise JournalClosedError("the journal is closed")
        con = await receive.receive()
        try:
            return await anyio.to_thread.run_sync(call, con)
        finally:
            send.send_nowait(con)

    async def _fetchone(self, sql: str, *params: Any) -> Sequence[Any] | None:
        row: Sequence[Any] | None = await self._lone(
            lambda con: con.execute(sql, params).fetchone()
        )
        return row

    async def _fetchall(self, sql: str, *params: Any) -> list[Sequence[Any]]:
        rows: list[Sequence[Any]] = await self._lone(
            lambda con: con.execute(sql, params).fetchall()
        )
        return rows

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[Reader]:
        send, receive = self._pool_send, self._pool_receive
        if self._writer is None or send is None or receive is None:
            raise JournalClosedError("the journal is closed")
        con = await receive.receive()
        try:
            # One read transaction: every statement inside sees the same WAL snapshot.
            await anyio.to_thread.run_sync(con.execute, "BEGIN")
            try:
                yield _SqliteReader(con)
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(con.execute, "COMMIT")
        finally:
            send.send_nowait(con)
