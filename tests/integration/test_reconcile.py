"""Reconciliation over real sockets: the day's purchases (approved, declined, reversed by the
terminal, stood in while the issuer was down and then advised) reconcile with no exception
against the issuer simulator's posting file; a posting the switch does not know is reported.
And the simulator writes its posting file on SIGUSR1."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from gateway.journal import TxnState
from gateway.journal.cli import run
from gateway.journal.reconcile import ISSUER_ONLY, MATCHED, read_postings
from issuer_sim.host import Posting
from issuer_sim.postings import write_postings
from issuer_sim.server import IssuerServer
from tests.helpers import (
    Stack,
    demo_dataset,
    eventually,
    issuer_server,
    purchase,
    reversal_of,
    terminal,
)
from tests.integration.journal_support import txn
from tests.integration.test_standin import OTHER, PAN, standin_stack, until

pytestmark = pytest.mark.anyio


@pytest.fixture
async def stack(pki_dir: Path, tmp_path: Path) -> AsyncIterator[Stack]:
    async with standin_stack(pki_dir, tmp_path) as s:
        yield s


async def _reconcile(conf: Path, postings: Path, day: str) -> tuple[int, dict[str, object]]:
    """The CLI as an operator runs it (its own event loop, in a thread)."""
    out = postings.with_suffix(".json")

    def cli() -> int:
        import contextlib
        import io

        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            args = ["reconcile", "--conf", str(conf), "--date", day, "--issuer", "alpha"]
            status = run([*args, "--file", str(postings)])
        out.write_text(buffer.getvalue())
        return status

    status = await anyio.to_thread.run_sync(cli)
    report: dict[str, object] = json.loads(out.read_text())
    return status, report


async def test_a_day_reconciles_then_an_unknown_posting_is_reported(
    stack: Stack, tmp_path: Path
) -> None:
    host = stack.issuers["alpha"].host
    async with terminal(stack.port) as term:
        approved = await term.exchange(purchase(PAN, 1000))
        declined = await term.exchange(purchase(OTHER, stack.account_balance("alpha", OTHER) + 1))
        req = purchase(PAN, 700)
        reversed_ = await term.exchange(req)
        assert (await term.exchange(reversal_of(req)))["39"] == "00"
    assert [r["39"] for r in (approved, declined, reversed_)] == ["00", "51", "00"]

    stack.issuers["alpha"].stop()
    await eventually(lambda: not stack.gateway.pools["alpha"].ready)
    async with terminal(stack.port) as term:
        stood_in = await term.exchange(purchase(PAN, 1200))
    assert stood_in["39"] == "00"
    await stack.restart_issuer("alpha")

    async def advised() -> bool:
        return (await txn(stack.gateway, stood_in["37"])).state == TxnState.ADVISED

    await until(advised)
    assert (await txn(stack.gateway, reversed_["37"])).state == TxnState.REVERSED
    day = (await txn(stack.gateway, approved["37"])).created_at.date().isoformat()
    await stack.stop_gateway(graceful=True)

    conf = tmp_path / "journal.toml"
    postings = tmp_path / "alpha-postings.csv"
    assert write_postings(host, postings) == 4
    assert PAN not in postings.read_text()
    assert {p.status for p in read_postings(postings)} == {"approved", "declined", "reversed"}
    status, report = await _reconcile(conf, postings, day)
    assert report["exceptions"] == []
    assert status == 0
    counts = report["counts"]
    assert isinstance(counts, dict)
    assert counts[MATCHED] == 4

    # A posting the switch never sent (the issuer's own, or another acquirer's by mistake).
    now = datetime.now(UTC)
    host.postings[("999999", now.strftime("%m%d%H%M%S"))] = Posting(
        "0200", "00", PAN, 4242, True, "777777"
    )
    write_postings(host, postings)
    status, report = await _reconcile(conf, postings, now.date().isoformat())
    assert status == 1
    exceptions = report["exceptions"]
    assert isinstance(exceptions, list)
    (unknown,) = exceptions
    assert unknown["category"] == ISSUER_ONLY
    assert (unknown["issuer_stan"], unknown["issuer_amount"], unknown["rrn"]) == (
        "999999",
        4242,
        None,
    )
    assert unknown["pan_masked"] == "476173******0011"


async def test_the_simulator_writes_its_postings_on_sigusr1(pki_dir: Path, tmp_path: Path) -> None:
    plain = issuer_server("alpha", demo_dataset(), pki_dir)
    path = tmp_path / "out" / "alpha.csv"
    server = IssuerServer(plain.host, plain.ssl_context, postings_file=path)
    server.host.postings[("000001", "0314120000")] = Posting("0200", "00", PAN, 1500, True, "1")
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        os.kill(os.getpid(), signal.SIGUSR1)
        with anyio.fail_after(10):
            while not path.exists():  # noqa: ASYNC110 - the file is the only signal
                await anyio.sleep(0.02)
        server.stop()
    (posting,) = list(read_postings(path))
    assert (posting.stan, posting.amount, posting.pan_masked) == (
        "000001",
        1500,
        "476173******0011",
    )
    assert PAN not in path.read_text()
