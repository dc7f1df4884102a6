"""An approval the QR store cannot record is reversed at the issuer (the path a terminal's 0400
takes: online, else the journal's 0420 through store-and-forward) and answered 503; a retry
with the same idempotency key is then a fresh payment, and the payer is debited once."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from gateway.config import SafConfig
from gateway.journal import TxnState
from gateway.qr.store import Entry, Key, Payment, SqliteQrStore
from issuer_sim.server import IssuerServer
from tests.helpers import Stack, running_stack
from tests.integration.journal_support import saf_depth, txn, write_conf
from tests.qr.test_api import KEY, WALLET, assert_problem, cpm, payment

pytestmark = pytest.mark.anyio

SLUG = "qr-payment-not-recorded"


class FailingStore(SqliteQrStore):
    """The real SQLite store, whose next ``fail`` payment writes fail (after ``before_failing``)."""

    def __init__(self, path: Path, key_check: bytes) -> None:
        super().__init__(path, key_check=key_check)
        self.fail = 0
        self.failed = 0
        self.before_failing: Callable[[], None] | None = None

    async def save_payment(
        self, payment: Payment, key: Key, entry: Entry, *, code: str | None = None
    ) -> None:
        if self.fail:
            self.fail -= 1
            self.failed += 1
            if self.before_failing is not None:
                self.before_failing()
            raise sqlite3.OperationalError("disk I/O error")
        await super().save_payment(payment, key, entry, code=code)


async def _stack(pki_dir: Path, tmp_path: Path, journaled: bool) -> AsyncIterator[Stack]:
    saf = SafConfig(
        timeout=0.5, reversal_delay=0.05, poll_interval=0.1, backoff_base=0.05, backoff_max=0.3
    )
    journal = write_conf(tmp_path) if journaled else ""
    async with running_stack(pki_dir, link_timeout=0.4, risk="", journal=journal, saf=saf) as stack:
        qr = stack.gateway.qr
        store = FailingStore(tmp_path / "qr.sqlite3", qr.cipher.lookup_key("test store"))
        async with store:
            qr.store = store
            qr.idempotency.store = store
            yield stack


@pytest.fixture
async def stack(pki_dir: Path, tmp_path: Path) -> AsyncIterator[Stack]:
    async for s in _stack(pki_dir, tmp_path, journaled=True):
        yield s


@pytest.fixture
async def unjournaled(pki_dir: Path, tmp_path: Path) -> AsyncIterator[Stack]:
    async for s in _stack(pki_dir, tmp_path, journaled=False):
        yield s


def _client(stack: Stack) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {KEY}"}
    return httpx.AsyncClient(base_url=stack.qr_url, headers=headers, timeout=10)


def _store(stack: Stack) -> FailingStore:
    store = stack.gateway.qr.store
    assert isinstance(store, FailingStore)
    return store


def _count(stack: Stack, outcome: str) -> float:
    value: float = stack.gateway.qr.not_recorded.labels(outcome)._value.get()
    return value


def _metric_line(stack: Stack, outcome: str) -> str:
    return f'switch_qr_payments_not_recorded_total{{reversal="{outcome}"}} 1.0'


async def _retry_debits_once(
    stack: Stack, api: httpx.AsyncClient, body: dict[str, Any], before: int
) -> None:
    gamma = stack.issuers["gamma"]
    sent = gamma.by_mti.get("0200", 0)
    retry = await api.post("/v1/qr/payments", json=body)
    assert retry.status_code == 201, retry.text
    assert retry.headers["idempotent-replayed"] == "false"  # a fresh payment, not a replay
    paid = retry.json()
    assert paid["status"] == "approved"
    assert stack.account_balance("gamma", WALLET) == before - body["amount"]
    assert gamma.by_mti.get("0200", 0) == sent + 1
    assert (await api.get(f"/v1/qr/payments/{paid['payment_id']}")).json() == paid
    again = await api.post("/v1/qr/payments", json=body)  # now a replay: charged once
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == paid
    assert stack.account_balance("gamma", WALLET) == before - body["amount"]
    assert (await txn(stack.gateway, paid["rrn"])).state == TxnState.ANSWERED


async def test_unrecorded_approval_is_reversed_online_and_a_retry_pays_once(stack: Stack) -> None:
    gamma: IssuerServer = stack.issuers["gamma"]
    before = stack.account_balance("gamma", WALLET)
    body = payment(cpm(WALLET), 1500, "not-recorded-1")
    _store(stack).fail = 1
    async with _client(stack) as api:
        resp = await api.post("/v1/qr/payments", json=body)
        doc = assert_problem(resp, 503, SLUG)
        assert "reversed" in doc["detail"]
        assert resp.headers["retry-after"] == "1"
        assert WALLET not in resp.text
        # Reversed before the answer: the issuer's 0400, acknowledged.
        assert _store(stack).failed == 1
        assert stack.account_balance("gamma", WALLET) == before
        assert gamma.host.reversals_applied == 1
        assert gamma.by_mti.get("0400", 0) == 1
        original = await txn(stack.gateway, doc["rrn"])
        assert original.state == TxnState.REVERSED
        assert original.amount == 1500
        assert _count(stack, "reversed") == 1
        assert _metric_line(stack, "reversed") in stack.gateway.metrics.render().decode()

        await _retry_debits_once(stack, api, body, before)
    assert gamma.host.reversals_applied == 1


async def test_unanswered_reversal_goes_through_store_and_forward(stack: Stack) -> None:
    gamma = stack.issuers["gamma"]
    before = stack.account_balance("gamma", WALLET)
    body = payment(cpm(WALLET), 900, "not-recorded-2")
    store = _store(stack)
    store.fail = 1

    def issuer_goes_silent() -> None:  # after the approval: the 0400's answer is lost
        gamma.faults.drop_ratio = 1.0

    store.before_failing = issuer_goes_silent
    async with _client(stack) as api:
        resp = await api.post("/v1/qr/payments", json=body)
        doc = assert_problem(resp, 503, SLUG)
        assert "reversed" in doc["detail"]
        assert _count(stack, "queued") == 1
        assert await saf_depth(stack.gateway, "gamma") >= 1  # the journal's 0420
        gamma.faults.drop_ratio = 0.0
        with anyio.fail_after(10):
            while await saf_depth(stack.gateway, "gamma"):  # noqa: ASYNC110 - polls the journal
                await anyio.sleep(0.02)
        assert stack.account_balance("gamma", WALLET) == before
        assert gamma.host.reversals_applied == 1  # the 0400 and its 0420: applied once
        assert (await txn(stack.gateway, doc["rrn"])).state == TxnState.REVERSED

        await _retry_debits_once(stack, api, body, before)


async def test_reversal_not_acknowledged_holds_the_key(unjournaled: Stack) -> None:
    stack = unjournaled
    gamma = stack.issuers["gamma"]
    body = payment(cpm(WALLET), 700, "not-recorded-3")
    store = _store(stack)
    store.fail = 1

    def issuer_goes_silent() -> None:
        gamma.faults.drop_ratio = 1.0

    store.before_failing = issuer_goes_silent
    async with _client(stack) as api:
        resp = await api.post("/v1/qr/payments", json=body)
        doc = assert_problem(resp, 503, SLUG)
        assert "do not pay it again" in doc["detail"]
        assert gamma.by_mti.get("0400", 0) == 3  # repeated as a terminal would, unanswered
        assert _count(stack, "failed") == 1
        gamma.faults.drop_ratio = 0.0
        sent = gamma.by_mti.get("0200", 0)
        again = await api.post("/v1/qr/payments", json=body)  # no second charge
        assert assert_problem(again, 503, SLUG)["detail"] == doc["detail"]
        assert gamma.by_mti.get("0200", 0) == sent
        other = await api.post("/v1/qr/payments", json=payment(cpm(WALLET), 700, "other-key"))
        assert other.status_code == 201  # only that key is held
