"""``workers = 2`` with card affinity, as separate processes on real sockets: in-memory risk
counters and one SQLite journal per worker, and still exact limits, one authorization per
duplicate transmission, and reversals that find their original, whichever worker the
terminal's connection landed on (gateway/edge/affinity.py)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
from pathlib import Path

import anyio
import httpx
import pytest

from gateway.journal import load_config as load_journal_config
from gateway.journal import open_journal
from gateway.journal.config import node_path
from loadtest.procstat import free_port
from tests.helpers import DEMO_CONF, purchase, reversal_of, terminal
from tests.integration.scaleout_support import gateway_process, wait_ready
from tests.integration.test_scaleout import RICH, simulators

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

CARD = "4761730000000011"  # alpha, balance 1,000,000


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the gateways are separate processes; the test side needs one backend


def memory_risk(tmp: Path) -> Path:
    """The demo's rules in memory, where only the daily amount binds."""
    text = (DEMO_CONF / "risk.toml").read_text()
    text = text.replace(
        "velocity = { count = 5, seconds = 60 }", "velocity = { count = 1000, seconds = 60 }"
    )
    text = text.replace("daily_count_per_card = 20 ", "daily_count_per_card = 1000 ")
    text = text.replace("[score]\nenabled = true", "[score]\nenabled = false")
    assert 'backend = "memory"' in text
    assert "count = 1000" in text
    risk = tmp / "risk.toml"
    risk.write_text(text)
    return risk


def sqlite_journal(tmp: Path) -> Path:
    text = (DEMO_CONF / "journal.toml").read_text()
    text = text.replace('path = "var/journal.sqlite3"', f'path = "{tmp / "journal.sqlite3"}"')
    assert str(tmp) in text
    conf = tmp / "journal.toml"
    conf.write_text(text)
    return conf


def two_workers_conf(
    tmp: Path, issuers: dict[str, int], pki_dir: Path, hsm: int
) -> tuple[Path, int, int]:
    port = free_port()
    admin = free_port()
    while not _free(admin + 1):  # worker 1 listens on admin + 1
        admin = free_port()
    conf = tmp / "gateway.toml"
    conf.write_text(
        f'data = "{DEMO_CONF / "data.toml"}"\npki_dir = "{pki_dir}"\n'
        f'risk = "{memory_risk(tmp)}"\njournal = "{sqlite_journal(tmp)}"\n'
        "workers = 2\nnode = 1\n"
        f"[terminal]\nport = {port}\ntls_port = -1\n[admin]\nport = {admin}\n"
        f'[qr_api]\nport = -1\n[hsm]\nendpoints = ["127.0.0.1:{hsm}"]\n'
        '[log]\nlevel = "warning"\ntransactions = false\n'
        + "".join(
            f'[[links]]\nissuer = "{i}"\nendpoints = ["127.0.0.1:{p}"]\nconnections = 1\n'
            for i, p in issuers.items()
        )
    )
    return conf, port, admin


def _free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def affinity_counts(admin: int) -> dict[str, float]:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{admin}/metrics")).text
    found = re.findall(r'switch_affinity_requests_total\{route="(\w+)"\} ([0-9.e+]+)', text)
    return {route: float(value) for route, value in found}


async def test_two_workers_keep_limits_duplicates_and_reversals_exact(
    pki_dir: Path, tmp_path: Path
) -> None:
    async with simulators(pki_dir) as (servers, hsm_port):
        ports = {i: s.port for i, s in servers.items()}
        conf, port, admin = two_workers_conf(tmp_path, ports, pki_dir, hsm_port)
        account = servers["alpha"].host.book.find(RICH)
        assert account is not None
        opening = account.balance
        card = servers["alpha"].host.book.find(CARD)
        assert card is not None
        card_opening = card.balance
        codes: list[str] = []

        async def one() -> None:
            async with terminal(port) as term:
                codes.append((await term.exchange(purchase(RICH, 100_000), timeout=60))["39"])

        async with gateway_process(conf, admin) as proc:
            await wait_ready(admin + 1, proc)
            # 200 connections: the kernel spreads them over both workers.
            async with anyio.create_task_group() as load:
                for _ in range(200):
                    load.start_soon(one)
            # One request retransmitted on six new connections: one authorization, one answer.
            dup = purchase(CARD, 100, stan="424242", transmission="1207101010")
            answers = []
            for _ in range(6):
                async with terminal(port) as term:
                    answers.append(await term.exchange(dup, timeout=30))
            # Its reversal, on yet other connections, finds the original.
            reversal = reversal_of(dup)
            async with terminal(port) as term:
                reversed_ = await term.exchange(reversal, timeout=30)
            counts = [await affinity_counts(a) for a in (admin, admin + 1)]

    # 10,000,000 daily limit / 100,000 per purchase: exactly 100 fit, whichever worker.
    assert codes.count("00") == 100, sorted(set(codes))
    assert codes.count("61") == 100
    assert {a["39"] for a in answers} == {"00"}
    assert len({a["37"] for a in answers}) == 1  # the original answer, replayed
    assert reversed_["39"] == "00"
    after = servers["alpha"].host.book.find(RICH)
    assert after is not None
    assert opening - after.balance == 100 * 100_000
    card_after = servers["alpha"].host.book.find(CARD)
    assert card_after is not None
    assert card_after.balance == card_opening
    # Requests were handed between the workers, and every one ran in the card's owner.
    assert sum(c.get("remote", 0) for c in counts) > 0, counts
    assert sum(c.get("unavailable", 0) for c in counts) == 0, counts
    # The owner's journal holds the card's books; the other worker's holds none of them.
    base = load_journal_config(sqlite_journal(tmp_path))
    totals = []
    for node in (1, 2):
        cfg = dataclasses.replace(base, path=node_path(base.path, node))
        if not os.path.exists(cfg.path):  # noqa: ASYNC240 - once, after the run
            continue
        async with open_journal(cfg) as journal:
            assert (await journal.verify()).ok
            totals += [
                (t.debit_count, t.debit_amount)
                for t in await journal.settlement(dt.datetime.now(dt.UTC).date())
                if t.issuer_id == "alpha"
            ]
    assert totals == [(100, 100 * 100_000)]  # the reversed duplicate nets out
