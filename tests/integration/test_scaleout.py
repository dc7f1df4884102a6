"""Two gateway processes sharing one Redis and one PostgreSQL: limits and books stay exact
across them (issues 5 and 7)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import asyncpg
import httpx
import pytest
from anyio.abc import Process

from gateway.journal import SettlementTotal, open_journal
from gateway.journal import load_config as load_journal_config
from hsm_sim.config import load_config as load_hsm_config
from hsm_sim.server import HsmServer
from issuer_sim.server import IssuerServer
from loadtest.procstat import free_port
from tests.helpers import DEMO_CONF, ISSUERS, demo_dataset, issuer_server, purchase, terminal

BIN = Path(sys.executable).parent
RICH = "4761730000000060"  # balance 99,999,999: only the switch's limits stop it

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.redis]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the gateways are separate processes; the test side needs one backend


def write_gateway_conf(
    tmp: Path,
    name: str,
    issuers: dict[str, int],
    pki_dir: Path,
    risk: Path,
    hsm: int,
    journal: Path,
) -> tuple[Path, int, int]:
    port, admin = free_port(), free_port()
    conf = tmp / f"{name}.toml"
    conf.write_text(
        f'data = "{DEMO_CONF / "data.toml"}"\npki_dir = "{pki_dir}"\nrisk = "{risk}"\n'
        f'journal = "{journal}"\n'
        f"node = {1 if name == 'gw1' else 2}\n"
        f"[terminal]\nport = {port}\ntls_port = -1\n[admin]\nport = {admin}\n"
        f'[qr_api]\nport = -1\n[hsm]\nendpoints = ["127.0.0.1:{hsm}"]\n'
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
async def gateway_process(conf: Path, admin: int) -> AsyncIterator[Process]:
    proc = await anyio.open_process(
        [str(BIN / "gateway"), "run", "--conf", str(conf), "--backend", "uvloop"],
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


@pytest.mark.postgres
async def test_two_gateway_processes_share_limits_and_books_exactly(
    redis_url: str, postgres_dsn: str, pki_dir: Path, tmp_path: Path
) -> None:
    schema = f"scaleout_{uuid.uuid4().hex[:12]}"
    journal = write_journal_conf(tmp_path, postgres_dsn, schema)
    try:
        await _run_two_gateways(redis_url, pki_dir, tmp_path, journal)
    finally:
        await drop_schema(postgres_dsn, schema)


async def _run_two_gateways(redis_url: str, pki_dir: Path, tmp_path: Path, journal: Path) -> None:
    prefix = f"payswitch:test:{uuid.uuid4().hex}:"
    text = (DEMO_CONF / "risk.toml").read_text()
    text = text.replace('backend = "memory"', 'backend = "redis"')
    text = text.replace('url = "redis://127.0.0.1:6379/0"', f'url = "{redis_url}"')
    text = text.replace('prefix = "payswitch:risk:"', f'prefix = "{prefix}"')
    # Only the daily amount binds: velocity, count and score are opened up.
    text = text.replace(
        "velocity = { count = 5, seconds = 60 }", "velocity = { count = 1000, seconds = 60 }"
    )
    text = text.replace("daily_count_per_card = 20 ", "daily_count_per_card = 1000 ")
    text = text.replace("enabled = true", "enabled = false")
    risk = tmp_path / "risk.toml"
    risk.write_text(text)
    assert 'backend = "redis"' in text
    assert "count = 1000" in text

    dataset = demo_dataset()
    async with anyio.create_task_group() as tg:
        servers: dict[str, IssuerServer] = {}
        for issuer in ISSUERS:
            servers[issuer] = issuer_server(issuer, dataset, pki_dir)
            await tg.start(servers[issuer].run)
        hsm_cfg = dataclasses.replace(load_hsm_config(DEMO_CONF / "hsm.toml"), port=0)
        hsm_port = await tg.start(HsmServer(hsm_cfg).serve)
        ports = {i: s.port for i, s in servers.items()}
        common = (ports, pki_dir, risk, hsm_port, journal)
        conf1, port1, admin1 = write_gateway_conf(tmp_path, "gw1", *common)
        conf2, port2, admin2 = write_gateway_conf(tmp_path, "gw2", *common)
        before = servers["alpha"].host.book.find(RICH)
        assert before is not None
        opening = before.balance
        codes: list[str] = []

        async def one(port: int) -> None:
            async with terminal(port) as term:
                codes.append((await term.exchange(purchase(RICH, 100_000), timeout=60))["39"])

        async with (
            gateway_process(conf1, admin1),
            gateway_process(conf2, admin2),
            anyio.create_task_group() as load,
        ):
            for i in range(200):
                load.start_soon(one, port1 if i % 2 else port2)
        tg.cancel_scope.cancel()

    # 10,000,000 daily limit / 100,000 per purchase: exactly 100 fit, whichever process.
    assert codes.count("00") == 100, sorted(set(codes))
    assert codes.count("61") == 100
    after = servers["alpha"].host.book.find(RICH)
    assert after is not None
    assert opening - after.balance == 100 * 100_000
    # The shared journal's books agree with the issuer's, whichever process answered.
    books = [t for t in await journal_books(journal) if t.issuer_id == "alpha"]
    assert [(t.debit_count, t.debit_amount) for t in books] == [(100, 100 * 100_000)]
