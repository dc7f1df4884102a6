"""What is on disk in the SQLite file: no clear PAN anywhere, and raw edits are caught."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway.journal import NewAdvice, open_journal
from gateway.journal.config import config_from_mapping
from tests.journal.conftest import NOW, PAN, answered, key_table, purchase

pytestmark = pytest.mark.anyio


def _config(path: Path) -> Any:
    return config_from_mapping({**key_table(), "path": str(path)})


def _disk_bytes(path: Path) -> bytes:
    """The database, its WAL and shared-memory file, as they are on disk right now."""
    return b"".join(
        p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()
    )


def _disk_bytes_main(path: Path) -> bytes:
    return path.read_bytes()


async def test_no_clear_pan_or_track_data_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    config = _config(path)
    async with open_journal(config) as journal:
        for i in range(20):
            await journal.append(purchase(f"t{i}", f"{i:06d}"))
            await journal.append(answered(f"t{i}", f"{i:06d}"))
        await journal.enqueue_advice(
            NewAdvice(
                issuer_id="alpha",
                kind="0420",
                txn_id="t1",
                fields={"2": PAN, "35": PAN + "=2812"},
                created_at=NOW,
            )
        )
        live = _disk_bytes(path)  # the WAL still holds the recent pages
        assert len(live) > len(_disk_bytes_main(path))
    closed = _disk_bytes(path)  # checkpointed into the main file
    for blob in (live, closed):
        assert PAN.encode() not in blob
        assert PAN.encode("utf-16-le") not in blob
        assert b"0123456789ABCDEF" not in blob  # the PIN block of the request
        assert b"=28121010000000000000" not in blob  # track 2 discretionary data
    assert b"476173******0011" in closed  # only the masked PAN is readable


def _edit_file(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert data.count(old) == 2  # the event row and its index row
    path.write_bytes(data.replace(old, new))
    with sqlite3.connect(path) as con:  # still a valid database: only the chain can tell
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_verify_catches_a_byte_edit_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    config = _config(path)
    async with open_journal(config) as journal:
        await journal.append(purchase("t1", "000001", merchant_id="MERCHANT000001"))
        await journal.append(purchase("t2", "000002", merchant_id="MERCHANT000002"))
        await journal.append(purchase("t3", "000003", merchant_id="MERCHANT000003"))
    # Same length, so SQLite still reads the page; both copies (event and index) change.
    _edit_file(path, b"MERCHANT000002", b"MERCHANT000009")
    async with open_journal(config) as journal:
        result = await journal.verify()
    assert not result.ok
    assert result.broken_seq == 2
    assert result.count == 1


async def test_default_keys_are_required(tmp_path: Path) -> None:
    from gateway.journal import JournalConfigError

    with pytest.raises(JournalConfigError, match="no data key"):
        open_journal(config_from_mapping({"path": str(tmp_path / "j.sqlite3")}))
