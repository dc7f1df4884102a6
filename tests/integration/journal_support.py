"""Journal fixtures for the pipeline tests: a journal TOML per test, on SQLite or PostgreSQL
(asyncio only for PostgreSQL: asyncpg), and a few helpers that read the journal."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.journal import Journal, StoredTxn


@dataclass
class JournalSetup:
    backend: str
    conf: Path
    """The journal TOML to give the gateway (``journal = ...``)."""
    sqlite_path: Path | None = None


def write_conf(
    directory: Path, *, backend: str = "sqlite", dsn: str = "", schema: str = ""
) -> Path:
    lines = ["[journal]", f'backend = "{backend}"']
    if backend == "sqlite":
        lines.append(f'path = "{directory / "journal.sqlite3"}"')
    else:
        lines += [f'dsn = "{dsn}"', f'schema = "{schema}"']
    lines += [
        'active_key_id = "t1"',
        f'keys = [{{ id = "t1", hex = "{os.urandom(32).hex()}" }}]',
        f'lookup_key = {{ hex = "{os.urandom(32).hex()}" }}',
        f'chain_key = {{ hex = "{os.urandom(32).hex()}" }}',
    ]
    path = directory / "journal.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _drop_schema(dsn: str, schema: str) -> None:
    async def drop() -> None:
        import asyncpg

        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(drop())
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def journal_setup(
    request: pytest.FixtureRequest, tmp_path: Path, anyio_backend: tuple[str, dict[str, Any]]
) -> Iterator[JournalSetup]:
    """Body of a parametrized fixture (``request.param`` = ``sqlite`` | ``postgres``)."""
    if request.param == "sqlite":
        conf = write_conf(tmp_path)
        yield JournalSetup("sqlite", conf, tmp_path / "journal.sqlite3")
        return
    if anyio_backend[0] != "asyncio":
        pytest.skip("asyncpg runs on asyncio only; the PostgreSQL journal refuses trio")
    dsn: str = request.getfixturevalue("postgres_dsn")
    schema = f"jp_{uuid.uuid4().hex[:16]}"
    yield JournalSetup("postgres", write_conf(tmp_path, backend="postgres", dsn=dsn, schema=schema))
    _drop_schema(dsn, schema)


def journal_of(gateway: Gateway) -> Journal:
    journal = gateway.journal
    assert journal is not None, "the gateway runs without a journal"
    return journal


async def txn(gateway: Gateway, rrn: str) -> StoredTxn:
    stored = await journal_of(gateway).get(rrn)
    assert stored is not None, f"transaction {rrn} is not in the journal"
    return stored


async def saf_depth(gateway: Gateway, issuer: str) -> int:
    return (await journal_of(gateway).saf_depth(issuer)).depth
