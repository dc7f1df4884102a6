"""The SQLite write path: SQL on the loop, durability by one WAL fsync per durable batch in a
thread, a write lock held by another process waited for off the loop, checkpoints in the
background."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from gateway.journal import open_journal, sqlite
from gateway.journal.config import config_from_mapping
from tests.journal.conftest import answered, key_table, purchase

pytestmark = pytest.mark.anyio


def _config(path: Path, **overrides: Any) -> Any:
    return config_from_mapping({**key_table(), "path": str(path), **overrides})


class _FsyncSpy:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fds: list[int] = []
        self.threads: list[str] = []
        real = os.fdatasync

        def spy(fd: int) -> None:
            self.fds.append(fd)
            self.threads.append(threading.current_thread().name)
            real(fd)

        monkeypatch.setattr(os, "fdatasync", spy)  # sqlite.py syncs the WAL's data


async def test_durable_batch_fsyncs_the_wal_off_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "j.sqlite3"
    async with open_journal(_config(path)) as journal:
        spy = _FsyncSpy(monkeypatch)
        wal_inode = os.stat(f"{path}-wal").st_ino
        await journal.append(purchase("t1", "000001"))
        assert len(spy.fds) == 1
        assert os.fstat(spy.fds[0]).st_ino == wal_inode  # the WAL file, not the database
        assert spy.threads[0] != threading.main_thread().name
        await journal.append(purchase("t2", "000002"), durable=False)
        assert len(spy.fds) == 1  # nothing durable in that batch: no fsync
        assert (await journal.get("t1")) is not None


async def test_no_fsync_unless_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for level in ("NORMAL", "OFF"):
        path = tmp_path / f"{level}.sqlite3"
        async with open_journal(_config(path, synchronous=level)) as journal:
            spy = _FsyncSpy(monkeypatch)
            await journal.append(purchase("t1", "000001"))
            assert spy.fds == []


async def test_commit_is_on_the_loop_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    real = sqlite.SqliteJournal._apply

    def spy(self: sqlite.SqliteJournal, con: sqlite3.Connection, ops: list[Any]) -> None:
        seen.append(threading.current_thread().name)
        real(self, con, ops)

    monkeypatch.setattr(sqlite.SqliteJournal, "_apply", spy)
    async with open_journal(_config(tmp_path / "j.sqlite3")) as journal:
        await journal.append(purchase("t1", "000001"))
    assert seen == [threading.main_thread().name]


async def test_write_lock_held_elsewhere_is_waited_for_in_a_thread(tmp_path: Path) -> None:
    """Another process (the archive CLI) holds the write lock: the append waits for it,
    within busy_timeout, without blocking the loop."""
    path = tmp_path / "j.sqlite3"
    async with open_journal(_config(path, busy_timeout_ms=5000)) as journal:
        await journal.append(purchase("t0", "000000"))
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        ticks = 0
        done = anyio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await anyio.sleep(0.01)

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            threading.Timer(0.3, lambda: other.execute("COMMIT")).start()
            started = time.monotonic()
            seq = await journal.append(purchase("t1", "000001"))
            waited = time.monotonic() - started
            done.set()
        other.close()
        assert seq == 2
        assert waited >= 0.25
        assert ticks >= 10  # the loop kept running while the append waited
        stored = await journal.get("t1")
        assert stored is not None
        assert stored.state.value == "received"
        assert (await journal.verify()).ok


async def test_write_lock_never_released_fails_the_write(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    async with open_journal(_config(path, busy_timeout_ms=200)) as journal:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(Exception, match=r"not committed|locked"):
                await journal.append(purchase("t1", "000001"))
        finally:
            other.execute("ROLLBACK")
            other.close()
        await journal.append(purchase("t2", "000002"))  # and the journal goes on
        assert (await journal.get("t2")) is not None


async def test_checkpoints_run_in_the_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite, "CHECKPOINT_RECORDS", 20)
    path = tmp_path / "j.sqlite3"
    config = _config(path)
    async with open_journal(config) as journal:
        size0 = path.stat().st_size
        for i in range(60):
            await journal.append(purchase(f"t{i}", f"{i:06d}"))
            await journal.append(answered(f"t{i}", f"{i:06d}"))
        for _ in range(100):  # the checkpoint thread copies the WAL into the database
            if path.stat().st_size > size0:
                break
            await anyio.sleep(0.02)
        assert path.stat().st_size > size0
        assert (await journal.verify()).ok
        assert len(await journal.in_state(purchase("x", "000001").state)) == 0
    async with open_journal(config) as journal:  # same keys
        assert (await journal.verify()).count == 120


async def test_wal_stays_bounded_under_continuous_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes never pause here; the WAL must still start over after checkpoints (a
    checkpoint running beside the writer never catches up on its own)."""
    monkeypatch.setattr(sqlite, "CHECKPOINT_RECORDS", 50)
    path = tmp_path / "j.sqlite3"
    async with open_journal(_config(path)) as journal:
        counter = iter(range(2000))

        async def writer() -> None:
            for i in counter:
                await journal.append(purchase(f"t{i}", f"{i:06d}"))

        async with anyio.create_task_group() as tg:
            for _ in range(16):
                tg.start_soon(writer)
        wal = await anyio.Path(f"{path}-wal").stat()
        assert wal.st_size < 1_500_000, wal.st_size  # 2,000 records without a restart: about 5 MB
        assert (await journal.verify()).count == 2000
