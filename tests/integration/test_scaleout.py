"""Two gateway processes sharing one Redis and one PostgreSQL: limits and books stay exact
across them (issues 5 and 7)."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import anyio
import pytest

from hsm_sim.config import load_config as load_hsm_config
from hsm_sim.server import HsmServer
from issuer_sim.server import IssuerServer
from tests.helpers import DEMO_CONF, ISSUERS, demo_dataset, issuer_server, purchase, terminal
from tests.integration.scaleout_support import (
    drop_schema,
    gateway_process,
    journal_books,
    write_gateway_conf,
    write_journal_conf,
    write_risk_conf,
)

RICH = "4761730000000060"  # balance 99,999,999: only the switch's limits stop it

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.redis]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the gateways are separate processes; the test side needs one backend


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
    risk = write_risk_conf(tmp_path, redis_url, prefix)

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
