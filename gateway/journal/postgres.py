"""PostgreSQL backend via asyncpg (scale-out): several gateways may share one journal.

asyncpg runs on asyncio only (uvloop included); on trio, entering the journal raises
:class:`UnsupportedBackendError` (use the SQLite backend there).

One dedicated connection writes: each group-commit batch is one transaction that locks the
chain head (``SELECT ... FOR UPDATE``, which also serializes appenders of other gateway
instances), COPYs the event rows, upserts the index with ``executemany`` and moves the head.
A pool serves reads, each in a read-only REPEATABLE READ transaction (one snapshot).
Durable batches commit with the server's ``synchronous_commit`` (on by default); a batch of
only ``durable=False`` records sets it off for that transaction.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import sniffio

from gateway.journal.archive import ArchiveInfo, read_rows
from gateway.journal.base import JournalBase, Reader
from gateway.journal.chain import EVENT_COLUMNS
from gateway.journal.errors import JournalClosedError, UnsupportedBackendError
from gateway.journal.groupcommit import Op, OpKind
from gateway.journal.rows import txn_params
from gateway.journal.sql import Sql

_CHUNK = 2000
Custom = Callable[[Any], Awaitable[Any]]


class _PgReader:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def fetchall(self, sql: str, *params: Any) -> list[Sequence[Any]]:
        return [tuple(r) for r in await self._conn.fetch(sql, *params)]

    async def fetchone(self, sql: str, *params: Any) -> Sequence[Any] | None:
        row = await self._conn.fetchrow(sql, *params)
        return None if row is None else tuple(row)

    async def chunks(self, sql: str, *params: Any) -> AsyncGenerator[list[Sequence[Any]], None]:
        cursor = await self._conn.cursor(sql, *params)
        while chunk := await cursor.fetch(_CHUNK):
            yield [tuple(r) for r in chunk]


class PostgresJournal(JournalBase):
    """The journal in schema ``config.schema`` of the database at ``config.dsn``."""

    _pool: Any = None
    _wconn: Any = None

    def _make_sql(self) -> Sql:
        return Sql("postgres", self.config.schema)

    # -- open / close -----------------------------------------------------------------------

    async def _open_backend(self) -> None:
        if sniffio.current_async_library() != "asyncio":
            raise UnsupportedBackendError(
                "the PostgreSQL journal needs asyncio (asyncpg does not run on trio); "
                "use backend = 'sqlite' on trio"
            )
        conn = await asyncpg.connect(self.config.dsn)
        try:
            async with conn.transaction():
                # Gateways starting together must not race on CREATE ... IF NOT EXISTS.
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self.config.schema)
                for statement in self._sql.ddl():
                    await conn.execute(statement)
                for table, column in self._sql.ADDED_COLUMNS:
                    # Looked up first: ALTER TABLE locks the table even when it has the column
                    # (other nodes may be writing it).
                    have = await conn.fetchval(
                        "SELECT 1 FROM information_schema.columns WHERE table_schema = $1 "
                        "AND table_name = $2 AND column_name = $3",
                        self.config.schema,
                        table,
                        column,
                    )
                    if not have:
                        await conn.execute(self._sql.add_column(table, column))
                await conn.executemany(self._sql.init_state, self._genesis_state())
            self._pool = await asyncpg.create_pool(
                self.config.dsn, min_size=1, max_size=self.config.pool_size
            )
        except BaseException:
            await conn.close()
            raise
        self._wconn = conn

    async def _close_backend(self) -> None:
        pool, conn = self._pool, self._wconn
        self._pool = self._wconn = None
        if conn is not None:
            await conn.close()
        if pool is not None:
            await pool.close()

    async def _writer(self) -> Any:
        if self._pool is None:
            raise JournalClosedError("the journal is closed")
        if self._wconn is None or self._wconn.is_closed():
            self._wconn = await asyncpg.connect(self.config.dsn)  # server restarted: reconnect
        return self._wconn

    # -- writes -----------------------------------------------------------------------------

    async def _lock_head(self, conn: Any) -> tuple[int, bytes]:
        row = await conn.fetchrow(self._sql.get_state, "head")
        return int(row[0]), bytes(row[1])

    async def _commit(self, ops: list[Op]) -> None:
        conn = await self._writer()
        sql = self._sql
        async with conn.transaction():
            if not any(op.durable for op in ops):
                await conn.execute("SET LOCAL synchronous_commit TO OFF")
            appends = [op for op in ops if op.kind is OpKind.APPEND]
            if appends:
                seq, mac = await self._lock_head(conn)
                rows = []
                for op in appends:
                    seq += 1
                    values = (seq, *op.args[0])
                    mac = self._chain.mac(mac, values)
                    rows.append((*values, mac))
                    op.result = seq
                await conn.copy_records_to_table(
                    "events", records=rows, columns=EVENT_COLUMNS, schema_name=self.config.schema
                )
                await conn.executemany(sql.upsert_txn, [txn_params(row) for row in rows])
                await conn.execute(
                    sql.set_state, seq, mac, self._chain.tag("head", seq, mac), "head"
                )
            for op in ops:
                if op.kind is OpKind.APPEND:
                    advice = op.args[1]
                    advice_id = None
                    if advice is not None:
                        advice_id = await conn.fetchval(sql.insert_advice, *advice)
                    op.result = (op.result, advice_id)
                elif op.kind is OpKind.ENQUEUE:
                    op.result = await conn.fetchval(sql.insert_advice, *op.args)
                elif op.kind is OpKind.ACK:
                    op.result = (await conn.execute(sql.ack, op.args)) != "DELETE 0"
                elif op.kind is OpKind.RESCHEDULE:
                    op.result = (await conn.execute(sql.reschedule, *op.args)) != "UPDATE 0"
                elif op.kind is OpKind.CLAIM:
                    op.result = (await conn.execute(sql.claim_advice, *op.args)) != "UPDATE 0"
                else:
                    custom: Custom = op.args
                    op.result = await custom(conn)

    def _archive_commit_op(self, prev: tuple[int, bytes], new: tuple[int, bytes]) -> Custom:
        async def run(conn: Any) -> int:
            await self._lock_head(conn)
            anchor = await conn.fetchrow(self._sql.get_state, "anchor")
            self._check_anchor(anchor, prev[0], prev[1], self.ARCHIVE_MOVED)
            await conn.execute(self._sql.delete_events_upto, new[0])
            status = await conn.execute(self._sql.delete_txns_upto, new[0])
            await conn.execute(self._sql.set_state, *new, self._chain.tag("anchor", *new), "anchor")
            return int(status.split()[-1])

        return run

    async def _replay(self, conn: Any, page_sql: str, *params: Any) -> int:
        after, count = -1, 0
        while rows := await conn.fetch(page_sql, *params, after, _CHUNK):
            await conn.executemany(self._sql.upsert_txn, [txn_params(tuple(r)) for r in rows])
            after = rows[-1][0]
            count += len(rows)
        return count

    def _restore_op(self, path: Path, info: ArchiveInfo) -> Custom:
        async def run(conn: Any) -> int:
            await self._lock_head(conn)
            anchor = await conn.fetchrow(self._sql.get_state, "anchor")
            self._check_anchor(anchor, info.last_seq, info.last_mac, self.RESTORE_MISMATCH)
            rows = read_rows(path)
            while chunk := await anyio.to_thread.run_sync(
                lambda: list(itertools.islice(rows, _CHUNK))
            ):
                await conn.copy_records_to_table(
                    "events", records=chunk, columns=EVENT_COLUMNS, schema_name=self.config.schema
                )
            prev = (info.prev_seq, info.prev_mac)
            await conn.execute(
                self._sql.set_state, *prev, self._chain.tag("anchor", *prev), "anchor"
            )
            span = (info.prev_seq, info.last_seq)
            await conn.execute(self._sql.delete_txns_of_range, *span)
            return await self._replay(conn, self._sql.events_of_range_txns_page, *span)

        return run

    def _rebuild_op(self) -> Custom:
        async def run(conn: Any) -> int:
            await self._lock_head(conn)
            await conn.execute(self._sql.delete_all_txns)
            return await self._replay(conn, self._sql.events_page)

        return run

    # -- reads ------------------------------------------------------------------------------

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[Reader]:
        pool = self._pool
        if pool is None:
            raise JournalClosedError("the journal is closed")
        async with (
            pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            yield _PgReader(conn)
