"""QR payments and idempotency keys that survive a restart (``[qr_api] store_file``), and the
stores' common behaviour (memory and SQLite): bounds, expiry, replay, conflict."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from gateway.app import Gateway
from gateway.config import QrApiConfig
from gateway.flow.tokens import PanCipher
from gateway.qr import problems, with_virtual_terminals
from gateway.qr.models import MpmRequest, PaymentRequest
from gateway.qr.problems import Problem
from gateway.qr.service import QrService
from gateway.qr.store import (
    OPEN,
    Claim,
    Entry,
    IdempotencyConflict,
    IdempotencyStore,
    MemoryQrStore,
    Payment,
    QrStore,
    Refund,
    SqliteQrStore,
    StoredResponse,
    StoreKeyError,
    store_from_config,
)
from gateway.risk.verification import QrVerification
from kit.conf import ConfigError
from protocols.message import Message
from tests.helpers import DEMO_CONF, Stack, demo_dataset, running_stack
from tests.qr.test_api import cpm, payment

pytestmark = pytest.mark.anyio

KEY = "demo-qr-acquirer-key-0001"
GROCERY = "M00000000000001"
WALLET = "6250940000000019"  # gamma
TOKEN = "4895370000000015"  # a token of 4761730000000011 (alpha)
STORE_KEY = "5a" * 32


def payment_row(n: int, acquirer: str = "A") -> Payment:
    return Payment(
        payment_id=f"p{n}",
        acquirer=acquirer,
        merchant_id="M",
        terminal_id="Q0100001",
        kind="cpm",
        amount=1000,
        currency="156",
        status="approved",
        response_code="00",
        auth_code="000001",
        rrn="R",
        created_at="now",
        sealed_pan=b"sealed",
        masked_pan="625094******0019",
    )


@pytest.fixture(params=["memory", "sqlite"])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """A factory of open stores of one kind (closed at the end)."""
    opened: list[QrStore] = []

    async def make(**kw: Any) -> QrStore:
        store: QrStore
        if request.param == "memory":
            store = MemoryQrStore(**kw)
        else:
            store = SqliteQrStore(tmp_path / f"s{len(opened)}.sqlite3", key_check=b"k", **kw)
        await store.__aenter__()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.__aexit__(None, None, None)


async def test_idempotency_store(make_store: Any) -> None:
    now = [1000.0]
    store: QrStore = await make_store(window=3600)
    idem = IdempotencyStore(store, clock=lambda: now[0])
    calls: list[str] = []

    def op(value: str) -> Any:
        async def run(claim: Claim) -> StoredResponse:
            calls.append(value)
            response = StoredResponse(201, value.encode(), f"/{value}")
            await store.save_payment(payment_row(len(calls)), claim.key, claim.entry(response))
            return response

        return run

    one = StoredResponse(201, b"one", "/one")
    assert await idem.run(("a", "k"), b"f1", op("one")) == (one, False)
    assert await idem.run(("a", "k"), b"f1", op("two")) == (one, True)
    with pytest.raises(IdempotencyConflict):
        await idem.run(("a", "k"), b"f2", op("three"))
    assert (await idem.run(("b", "k"), b"f2", op("four")))[1] is False

    async def failing(claim: Claim) -> StoredResponse:
        raise RuntimeError("bad input")

    with pytest.raises(RuntimeError):
        await idem.run(("a", "k2"), b"f1", failing)
    assert (await idem.run(("a", "k2"), b"f9", op("five")))[1] is False
    assert calls == ["one", "four", "five"]

    now[0] += 3601  # past the window: the key is new again
    assert (await idem.run(("a", "k"), b"f2", op("six")))[1] is False


async def test_a_repeat_in_flight_waits_for_the_first(make_store: Any) -> None:
    store: QrStore = await make_store()
    idem = IdempotencyStore(store)
    release = anyio.Event()
    results: list[tuple[StoredResponse, bool]] = []

    async def slow(claim: Claim) -> StoredResponse:
        await release.wait()
        response = StoredResponse(201, b"first")
        await store.save_payment(payment_row(0), claim.key, claim.entry(response))
        return response

    async def call() -> None:
        results.append(await idem.run(("a", "k"), b"f", slow))

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(call)
        await anyio.sleep(0.05)
        with pytest.raises(IdempotencyConflict):
            await idem.run(("a", "k"), b"other", slow)
        release.set()
    assert sorted(replayed for _, replayed in results) == [False, True, True]


async def test_payments_bounded_and_refunds_counted(make_store: Any) -> None:
    store: QrStore = await make_store(max_payments=2)
    entry = Entry(b"f", 0.0, StoredResponse(201, b"{}"))
    for n in range(3):
        await store.save_payment(payment_row(n), ("a", f"k{n}"), entry)
    assert await store.payment("p0") is None
    kept = await store.payment("p2")
    assert kept is not None
    assert kept.masked_pan == "625094******0019"
    assert kept.sealed_pan == b"sealed"

    def refund(n: int, status: str, amount: int) -> Refund:
        return Refund(f"r{n}", "p2", amount, "156", status, "00", "1", "R", "t")  # type: ignore[arg-type]

    await store.save_refund(refund(1, "approved", 300), ("a", "r1"), entry)
    await store.save_refund(refund(2, "declined", 500), ("a", "r2"), entry)
    after = await store.payment("p2")
    assert after is not None
    assert (after.refunded, after.remaining) == (300, 700)
    assert [r.refund_id for r in after.refunds] == ["r1", "r2"]


async def test_dynamic_codes_open_then_paid_and_bounded(make_store: Any) -> None:
    store: QrStore = await make_store(max_payments=2)
    entry = Entry(b"f", 0.0, StoredResponse(201, b"{}"))
    assert await store.code("C0") is None  # never issued here
    for n in range(3):
        await store.issue_code(f"C{n}", float(n))
    assert await store.code("C0") is None  # the oldest beyond max_payments is forgotten
    assert await store.code("C1") == OPEN
    await store.issue_code("C1", 9.0)  # issued again: still open, not reset
    await store.save_payment(payment_row(1), ("a", "k1"), entry, code="C1")
    assert await store.code("C1") == "p1"
    await store.issue_code("C1", 10.0)  # a paid code stays paid
    assert await store.code("C1") == "p1"
    await store.save_payment(payment_row(2), ("a", "k2"), entry)  # no code: nothing marked
    assert await store.code("C2") == OPEN


async def test_sqlite_paid_code_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "codes.sqlite3"
    entry = Entry(b"f", 0.0, StoredResponse(201, b"{}"))
    async with SqliteQrStore(path, key_check=b"k") as store:
        await store.issue_code("PAID", 1.0)
        await store.issue_code("OPEN", 2.0)
        await store.save_payment(payment_row(7), ("a", "k"), entry, code="PAID")
    async with SqliteQrStore(path, key_check=b"k") as again:
        assert await again.code("PAID") == "p7"
        assert await again.code("OPEN") == OPEN


async def test_a_paid_dynamic_code_is_refused_after_a_restart(tmp_path: Path) -> None:
    """The SPEC is silent on dynamic codes; this API pays one once (409 qr-already-paid),
    and with ``store_file`` that holds across a restart: a new store on the same file and a
    new service refuse a second payment with another idempotency key."""
    dataset = with_virtual_terminals(demo_dataset())
    acquirer = dataset.qr_acquirers[0]
    merchant = acquirer.merchants[0]
    cipher = PanCipher(bytes.fromhex(STORE_KEY))
    path = tmp_path / "qr.sqlite3"
    sent: list[Message] = []

    async def approve(
        msg: Message, raw: bytes = b"", *, qr: QrVerification | None = None
    ) -> Message:
        sent.append(msg)
        return Message("0210", {"37": f"RRN{len(sent):09d}", "38": "A00001", "39": "00"})

    def service(store: QrStore) -> QrService:
        return QrService(dataset, approve, cipher, store=store)

    def pay(qr: str, key: str) -> PaymentRequest:
        return PaymentRequest(
            qr=qr,
            amount=640,
            currency=view.currency,
            merchant_id=merchant,
            idempotency_key=key,
            payer_pan=WALLET,
        )

    async with SqliteQrStore(path, key_check=b"k") as store:
        first = service(store)
        view = await first.generate_mpm(acquirer, MpmRequest(merchant_id=merchant, amount=640))
        unpaid = await first.generate_mpm(acquirer, MpmRequest(merchant_id=merchant, amount=640))
        paid, replayed = await first.pay(acquirer, pay(view.qr, "one"))
        assert (paid.status, replayed) == (201, False)

    async with SqliteQrStore(path, key_check=b"k") as store:
        second = service(store)
        with pytest.raises(Problem) as refused:
            await second.pay(acquirer, pay(view.qr, "two"))
        assert refused.value.kind is problems.QR_ALREADY_PAID
        assert refused.value.kind.status == 409
        assert await second.pay(acquirer, pay(view.qr, "one")) == (paid, True)  # a replay
        # A code issued before the restart and not paid: paid once now, then refused.
        assert (await second.pay(acquirer, pay(unpaid.qr, "three")))[0].status == 201
        with pytest.raises(Problem):
            await second.pay(acquirer, pay(unpaid.qr, "four"))
    assert len(sent) == 2  # the issuer saw one payment per code


async def test_sqlite_store_refuses_another_key(tmp_path: Path) -> None:
    path = tmp_path / "qr.sqlite3"
    async with SqliteQrStore(path, key_check=b"one"):
        pass
    async with SqliteQrStore(path, key_check=b"one"):
        pass
    with pytest.raises(StoreKeyError):
        async with SqliteQrStore(path, key_check=b"two"):
            pass


def test_store_from_config(tmp_path: Path) -> None:
    vault = PanCipher(bytes(32))
    store, cipher = store_from_config(QrApiConfig(), tmp_path, vault)
    assert isinstance(store, MemoryQrStore)
    assert cipher is vault
    cfg = QrApiConfig(store_file="sub/qr.sqlite3", store_key=STORE_KEY)
    store, cipher = store_from_config(cfg, tmp_path, vault)
    assert isinstance(store, SqliteQrStore)
    assert store.path == tmp_path / "sub" / "qr.sqlite3"
    assert cipher is not vault
    assert STORE_KEY not in repr(cfg)
    from_env = QrApiConfig(store_file="qr.sqlite3", store_key_env="QR_KEY")
    with pytest.raises(StoreKeyError):
        store_from_config(from_env, tmp_path, vault, environ={})
    store, _ = store_from_config(from_env, tmp_path, vault, environ={"QR_KEY": STORE_KEY})
    assert isinstance(store, SqliteQrStore)
    with pytest.raises(ConfigError):
        store_from_config(
            QrApiConfig(store_file="qr.sqlite3", store_key="abc"), tmp_path, vault, environ={}
        )


def test_store_file_needs_a_key() -> None:
    with pytest.raises(ValueError, match="store_key"):
        QrApiConfig(store_file="qr.sqlite3")


# A restart over real sockets -------------------------------------------------------------------


async def restart(stack: Stack, qr_api: QrApiConfig | None = None) -> None:
    await stack.stop_gateway(graceful=True)
    if qr_api is not None:
        cfg = dataclasses.replace(stack.gateway.cfg, qr_api=qr_api)
        stack.gateway = Gateway(cfg, DEMO_CONF, stack.gateway.dataset)  # start_gateway's config
    await stack.start_gateway()


def read_all(directory: Path, pattern: str) -> bytes:
    """The bytes of the database file and its WAL, as a disk scan would see them."""
    return b"".join(p.read_bytes() for p in sorted(directory.glob(pattern)))


def api(stack: Stack) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {KEY}"}
    return httpx.AsyncClient(base_url=stack.qr_url, headers=headers, timeout=10)


def sent_0200(stack: Stack) -> int:
    return sum(issuer.by_mti.get("0200", 0) for issuer in stack.issuers.values())


async def test_payments_and_keys_survive_a_restart(pki_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "qr.sqlite3"
    durable = QrApiConfig(port=0, store_file=str(path), store_key=STORE_KEY)
    async with running_stack(pki_dir) as stack:
        await restart(stack, durable)
        before = stack.account_balance("gamma", WALLET)
        body = payment(cpm(WALLET), 1000, "pay-1")
        async with api(stack) as http:
            code = await http.post("/v1/qr/mpm", json={"merchant_id": GROCERY, "amount": 990})
            mpm = code.json()["qr"]
            first = await http.post("/v1/qr/payments", json=body)
            assert first.status_code == 201, first.text
            by_token = await http.post(
                "/v1/qr/payments", json=payment(mpm, 990, "pay-2", payer_pan=TOKEN)
            )
            assert by_token.json()["status"] == "approved"
        pid = first.json()["payment_id"]
        issued = sent_0200(stack)

        await restart(stack)
        async with api(stack) as http:
            status = await http.get(f"/v1/qr/payments/{pid}")
            assert status.status_code == 200
            assert status.json() == first.json()
            replay = await http.post("/v1/qr/payments", json=body)
            assert replay.status_code == 201
            assert replay.content == first.content  # byte for byte
            assert replay.headers["location"] == first.headers["location"]
            assert replay.headers["idempotent-replayed"] == "true"
            assert sent_0200(stack) == issued  # the issuer saw one 0200
            assert stack.account_balance("gamma", WALLET) == before - 1000
            changed = await http.post("/v1/qr/payments", json=payment(cpm(WALLET), 1001, "pay-1"))
            assert changed.status_code == 409
            assert changed.json()["type"].endswith("idempotency-key-reused")
            # The dynamic code paid before the restart pays once, whatever the key.
            twice = await http.post(
                "/v1/qr/payments", json=payment(mpm, 990, "pay-3", payer_pan=TOKEN)
            )
            assert twice.status_code == 409
            assert twice.json()["type"].endswith("qr-already-paid")
            assert sent_0200(stack) == issued

            url = f"/v1/qr/payments/{pid}/refund"
            refund = await http.post(url, json={"amount": 600, "idempotency_key": "r-1"})
            assert refund.status_code == 201, refund.text
            assert refund.json()["status"] == "approved"
            assert stack.account_balance("gamma", WALLET) == before - 400

        await restart(stack)
        async with api(stack) as http:
            again = await http.post(url, json={"amount": 600, "idempotency_key": "r-1"})
            assert again.content == refund.content
            assert again.headers["idempotent-replayed"] == "true"
            too_much = await http.post(url, json={"amount": 401, "idempotency_key": "r-2"})
            assert too_much.status_code == 422
            assert too_much.json()["remaining"] == 400
            rest = await http.post(url, json={"amount": 400, "idempotency_key": "r-2"})
            assert rest.json()["status"] == "approved"
            status = (await http.get(f"/v1/qr/payments/{pid}")).json()
            assert status["refunded_amount"] == 1000
            assert [r["amount"] for r in status["refunds"]] == [600, 400]
        assert stack.account_balance("gamma", WALLET) == before
        await stack.stop_gateway(graceful=True)

    # No card number, token or QR payload in clear anywhere in the files.
    raw = read_all(tmp_path, "qr.sqlite3*")
    assert b"qrp_" in raw  # the scan reads the data
    for secret in (WALLET, TOKEN, "4761730000000011", body["qr"], mpm):
        assert secret.encode() not in raw, secret


async def test_memory_store_forgets_at_restart(pki_dir: Path) -> None:
    async with running_stack(pki_dir) as stack:
        async with api(stack) as http:
            first = await http.post("/v1/qr/payments", json=payment(cpm(WALLET), 500, "m-1"))
            assert first.status_code == 201
        await restart(stack)
        async with api(stack) as http:
            gone = await http.get(f"/v1/qr/payments/{first.json()['payment_id']}")
            assert gone.status_code == 404
