"""Journal fixtures: the same tests run on SQLite and PostgreSQL (asyncio only for PG)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.journal import Journal, JournalConfig, JournalEvent, TxnState, open_journal
from gateway.journal.config import config_from_mapping

PAN = "4761730000000011"
NOW = datetime(2026, 3, 14, 12, 0, 0, tzinfo=UTC)


def key_table() -> dict[str, Any]:
    return {
        "active_key_id": "k1",
        "keys": [{"id": "k1", "hex": os.urandom(32).hex()}],
        "lookup_key": {"hex": os.urandom(32).hex()},
        "chain_key": {"hex": os.urandom(32).hex()},
    }


def _run_sync(coro_fn: Any) -> None:
    """Run asyncpg admin work on a private event loop in a thread (any test backend)."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(coro_fn())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


@dataclass
class Backend:
    """Builds journals on one backend and edits its storage behind the journal's back."""

    name: str
    table: dict[str, Any]
    dsn: str = ""
    schema: str = ""
    path: Path = field(default_factory=Path)

    def config(self, **overrides: Any) -> JournalConfig:
        return config_from_mapping({**self.table, **overrides})

    def open(self, **overrides: Any) -> Journal:
        return open_journal(self.config(**overrides))

    async def tamper(self, sql: str, *params: Any) -> None:
        """Execute raw SQL on the journal's tables (``?`` placeholders)."""
        if self.name == "sqlite":
            con = sqlite3.connect(self.path, isolation_level=None)
            try:
                con.execute(sql, params)
            finally:
                con.close()
            return
        import asyncpg

        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(f'SET search_path TO "{self.schema}"')
            counter = iter(range(1, 100))
            pg_sql = "".join(f"${next(counter)}" if ch == "?" else ch for ch in sql)
            await conn.execute(pg_sql, *params)
        finally:
            await conn.close()


@pytest.fixture(params=["sqlite", "sqlite-process", "postgres"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, anyio_backend: tuple[str, dict[str, Any]]
) -> Iterator[Backend]:
    table = key_table()
    if request.param in ("sqlite", "sqlite-process"):
        # sqlite-process: the same file written by the gateway's journal writer process.
        path = tmp_path / "journal.sqlite3"
        writer = "process" if request.param == "sqlite-process" else "loop"
        yield Backend("sqlite", {**table, "path": str(path), "writer": writer}, path=path)
        return
    if anyio_backend[0] != "asyncio":
        pytest.skip("asyncpg runs on asyncio only; the PostgreSQL journal refuses trio")
    dsn: str = request.getfixturevalue("postgres_dsn")
    schema = f"jt_{uuid.uuid4().hex[:16]}"
    table = {**table, "backend": "postgres", "dsn": dsn, "schema": schema}
    yield Backend("postgres", table, dsn=dsn, schema=schema)

    async def drop() -> None:
        import asyncpg

        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    _run_sync(drop)


def purchase(txn_id: str, stan: str, *, at: datetime = NOW, **extra: Any) -> JournalEvent:
    values: dict[str, Any] = {
        "mti": "0200",
        "processing_code": "000000",
        "amount": 1500,
        "currency": "156",
        "terminal_id": "TERM0001",
        "merchant_id": "MERCHANT000001",
        "stan": stan,
        "transmission": "0314120000",
        "issuer_id": "alpha",
        "pan": PAN,
        "request": {
            "t": "0200",
            "2": PAN,
            "4": "000000001500",
            "11": stan,
            "35": PAN + "=28121010000000000000",
            "52": "0123456789ABCDEF",
            "53": "FFFF9876543210E00001",
        },
    }
    values.update(extra)
    return JournalEvent(txn_id=txn_id, state=TxnState.RECEIVED, at=at, **values)


def answered(txn_id: str, stan: str, *, at: datetime = NOW, rc: str = "00") -> JournalEvent:
    return JournalEvent(
        txn_id=txn_id,
        state=TxnState.ANSWERED,
        at=at,
        response_code=rc,
        auth_code="A1B2C3" if rc == "00" else None,
        rrn="000000000001",
        response={"t": "0210", "2": PAN, "11": stan, "39": rc, "38": "A1B2C3"},
    )
