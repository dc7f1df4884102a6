"""Store-and-forward over real sockets, on SQLite and PostgreSQL: advices queued while the
issuer is down are delivered once each after it returns, also across a gateway restart;
depth metric and age alert."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from gateway.config import SafConfig, StandInConfig, StandInLimit
from gateway.journal import TxnState
from tests.helpers import eventually, purchase, reversal_of, running_stack, terminal
from tests.integration.journal_support import JournalSetup, journal_setup, saf_depth, txn

pytestmark = pytest.mark.anyio

PAN = "5413330000000019"  # beta
STANDIN = StandInConfig(limits=(StandInLimit(issuer="beta", max_amount=100_000, max_count=10),))


@pytest.fixture(params=["sqlite", "postgres"])
def journal(
    request: pytest.FixtureRequest, tmp_path: Path, anyio_backend: tuple[str, dict[str, Any]]
) -> Iterator[JournalSetup]:
    yield from journal_setup(request, tmp_path, anyio_backend)


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    with anyio.fail_after(timeout):
        while not await predicate():  # noqa: ASYNC110 - polls the journal, no event to wait on
            await anyio.sleep(0.02)


async def test_advices_wait_for_the_issuer_and_survive_a_restart(
    pki_dir: Path, journal: JournalSetup
) -> None:
    saf = SafConfig(reversal_delay=1.0, poll_interval=0.1, backoff_base=0.05, backoff_max=0.3)
    async with running_stack(
        pki_dir, link_timeout=0.3, risk="", journal=journal.conf, saf=saf, standin=STANDIN
    ) as stack:
        beta = stack.issuers["beta"]
        before = stack.account_balance("beta", PAN)
        async with terminal(stack.port) as term:
            # 1. a timeout: the issuer debits, the answer is lost; its 0420 waits 1 s ...
            beta.faults.drop_ratio = 1.0
            lost = await term.exchange(purchase(PAN, 100))
            assert lost["39"] == "91"
            beta.stop()  # ... and the issuer is gone before it is due
            await eventually(lambda: not stack.gateway.pools["beta"].ready)
            # 2. stand-in approvals (0120) and a reversal of one of them (0420)
            stood = [purchase(PAN, amount) for amount in (200, 300, 400)]
            for req in stood:
                assert (await term.exchange(req))["39"] == "00"
            assert (await term.exchange(reversal_of(stood[0])))["39"] == "00"
        assert stack.account_balance("beta", PAN) == before - 100
        assert await saf_depth(stack.gateway, "beta") == 5

        # The gateway restarts while the issuer is still down: the queue is in the journal.
        await stack.stop_gateway(graceful=True)
        await stack.start_gateway(wait_ready=False)
        assert await saf_depth(stack.gateway, "beta") == 5
        beta.faults.drop_ratio = 0.0
        server = await stack.restart_issuer("beta")

        async def drained() -> bool:
            return await saf_depth(stack.gateway, "beta") == 0

        await until(drained)
        assert server.host.advices_applied == 3
        assert server.host.reversals_applied == 2  # the timed-out purchase, the stood-in 200
        assert server.by_mti.get("0120") == 3  # once each: acknowledged, never resent
        assert server.by_mti.get("0420") == 2
        assert stack.account_balance("beta", PAN) == before - 700
        assert (await txn(stack.gateway, lost["37"])).state == TxnState.REVERSED


async def test_depth_metric_and_age_alert(pki_dir: Path, tmp_path: Path) -> None:
    from tests.integration.journal_support import write_conf

    saf = SafConfig(poll_interval=0.05, alert_age=0.2)
    async with running_stack(
        pki_dir, link_timeout=0.3, risk="", journal=write_conf(tmp_path), saf=saf, standin=STANDIN
    ) as stack:
        stack.issuers["beta"].stop()
        await eventually(lambda: not stack.gateway.pools["beta"].ready)
        async with terminal(stack.port) as term:
            assert (await term.exchange(purchase(PAN, 50)))["39"] == "00"
        alerts = stack.gateway.saf_metrics.age_alerts.labels("beta")
        await eventually(lambda: alerts._value.get() >= 1)
        base = f"http://127.0.0.1:{stack.gateway.admin_port}"
        async with httpx.AsyncClient(base_url=base) as http:
            metrics = (await http.get("/metrics")).text
            status = (await http.get("/status")).json()
        assert 'switch_saf_depth{issuer="beta"} 1.0' in metrics
        assert 'switch_saf_age_alerts_total{issuer="beta"}' in metrics
        assert status["journal"]["stand_in_approved"] == 1
