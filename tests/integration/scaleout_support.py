"""Gateway processes for the scale-out tests: their config over a shared PostgreSQL journal
and Redis risk counters, start and stop, and the shared journal's books."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import asyncpg
import httpx
from anyio.abc import Process

from gateway.journal import SettlementTotal, open_journal
from gateway.journal import load_config as load_journal_config
from loadtest.procstat import free_port
from tests.helpers import DEMO_CONF

BIN = Path(sys.executable).parent


def write_risk_conf(tmp: Path, redis_url: str, prefix: str) -> Path:
    """The demo's rules on Redis under ``prefix``, where only the daily amount binds:
    velocity, count and score are opened up."""
    text = (DEMO_CONF / "risk.toml").read_text()
    text = text.replace('backend = "memory"', 'backend = "redis"')
    text = text.replace('url = "redis://127.0.0.1:6379/0"', f'url = "{redis_url}"')
    text = text.replace('prefix = "payswitch:risk:"', f'prefix = "{prefix}"')
    text = text.replace(
        "velocity = { count = 5, seconds = 60 }", "velocity = { count = 1000, seconds = 60 }"
    )
    text = text.replace("daily_count_per_card = 20 ", "daily_count_per_card = 1000 ")
    text = text.replace("[score]\nenabled = true", "[score]\nenabled = false")
    assert 'backend = "redis"' in text
    assert "count = 1000" in text
    assert "[score]\nenabled = false" in text
    risk = tmp / "risk.toml"
    risk.write_text(text)
    return risk


def write_gateway_conf(
    tmp: Path,
    name: str,
    issuers: dict[str, int],
    pki_dir: Path,
    risk: Path,
    hsm: int,
    journal: Path | None,
    *,
    qr_port: int = -1,
) -> tuple[Path, int, int]:
    port, admin = free_port(), free_port()
    conf = tmp / f"{name}.toml"
    conf.write_text(
        f'data = "{DEMO_CONF / "data.toml"}"\npki_dir = "{pki_dir}"\nrisk = "{risk}"\n'
        + (f'journal = "{journal}"\n' if journal is not None else "")
        + f"node = {1 if name == 'gw1' else 2}\n"
        f"[terminal]\nport = {port}\ntls_port = -1\n[admin]\nport = {admin}\n"
        f'[qr_api]\nport = {qr_port}\n[hsm]\nendpoints = ["127.0.0.1:{hsm}"]\n'
        '[log]\nlevel = "warning"\ntransactions = false\n'
        + "".join(
            f'[[links]]\nissuer = "{i}"\nendpoints = ["127.0.0.1:{p}"]\nconnections = 1\n'
            for i, p in issuers.items()
        )
    )
    return conf, port, admin


async def wait_ready(admin: int, proc: Process) -> None:
    async with httpx.AsyncClient() as http:
        with anyio.fail_after(60):
            while True:
                assert proc.returncode is None, "gateway exited during start"
                try:
                    if (await http.get(f"http://127.0.0.1:{admin}/readyz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await anyio.sleep(0.1)


@asynccontextmanager
async def gateway_process(
    conf: Path, admin: int, backend: str = "uvloop"
) -> AsyncIterator[Process]:
    proc = await anyio.open_process(
        [str(BIN / "gateway"), "run", "--conf", str(conf), "--backend", backend],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_ready(admin, proc)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        with anyio.move_on_after(15):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proc.aclose()


def write_journal_conf(tmp: Path, dsn: str, schema: str) -> Path:
    text = (DEMO_CONF / "journal.toml").read_text()
    text = text.replace('backend = "sqlite"', 'backend = "postgres"')
    text = text.replace('path = "var/journal.sqlite3"', f'dsn = "{dsn}"\nschema = "{schema}"')
    text = text.replace('writer = "process"', 'writer = "loop"')  # PostgreSQL writes itself
    assert 'backend = "postgres"' in text
    conf = tmp / "journal.toml"
    conf.write_text(text)
    return conf


async def journal_books(conf: Path) -> list[SettlementTotal]:
    async with open_journal(load_journal_config(conf)) as journal:
        assert (await journal.verify()).ok
        return await journal.settlement(dt.datetime.now(dt.UTC).date())


async def drop_schema(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()
