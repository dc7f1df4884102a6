"""Embedded SQLite backend (default): stdlib sqlite3, WAL, group commit, durable by fsync.

Connections: the writer, used only by the committer's batches; a pool of readers (WAL readers
never block the writer); and one for checkpoints.

A batch of appends is written *on the event loop*: ``BEGIN IMMEDIATE`` ... ``COMMIT`` with
``synchronous=NORMAL`` (the frames reach the WAL file, no fsync), then, when the batch holds a
durable record and the configuration asks for ``FULL``, one ``fsync`` of the WAL file in a
worker thread before any writer is released. That is exactly what ``synchronous=FULL`` does
at commit, but the SQL work no longer runs in a second thread: each ``sqlite3_step`` releases
and re-takes the GIL, and with a busy event loop every one of those hand-offs was a futex
round trip and a wait (measured: ~15k futex calls per second at 2,500 TPS). The only thread
hop left per batch is the fsync, which holds no GIL while it waits for the disk.

Checkpoints would otherwise run inside a ``COMMIT`` (every 1000 pages) and block the loop on
two fsyncs: automatic checkpoints are off on the writer, and a ``PASSIVE`` checkpoint runs in
a worker thread on its own connection every ``CHECKPOINT_RECORDS`` records (it never blocks
the writer). Beside a writer that never pauses it never catches up, and SQLite starts the WAL
over only after one that did: so before the next batch a second, short pass copies the few
frames written meanwhile (measured: without it the WAL grew to 242 MB over 100,000 records;
with it, it stays near 10 MB).

Long operations (archive, restore, rebuild: ``CUSTOM`` ops) and a write lock held by another
process (the archive CLI: ``BEGIN IMMEDIATE`` gets ``SQLITE_BUSY`` at once on the loop) go to
a worker thread that waits up to ``busy_timeout``. The head of the chain is read inside each
write transaction, never cached. Runs on asyncio, uvloop and trio.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import sniffio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from gateway.journal.archive import ArchiveInfo, read_rows
from gateway.journal.base import JournalBase, Reader
from gateway.journal.errors import JournalClosedError, JournalStateError
from gateway.journal.groupcommit import Op, OpKind, SendFn
from gateway.journal.model import JournalEvent
from gateway.journal.rows import Prepared, defer_event, prepare_event, txn_params, upsert_groups
from gateway.journal.sql import Sql
from gateway.journal.writerproc import WriterProcess, settle
from kit.logs import get_logger

log = get_logger("gateway.journal")

_CHUNK = 2000
CHECKPOINT_RECORDS = 4000
"""Records appended between two background checkpoints (each dirties a few WAL pages)."""
Custom = Callable[[sqlite3.Connection], Any]
PIPELINE_DEPTH = 2
"""Batches handed to the writer process before the first is answered (it applies them in
order): the next leaves while one is written and synced."""


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
        self._checkpointer: sqlite3.Connection | None = None
        self._wal_fd: int | None = None
        self._since_checkpoint = 0
        self._checkpointing = False
        self._catch_up = False
        self._syncer = _Syncer()
        self._process: WriterProcess | None = None
        self._pool_send: MemoryObjectSendStream[sqlite3.Connection] | None = None
        self._pool_receive: MemoryObjectReceiveStream[sqlite3.Connection] | None = None
        return Sql("sqlite")

    @property
    def _commit_level(self) -> str:
        """The writer's own level: NORMAL (durability comes from our fsync) unless OFF."""
        return "OFF" if self.config.synchronous == "OFF" else "NORMAL"

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
            writer.execute(f"PRAGMA synchronous = {self.config.synchronous}")
            writer.execute("BEGIN IMMEDIATE")
            try:
                for statement in self._sql.ddl():
                    writer.execute(statement)
                for table, column in self._sql.ADDED_COLUMNS:
                    have = {row[1] for row in writer.execute(f"PRAGMA table_info({table})")}
                    if column not in have:
                        writer.execute(self._sql.add_column(table, column))
                has_state = writer.execute("SELECT COUNT(*) FROM chain_state").fetchone()[0]
                has_events = writer.execute("SELECT 1 FROM events LIMIT 1").fetchone()
                if not has_state and has_events:
                    raise JournalStateError("chain state missing while events exist: tampered?")
                writer.executemany(self._sql.init_state, self._genesis_state())
                writer.execute("COMMIT")
            except BaseException:
                writer.execute("ROLLBACK")
                raise
            # From here on the writer commits without syncing (the loop must never wait for
            # the disk) and never checkpoints; see the module docstring.
            writer.execute(f"PRAGMA synchronous = {self._commit_level}")
            writer.execute("PRAGMA wal_autocheckpoint = 0")
            writer.execute("PRAGMA busy_timeout = 0")
            wal_fd = os.open(f"{self.config.path}-wal", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            checkpointer = self._connect()
            try:
                checkpointer.execute(f"PRAGMA synchronous = {self._commit_level}")
                if self.config.synchronous == "FULL":
                    os.fsync(wal_fd)
                    _fsync_dir(Path(self.config.path).resolve().parent)  # the WAL's entry
                readers = self._new_readers()
            except BaseException:
                checkpointer.close()
                os.close(wal_fd)
                raise
        except BaseException:
            writer.close()
            raise
        self._writer, self._readers = writer, readers
        self._checkpointer, self._wal_fd = checkpointer, wal_fd

    def _close_sync(self) -> None:
        readers, writer, checkpointer = self._readers, self._writer, self._checkpointer
        self._readers, self._writer, self._checkpointer = [], None, None
        for reader in readers:
            reader.close()
        if checkpointer is not None:
            checkpointer.close()
        if writer is not None:
            # The last connection checkpoints the WAL into the database (synced, as the
            # configuration says) and removes it.
            writer.execute(f"PRAGMA synchronous = {self.config.synchronous}")
            writer.close()
        if self._wal_fd is not None:
            os.close(self._wal_fd)
            self._wal_fd = None

    def _new_readers(self) -> list[sqlite3.Connection]:
        """The pool's ``pool_size`` read-only connections (none left open on failure)."""
        readers: list[sqlite3.Connection] = []
        try:
            for _ in range(self.config.pool_size):
                reader = self._connect()
                reader.execute("PRAGMA query_only = ON")
                readers.append(reader)
        except BaseException:
            for con in readers:
                con.close()
            raise
        return readers

    def _open_readers_sync(self) -> None:
        """``writer = "process"``: this process only reads (the child created the file)."""
        self._readers = self._new_readers()

    async def _open_backend(self) -> None:
        if self.config.writer == "process":
            process = WriterProcess()
            await process.start(self.config, self._chain, self._protector)
            self._process = process
            self._commit_depth = PIPELINE_DEPTH
            try:
                await anyio.to_thread.run_sync(self._open_readers_sync)
            except BaseException:
                await process.aclose()
                raise
        else:
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
        self._syncer.close()
        if self._process is not None:
            await self._process.aclose()
        await anyio.to_thread.run_sync(self._close_sync, limiter=self._write_limiter)

    # -- writes -----------------------------------------------------------------------------

    def _sender(self) -> SendFn | None:
        process = self._process
        return process.send if process is not None and process.sends else None

    def _prepare_event(self, event: JournalEvent) -> Prepared:
        if self._process is not None:
            # The writer process encrypts it, on the other core (it holds the data keys).
            return defer_event(event)
        return prepare_event(event, self._protector)

    async def _commit(self, ops: list[Op]) -> None:
        if self._process is not None:
            if ops[0].kind is OpKind.CUSTOM:  # a closure: run here, as another writer would
                await anyio.to_thread.run_sync(self._custom_here, ops)
            else:
                await self._process.commit(ops)
            return
        if self._catch_up:
            # The background checkpoint copied the bulk while writes went on; this pass,
            # with no write running, copies the few frames since, so the next BEGIN starts
            # the WAL over (a checkpoint that never catches up lets the WAL grow forever).
            self._catch_up = False
            try:
                await anyio.to_thread.run_sync(self._checkpoint_sync)
            except sqlite3.Error as exc:  # the batch goes on; the next checkpoint retries
                log.warning("journal_checkpoint_failed", error=str(exc))
        if ops[0].kind is OpKind.CUSTOM:  # archive, restore, rebuild: long, off the loop
            await self._commit_in_thread(ops)
        else:
            try:
                self._commit_sync(ops)
            except _WriterBusy:  # another process holds the write lock: wait in a thread
                await self._commit_in_thread(ops)
        if self.config.synchronous == "FULL" and any(op.durable for op in ops):
            fd = self._wal_fd
            if fd is None:
                raise JournalClosedError("the journal is closed")
            await self._syncer.fsync(fd)
        self._since_checkpoint += len(ops)
        if self._since_checkpoint >= CHECKPOINT_RECORDS and not self._checkpointing:
            self._start_checkpoint()

    async def _commit_in_thread(self, ops: list[Op]) -> None:
        await anyio.to_thread.run_sync(self._commit_waiting, ops, limiter=self._write_limiter)

    def _commit_waiting(self, ops: list[Op]) -> None:
        """``_commit_sync`` allowed to wait ``busy_timeout`` for the write lock (in a thread)."""
        con = self._writer
        if con is None:
            raise JournalClosedError("the journal is closed")
        con.execute(f"PRAGMA busy_timeout = {int(self.config.busy_timeout_ms)}")
        try:
            self._commit_sync(ops, waiting=True)
        finally:
            con.execute("PRAGMA busy_timeout = 0")

    def _custom_here(self, ops: list[Op]) -> None:
        """``writer = "process"``: archive, restore or rebuild on a connection of this process,
        taking the write lock between two of the writer's batches (``busy_timeout``)."""
        con = self._connect()
        try:
            con.execute(f"PRAGMA synchronous = {self.config.synchronous}")
            con.execute("BEGIN IMMEDIATE")
            self._apply_and_commit(con, ops)
        finally:
            con.close()

    def _commit_sync(self, ops: list[Op], *, waiting: bool = False) -> None:
        con = self._writer
        if con is None:
            raise JournalClosedError("the journal is closed")
        try:
            con.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if not waiting and _is_busy(exc):
                raise _WriterBusy from None
            raise
        self._apply_and_commit(con, ops)

    def _apply_and_commit(self, con: sqlite3.Connection, ops: list[Op]) -> None:
        """Inside a begun write transaction: all of ``ops`` committed, or none (rolled back)."""
        try:
            self._apply(con, ops)
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise

    def _start_checkpoint(self) -> None:
        tg = self._tg
        if tg is None:
            return
        self._checkpointing = True
        self._since_checkpoint = 0
        tg.start_soon(self._checkpoint)

    async def _checkpoint(self) -> None:
        try:
            await anyio.to_thread.run_sync(self._checkpoint_sync)
            self._catch_up = True
        except sqlite3.Error as exc:  # a later one retries; the WAL only grows meanwhile
            log.warning("journal_checkpoint_failed", error=str(exc))
        finally:
            self._checkpointing = False

    def _checkpoint_sync(self) -> None:
        con = self._checkpointer
        if con is not None:
            con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

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
            elif op.kind is OpKind.CLAIM:
                op.result = con.execute(sql.claim_advice, op.args).rowcount > 0
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
        if send is None or receive is None:
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
        if send is None or receive is None:
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


_Job = tuple[int, asyncio.AbstractEventLoop, "asyncio.Future[None]"]


class _Syncer:
    """``fsync`` off the loop. On asyncio a dedicated thread fed by a ``SimpleQueue``
    (a C queue: no ``Condition`` to notify) that hands the result back with
    ``call_soon_threadsafe``; ``anyio.to_thread`` (a limiter, a cancel scope, a Python
    ``Queue``) cost more than the fsync's own CPU per batch. Elsewhere (trio) anyio's
    worker threads."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def fsync(self, fd: int) -> None:
        if sniffio.current_async_library() != "asyncio":
            await anyio.to_thread.run_sync(_sync_data, fd)
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="journal-fsync", daemon=True)
            self._thread.start()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._jobs.put((fd, loop, done))
        # Shielded like anyio.to_thread: the fsync runs to its end whatever the caller does.
        await asyncio.shield(done)

    def close(self) -> None:
        """Ends the thread once the jobs queued before have run."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            fd, loop, done = job
            error: BaseException | None = None
            try:
                _sync_data(fd)
            except BaseException as exc:  # handed to the waiting batch
                error = exc
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(settle, done, error)


class _WriterBusy(Exception):
    """``BEGIN IMMEDIATE`` on the loop found the write lock taken (by another process)."""


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return bool(code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED))
    return "locked" in str(exc) or "busy" in str(exc)


def _sync_data(fd: int) -> None:
    """The WAL's data on disk: ``fdatasync`` where there is one (what SQLite itself uses on
    Linux: no inode timestamp flush), else ``fsync``."""
    sync = getattr(os, "fdatasync", os.fsync)
    sync(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
