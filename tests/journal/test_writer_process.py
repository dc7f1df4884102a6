"""``writer = "process"``: the journal's batches are chained, written and synced by a child
process. (Every journal behaviour also runs on it: the ``sqlite-process`` backend of
tests/journal/conftest.py.) Here what only a second process can do: die, or outlive us."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.journal import JournalError, TxnState, open_journal
from gateway.journal.config import config_from_mapping
from gateway.journal.sqlite import SqliteJournal
from tests.journal.conftest import answered, key_table, purchase

pytestmark = pytest.mark.anyio


def _config(path: Path, table: dict[str, Any] | None = None) -> Any:
    return config_from_mapping({**(table or key_table()), "path": str(path), "writer": "process"})


def _child_pid(journal: Any) -> int:
    assert isinstance(journal, SqliteJournal)
    assert journal._process is not None
    pid = journal._process.pid
    assert pid is not None
    return pid


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


async def test_records_are_written_by_another_process_and_read_here(tmp_path: Path) -> None:
    async with open_journal(_config(tmp_path / "j.sqlite3")) as journal:
        pid = _child_pid(journal)
        assert pid != os.getpid()
        await journal.append(purchase("t1", "000001"))
        await journal.append(answered("t1", "000001"))
        stored = await journal.get("t1")
        assert stored is not None
        assert stored.state is TxnState.ANSWERED
        assert (await journal.verify()).ok
    assert _gone(pid, 10.0), "the writer outlived a closed journal"


async def test_a_dead_writer_is_a_journal_error_not_a_hang(tmp_path: Path) -> None:
    async with open_journal(_config(tmp_path / "j.sqlite3")) as journal:
        await journal.append(purchase("t1", "000001"))
        os.kill(_child_pid(journal), signal.SIGKILL)
        with pytest.raises(JournalError):
            await journal.append(purchase("t2", "000002"))
        # What was committed before stays readable here.
        assert await journal.get("t1") is not None


def test_the_writer_ends_with_a_killed_gateway_and_keeps_what_it_acknowledged(
    tmp_path: Path,
) -> None:
    """SIGKILL of the process owning the journal: its writer reads the end of its input,
    finishes and exits; every record the owner saw acknowledged is there, the chain intact."""
    table = key_table()
    path = tmp_path / "j.sqlite3"
    script = textwrap.dedent(
        f"""
        import anyio, os, signal, sys
        from gateway.journal import open_journal
        from gateway.journal.config import config_from_mapping
        from tests.journal.conftest import purchase

        async def main():
            table = {{**{table!r}, "path": {str(path)!r}, "writer": "process"}}
            config = config_from_mapping(table)
            async with open_journal(config) as journal:
                for i in range(50):
                    await journal.append(purchase(f"t{{i}}", f"{{i:06d}}"))
                print(journal._process.pid, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)

        anyio.run(main)
        """
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == -signal.SIGKILL, out.stderr
    writer = int(out.stdout.split()[0])
    assert _gone(writer, 10.0), "the writer outlived its killed owner"

    async def check() -> None:
        async with open_journal(_config(path, table)) as journal:
            assert (await journal.verify()).ok
            for i in range(50):
                assert await journal.get(f"t{i}") is not None

    import anyio

    anyio.run(check)
