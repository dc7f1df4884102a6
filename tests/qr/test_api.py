"""The QR acquirer API end to end over real sockets: HTTP client -> hypercorn/Starlette in the
gateway -> the switch pipeline -> issuer simulators (the same pipeline a terminal's 0200 takes)."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import h11
import httpx
import pytest
import structlog

from gateway.qr.problems import MEDIA_TYPE, PROBLEM_BASE
from gateway.risk.verification import QrVerification
from kit.dataset import QrAcquirer
from loadtest import qr_sim
from loadtest.pos_sim import card_for
from protocols import qr_cpm, qr_mpm
from protocols.message import Message
from tests.helpers import DEMO_CONF, Stack, demo_dataset, eventually, running_stack

pytestmark = pytest.mark.anyio

KEY = "demo-qr-acquirer-key-0001"
OTHER_KEY = "test-qr-acquirer-key-0002"
GROCERY = "M00000000000001"  # QRACQ01's
CASINO = "M00000000000009"  # QRACQ01's, blocked MCC 7995
METRO = "M00000000000002"  # QRACQ02's only
WALLET = "6250940000000019"
WALLET_2 = "6250940000000027"
LOW = "6250940000000035"  # balance 100
TOKEN, FUNDING = "4895370000000015", "4761730000000011"
AID = "A000000333010101"
JSON = "application/json"


def cpm(pan: str, *, expiry: str = "3012", **kw: Any) -> str:
    return qr_cpm.build(aid=AID, pan=pan, expiry=expiry, **kw)


def payment(qr: str, amount: int, key: str, **extra: Any) -> dict[str, Any]:
    return {
        "qr": qr,
        "amount": amount,
        "currency": "156",
        "merchant_id": GROCERY,
        "idempotency_key": key,
        **extra,
    }


@pytest.fixture
async def stack(pki_dir: Path) -> AsyncIterator[Stack]:
    data = demo_dataset()
    second = QrAcquirer(id="QRACQ02", api_key=OTHER_KEY, merchants=(METRO,))
    data = dataclasses.replace(data, qr_acquirers=(*data.qr_acquirers, second))
    async with running_stack(pki_dir, dataset=data) as s:
        yield s


@pytest.fixture
async def api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=stack.qr_url, headers=headers, timeout=10) as client:
        yield client


def assert_problem(resp: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == MEDIA_TYPE
    doc: dict[str, Any] = resp.json()
    assert doc["type"] == PROBLEM_BASE + slug
    assert doc["status"] == status
    assert isinstance(doc["title"], str)
    assert doc["title"]
    assert isinstance(doc["detail"], str)
    assert doc["detail"]
    assert "Traceback" not in resp.text
    return doc


def issuer_requests(stack: Stack, issuer: str) -> int:
    return stack.issuers[issuer].by_mti.get("0200", 0)


# Payments ---------------------------------------------------------------------------------------


async def test_cpm_payment_approved_status_and_declined(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    before = stack.account_balance("gamma", WALLET)
    resp = await api.post("/v1/qr/payments", json=payment(cpm(WALLET), 1250, "cpm-1"))
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["status"] == "approved"
    assert body["response_code"] == "00"
    assert len(body["auth_code"]) == 6
    assert len(body["rrn"]) == 12
    assert (body["amount"], body["currency"], body["kind"]) == (1250, "156", "cpm")
    assert body["masked_pan"] == "625094******0019"
    assert body["created_at"].endswith("Z")
    assert resp.headers["location"] == f"/v1/qr/payments/{body['payment_id']}"
    assert resp.headers["idempotent-replayed"] == "false"
    assert stack.account_balance("gamma", WALLET) == before - 1250

    status = await api.get(f"/v1/qr/payments/{body['payment_id']}")
    assert status.status_code == 200
    assert status.json() == body

    low = await api.post("/v1/qr/payments", json=payment(cpm(LOW, use_track2=True), 500, "cpm-2"))
    assert low.status_code == 201
    declined = low.json()
    assert (declined["status"], declined["response_code"], declined["auth_code"]) == (
        "declined",
        "51",
        None,
    )


async def test_cpm_with_cryptogram_verified_by_the_issuer(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    card = card_for(demo_dataset(), "5413330000000019", atc=1)
    good = cpm(card.pan, expiry="2906", pan_sequence=1, emv=card.icc_data(800))
    resp = await api.post("/v1/qr/payments", json=payment(good, 800, "crypto-1"))
    assert resp.json()["response_code"] == "00"
    # The cryptogram signs 800: a payment of 900 with it is refused by the issuer.
    again = cpm(card.pan, expiry="2906", pan_sequence=1, emv=card.icc_data(800))
    resp = await api.post("/v1/qr/payments", json=payment(again, 900, "crypto-2"))
    assert resp.json()["response_code"] == "05"
    assert stack.issuers["beta"].host.emv.verified == 1


async def test_mpm_dynamic_and_static_payments(stack: Stack, api: httpx.AsyncClient) -> None:
    gen = await api.post("/v1/qr/mpm", json={"merchant_id": GROCERY, "amount": 2372})
    assert gen.status_code == 200, gen.text
    dynamic = gen.json()
    assert dynamic["dynamic"] is True
    assert dynamic["qr"].startswith("000201010212")
    assert "540523.72" in dynamic["qr"]
    assert dynamic["qr"].endswith(dynamic["crc"])
    before = stack.account_balance("gamma", WALLET_2)

    body = payment(dynamic["qr"], 2372, "mpm-1", payer_pan=WALLET_2)
    resp = await api.post("/v1/qr/payments", json=body)
    assert resp.status_code == 201, resp.text
    assert (resp.json()["status"], resp.json()["kind"]) == ("approved", "mpm")
    assert stack.account_balance("gamma", WALLET_2) == before - 2372

    mismatch = payment(dynamic["qr"], 2000, "mpm-2", payer_pan=WALLET_2)
    assert_problem(await api.post("/v1/qr/payments", json=mismatch), 422, "amount-mismatch")
    usd = payment(dynamic["qr"], 2372, "mpm-3", payer_pan=WALLET_2, currency="840")
    assert_problem(await api.post("/v1/qr/payments", json=usd), 422, "currency-mismatch")

    static = (await api.post("/v1/qr/mpm", json={"merchant_id": GROCERY})).json()
    assert static["dynamic"] is False
    assert static["amount"] is None
    assert static["qr"].startswith("000201010211")
    resp = await api.post(
        "/v1/qr/payments", json=payment(static["qr"], 999, "mpm-4", payer_pan=LOW)
    )
    assert (resp.json()["status"], resp.json()["response_code"]) == ("declined", "51")

    # A wallet paying with its token: the funding card is charged, only masked data shown.
    funding_before = stack.account_balance("alpha", FUNDING)
    body = payment(static["qr"], 450, "mpm-5", payer_pan=TOKEN)
    resp = await api.post("/v1/qr/payments", json=body)
    assert resp.json()["status"] == "approved"
    assert resp.json()["masked_pan"] == "489537******0015"
    assert stack.account_balance("alpha", FUNDING) == funding_before - 450

    # Another merchant's QR code presented at this merchant.
    other = (await api.post("/v1/qr/mpm", json={"merchant_id": CASINO})).json()
    wrong = payment(other["qr"], 100, "mpm-6", payer_pan=WALLET_2)
    assert_problem(await api.post("/v1/qr/payments", json=wrong), 422, "merchant-mismatch")


def grocery_mpm(alt_name: str | None = None) -> str:
    """A static code of the grocery, with ``alt_name`` in Chinese in template 64 if given."""
    return qr_mpm.build(
        merchant_id=GROCERY,
        name="BEIJING DUCK",
        city="BEIJING",
        mcc="5812",
        currency="156",
        country="156",
        alt_language=None if alt_name is None else "ZH",
        alt_name=alt_name,
        alt_city=None if alt_name is None else "北京",
    )


async def test_mpm_with_a_chinese_name_in_template_64_is_paid(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    """What Chinese merchants print: the name in Chinese in 64/01 (UTF-8, lengths in
    characters); paid like the same code with an ASCII name, replayed by its key."""
    chinese = grocery_mpm("北京烤鸭店")
    assert "0105北京烤鸭店" in chinese
    for qr, key in ((grocery_mpm(), "ascii"), (chinese, "zh")):
        body = payment(qr, 880, key, payer_pan=WALLET_2)
        resp = await api.post("/v1/qr/payments", json=body)
        assert resp.status_code == 201, resp.text
        assert (resp.json()["status"], resp.json()["kind"]) == ("approved", "mpm")
    replay = await api.post("/v1/qr/payments", json=body)
    assert (replay.json(), replay.headers["idempotent-replayed"]) == (resp.json(), "true")
    changed = payment(chinese, 881, "zh", payer_pan=WALLET_2)
    assert_problem(await api.post("/v1/qr/payments", json=changed), 409, "idempotency-key-reused")
    # Invalid codes with non-ASCII text are refused as such, never a 500.
    bad = {
        "qr-not-base64": "\u00e9",
        "qr-crc": flip_crc(chinese),
        "qr-format": qr_mpm.encode(  # a correct CRC, but Chinese outside template 64
            (o.id, "北京烤鸭店" if o.id == "59" else o.value)
            for o in qr_mpm.decode(grocery_mpm()).objects
        ),
    }
    for slug, qr in bad.items():
        body = payment(qr, 880, f"bad-{slug}", payer_pan=None if slug == "qr-not-base64" else LOW)
        assert_problem(await api.post("/v1/qr/payments", json=body), 422, slug)
    assert issuer_requests(stack, "gamma") == 2


async def test_dynamic_code_pays_once(stack: Stack, api: httpx.AsyncClient) -> None:
    qr = (await api.post("/v1/qr/mpm", json={"merchant_id": GROCERY, "amount": 640})).json()["qr"]
    # A declined attempt leaves the code open...
    low = await api.post("/v1/qr/payments", json=payment(qr, 640, "d1", payer_pan=LOW))
    assert low.json()["response_code"] == "51"
    paid = await api.post("/v1/qr/payments", json=payment(qr, 640, "d2", payer_pan=WALLET_2))
    assert paid.json()["status"] == "approved"
    # ...an approved one closes it, whatever the idempotency key; a replay still answers.
    again = await api.post("/v1/qr/payments", json=payment(qr, 640, "d3", payer_pan=WALLET))
    assert_problem(again, 409, "qr-already-paid")
    replay = await api.post("/v1/qr/payments", json=payment(qr, 640, "d2", payer_pan=WALLET_2))
    assert replay.json() == paid.json()
    assert issuer_requests(stack, "gamma") == 2


async def test_qr_payment_passes_the_risk_rules(stack: Stack, api: httpx.AsyncClient) -> None:
    body = payment(cpm(WALLET), 100, "casino-1") | {"merchant_id": CASINO}
    resp = await api.post("/v1/qr/payments", json=body)
    assert (resp.json()["status"], resp.json()["response_code"]) == ("declined", "57")
    assert issuer_requests(stack, "gamma") == 0


# Refunds ----------------------------------------------------------------------------------------


async def test_partial_and_full_refunds(stack: Stack, api: httpx.AsyncClient) -> None:
    before = stack.account_balance("gamma", WALLET)
    paid = (await api.post("/v1/qr/payments", json=payment(cpm(WALLET), 1250, "pay"))).json()
    pid = paid["payment_id"]
    url = f"/v1/qr/payments/{pid}/refund"

    first = await api.post(url, json={"amount": 500, "idempotency_key": "r1"})
    assert first.status_code == 201, first.text
    refund = first.json()
    assert (refund["status"], refund["amount"], refund["payment_id"]) == ("approved", 500, pid)
    assert refund["rrn"] != paid["rrn"]
    assert stack.account_balance("gamma", WALLET) == before - 750

    replay = await api.post(url, json={"amount": 500, "idempotency_key": "r1"})
    assert replay.json() == refund
    assert replay.headers["idempotent-replayed"] == "true"

    too_much = await api.post(url, json={"amount": 751, "idempotency_key": "r2"})
    assert assert_problem(too_much, 422, "refund-exceeds-remaining")["remaining"] == 750
    # The same key, fixed, is free to use: the failed attempt left nothing behind.
    rest = await api.post(url, json={"amount": 750, "idempotency_key": "r2"})
    assert rest.json()["status"] == "approved"
    assert stack.account_balance("gamma", WALLET) == before

    status = (await api.get(f"/v1/qr/payments/{pid}")).json()
    assert status["refunded_amount"] == 1250
    assert [r["amount"] for r in status["refunds"]] == [500, 750]
    nothing_left = await api.post(url, json={"amount": 1, "idempotency_key": "r3"})
    assert_problem(nothing_left, 422, "refund-exceeds-remaining")


async def test_refund_of_declined_or_unknown_payment(stack: Stack, api: httpx.AsyncClient) -> None:
    declined = (await api.post("/v1/qr/payments", json=payment(cpm(LOW), 500, "low"))).json()
    url = f"/v1/qr/payments/{declined['payment_id']}/refund"
    resp = await api.post(url, json={"amount": 100, "idempotency_key": "x"})
    assert_problem(resp, 409, "payment-not-refundable")
    resp = await api.post(
        "/v1/qr/payments/qrp_nope/refund", json={"amount": 1, "idempotency_key": "y"}
    )
    assert_problem(resp, 404, "not-found")


async def test_concurrent_refunds_never_exceed_the_payment(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    paid = (await api.post("/v1/qr/payments", json=payment(cpm(WALLET), 1000, "p"))).json()
    url = f"/v1/qr/payments/{paid['payment_id']}/refund"
    results: list[httpx.Response] = []

    async def refund(key: str) -> None:
        results.append(await api.post(url, json={"amount": 600, "idempotency_key": key}))

    async with anyio.create_task_group() as tg:
        for key in ("a", "b", "c"):
            tg.start_soon(refund, key)
    assert sorted(r.status_code for r in results) == [201, 422, 422]
    status = (await api.get(f"/v1/qr/payments/{paid['payment_id']}")).json()
    assert status["refunded_amount"] == 600


# Idempotency ------------------------------------------------------------------------------------


async def test_idempotent_replay_and_conflict(stack: Stack, api: httpx.AsyncClient) -> None:
    before = stack.account_balance("gamma", WALLET)
    body = payment(cpm(WALLET), 700, "same-key")
    first = await api.post("/v1/qr/payments", json=body)
    second = await api.post("/v1/qr/payments", json=body)
    assert first.status_code == second.status_code == 201
    assert second.json() == first.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert issuer_requests(stack, "gamma") == 1
    assert stack.account_balance("gamma", WALLET) == before - 700

    changed = payment(cpm(WALLET), 701, "same-key")
    assert_problem(await api.post("/v1/qr/payments", json=changed), 409, "idempotency-key-reused")

    # The same key in another acquirer's namespace is another request.
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    metro = payment(cpm(WALLET), 700, "same-key") | {"merchant_id": METRO}
    resp = await api.post("/v1/qr/payments", json=metro, headers=other)
    assert resp.status_code == 201
    assert resp.json()["payment_id"] != first.json()["payment_id"]


async def test_concurrent_duplicates_reach_the_issuer_once(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    stack.issuers["gamma"].faults.latency_ms = 100  # keep the first one in flight
    body = payment(cpm(WALLET_2), 300, "racy")
    answers: list[httpx.Response] = []

    async def send() -> None:
        answers.append(await api.post("/v1/qr/payments", json=body))

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(send)
    assert len({a.json()["payment_id"] for a in answers}) == 1
    assert sorted(a.headers["idempotent-replayed"] for a in answers) == ["false"] + ["true"] * 3
    assert issuer_requests(stack, "gamma") == 1


# Problem documents ------------------------------------------------------------------------------


async def test_authentication_and_scope(stack: Stack, api: httpx.AsyncClient) -> None:
    body = payment(cpm(WALLET), 100, "auth")
    async with httpx.AsyncClient(base_url=stack.qr_url) as anonymous:
        resp = await anonymous.post("/v1/qr/payments", json=body)
        assert_problem(resp, 401, "unauthorized")
        assert resp.headers["www-authenticate"].startswith("Bearer")
        resp = await anonymous.post(
            "/v1/qr/payments", json=body, headers={"Authorization": "Bearer wrong"}
        )
        assert_problem(resp, 401, "unauthorized")
        assert 'error="invalid_token"' in resp.headers["www-authenticate"]
        resp = await anonymous.post(
            "/v1/qr/payments", json=body, headers={"Authorization": f"Basic {KEY}"}
        )
        assert_problem(resp, 401, "unauthorized")
        resp = await anonymous.get("/v1/qr/payments/qrp_x")
        assert_problem(resp, 401, "unauthorized")
    metro = body | {"merchant_id": METRO}
    assert_problem(await api.post("/v1/qr/payments", json=metro), 403, "merchant-not-allowed")
    resp = await api.post("/v1/qr/mpm", json={"merchant_id": METRO})
    assert_problem(resp, 403, "merchant-not-allowed")
    unknown = body | {"merchant_id": "M99999999999999"}
    assert_problem(await api.post("/v1/qr/payments", json=unknown), 422, "unknown-merchant")
    assert issuer_requests(stack, "gamma") == 0


async def test_payments_of_another_acquirer_are_not_found(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    paid = (await api.post("/v1/qr/payments", json=payment(cpm(WALLET), 100, "mine"))).json()
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    resp = await api.get(f"/v1/qr/payments/{paid['payment_id']}", headers=other)
    assert_problem(resp, 404, "not-found")
    assert_problem(await api.get("/v1/qr/payments/qrp_unknown"), 404, "not-found")


def flip_crc(qr: str) -> str:
    body, crc = qr[:-4], qr[-4:]
    return body + ("0000" if crc != "0000" else "FFFF")


@pytest.mark.parametrize(
    ("body", "status", "slug"),
    [
        ({"qr": "not base64!!", "amount": 1, "currency": "156"}, 422, "qr-not-base64"),
        ({"qr": base64.b64encode(b"\x85\x05CPV02").decode()}, 422, "qr-version"),
        ({"qr": base64.b64encode(b"\x85\x05CP").decode()}, 422, "qr-format"),
        ({"qr": base64.b64encode(b"\x85\x05CPV01").decode()}, 422, "qr-missing-data"),
        ({"amount": "1250"}, 422, "validation-error"),
        ({"amount": 12.5}, 422, "validation-error"),
        ({"amount": True}, 422, "validation-error"),
        ({"amount": 0}, 422, "validation-error"),
        ({"currency": 156}, 422, "validation-error"),
        ({"currency": "CNY"}, 422, "validation-error"),
        # ISO 4217 active payment currencies only (the switch would carry it in field 49)
        ({"currency": "999"}, 422, "currency-unknown"),
        ({"currency": "000"}, 422, "currency-unknown"),
        ({"currency": "157"}, 422, "currency-unknown"),
        ({"merchant_id": None}, 422, "validation-error"),
        ({"idempotency_key": ""}, 422, "validation-error"),
        ({"payer_pan": WALLET}, 422, "validation-error"),  # not with a CPM
        ({"surprise": 1}, 422, "validation-error"),
    ],
)
async def test_bad_payment_bodies(
    api: httpx.AsyncClient, body: dict[str, Any], status: int, slug: str
) -> None:
    full = payment(cpm(WALLET), 100, "bad") | body
    assert_problem(await api.post("/v1/qr/payments", json=full), status, slug)


async def test_bad_mpm_payloads_and_missing_fields(api: httpx.AsyncClient) -> None:
    qr = (await api.post("/v1/qr/mpm", json={"merchant_id": GROCERY})).json()["qr"]
    bad_crc = payment(flip_crc(qr), 100, "crc", payer_pan=WALLET)
    assert_problem(await api.post("/v1/qr/payments", json=bad_crc), 422, "qr-crc")
    no_payer = payment(qr, 100, "nopayer")
    doc = assert_problem(await api.post("/v1/qr/payments", json=no_payer), 422, "validation-error")
    assert "payer_pan" in doc["detail"]

    resp = await api.post("/v1/qr/payments", json={"qr": qr})
    doc = assert_problem(resp, 422, "validation-error")
    missing = {e["field"] for e in doc["errors"] if e["type"] == "missing"}
    assert missing == {"amount", "currency", "merchant_id", "idempotency_key"}
    assert WALLET not in resp.text

    wrong = payment(qr, 100, "types", payer_pan=WALLET) | {"payer_pan": 6250940000000019}
    resp = await api.post("/v1/qr/payments", json=wrong)
    assert_problem(resp, 422, "validation-error")
    assert WALLET not in resp.text  # input values are never echoed


async def test_http_level_problems(stack: Stack, api: httpx.AsyncClient) -> None:
    resp = await api.post("/v1/qr/payments", content=b"{not json", headers={"content-type": JSON})
    assert_problem(resp, 400, "invalid-json")
    resp = await api.post("/v1/qr/payments", content=b"")
    assert_problem(resp, 400, "invalid-json")
    resp = await api.post("/v1/qr/payments", json=[1, 2])
    assert_problem(resp, 422, "validation-error")
    resp = await api.post(
        "/v1/qr/payments", content=b"qr=x", headers={"content-type": "text/plain"}
    )
    assert_problem(resp, 415, "unsupported-media-type")
    resp = await api.post("/v1/qr/payments", content=b"{" + b" " * 20000 + b"}")
    assert_problem(resp, 413, "payload-too-large")
    resp = await api.get("/v1/qr/payments")
    doc = assert_problem(resp, 405, "method-not-allowed")
    assert "POST" in resp.headers["allow"]
    assert doc["instance"] == "/v1/qr/payments"
    assert_problem(await api.delete("/v1/qr/payments/qrp_x"), 405, "method-not-allowed")
    assert_problem(await api.get("/v1/qr/nothing-here"), 404, "not-found")
    resp = await api.post("/v1/qr/mpm", json={"merchant_id": GROCERY, "currency": "999"})
    assert_problem(resp, 422, "currency-unknown")


class RawHttp:
    """One keep-alive HTTP/1.1 connection on a raw socket (parsed with h11): a request's head
    and its body can go in separate writes, as a real client's often do."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    async def send(self, *events: h11.Event) -> None:
        await self.stream.send(b"".join(self.h11.send(e) or b"" for e in events))

    async def head(self, method: str, target: str, headers: dict[str, str]) -> None:
        await self.send(
            h11.Request(method=method, target=target, headers=[("host", "qr"), *headers.items()])
        )

    async def receive_some(self) -> None:
        try:
            self.h11.receive_data(await self.stream.receive())
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
            self.h11.receive_data(b"")

    async def response(self) -> tuple[h11.Response, bytes] | None:
        """The next answer, or None when the server closed the connection instead."""
        head: h11.Response | None = None
        body = b""
        with anyio.fail_after(10):
            while True:
                event = self.h11.next_event()
                if event is h11.NEED_DATA:
                    await self.receive_some()
                elif isinstance(event, h11.Response):
                    head = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    assert head is not None
                    return head, body
                else:
                    assert isinstance(event, h11.ConnectionClosed), event
                    return None


def _closes(head: h11.Response) -> bool:
    return (b"connection", b"close") in [(k, v.lower()) for k, v in head.headers]


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({"authorization": "Bearer wrong", "content-type": JSON}, b"{}", 401),
        ({"content-type": JSON}, b"{}", 401),
        ({"authorization": f"Bearer {KEY}", "content-type": "text/plain"}, b"qr=x", 415),
        ({"authorization": f"Bearer {KEY}", "content-length": "20000"}, b" " * 20000, 413),
        ({"authorization": f"Bearer {KEY}", "transfer-encoding": "chunked"}, b" " * 20000, 413),
    ],
    ids=["wrong-key", "no-key", "media-type", "declared-too-large", "chunked-too-large"],
)
async def test_early_errors_keep_or_close_the_connection_cleanly(
    stack: Stack, headers: dict[str, str], body: bytes, status: int
) -> None:
    """An answer given before the body has come (head and body in two writes) either leaves
    the keep-alive connection usable or says ``Connection: close``: a client never sends its
    next request into a connection the server closed without a word (httpx's
    RemoteProtocolError after a few requests)."""
    assert stack.gateway.qr_port is not None
    async with await anyio.connect_tcp("127.0.0.1", stack.gateway.qr_port) as stream:
        raw = RawHttp(stream)
        if "content-length" not in headers and "transfer-encoding" not in headers:
            headers = headers | {"content-length": str(len(body))}
        await raw.head("POST", "/v1/qr/payments", headers)
        # The body's second write, once the server had the time to answer the head alone.
        with anyio.move_on_after(0.3):
            await raw.receive_some()
        try:
            await raw.send(h11.Data(data=body), h11.EndOfMessage())
            body_sent = True
        except anyio.BrokenResourceError:
            body_sent = False  # the server closed: fine only if its answer said so
        first = await raw.response()
        assert first is not None
        head, doc = first
        assert head.status_code == status
        assert json.loads(doc)["status"] == status
        assert body_sent or _closes(head), "connection closed with no Connection: close"
        if _closes(head):
            assert await raw.response() is None  # as announced
            assert status == 413  # only a body too large to read is left unread
            return
        raw.h11.start_next_cycle()
        try:
            await raw.head("GET", "/v1/qr/payments/qrp_x", {"authorization": f"Bearer {KEY}"})
            await raw.send(h11.EndOfMessage())
            second = await raw.response()
        except anyio.BrokenResourceError:
            second = None
        assert second is not None, f"{status} without Connection: close, then the connection closed"
        assert second[0].status_code == 404


async def test_client_gone_mid_body_is_an_info_line(stack: Stack) -> None:
    assert stack.gateway.qr_port is not None
    with structlog.testing.capture_logs() as logs:
        async with await anyio.connect_tcp("127.0.0.1", stack.gateway.qr_port) as stream:
            raw = RawHttp(stream)
            headers = {"authorization": f"Bearer {KEY}", "content-length": "100"}
            await raw.head("POST", "/v1/qr/payments", headers)
            await raw.send(h11.Data(data=b'{"qr": "'))
        await eventually(lambda: any(e["event"].startswith("qr_") for e in logs))
    assert [(e["event"], e["log_level"]) for e in logs] == [("qr_client_disconnected", "info")]
    assert "exc_info" not in logs[0]


async def test_internal_error_is_a_problem_without_traceback(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    service = stack.gateway.qr
    healthy = service.handler

    async def broken(
        _: Message, raw: bytes = b"", *, qr: QrVerification | None = None
    ) -> Message | None:
        raise RuntimeError("boom at /secret/path")

    service.handler = broken
    resp = await api.post("/v1/qr/payments", json=payment(cpm(WALLET), 100, "boom"))
    doc = assert_problem(resp, 500, "internal-error")
    assert "boom" not in resp.text
    assert "secret" not in doc["detail"]
    # Nothing was recorded under the key: once the switch is back, the retry goes through.
    service.handler = healthy
    resp = await api.post("/v1/qr/payments", json=payment(cpm(WALLET), 100, "boom"))
    assert resp.json()["status"] == "approved"


# qr-sim -----------------------------------------------------------------------------------------


async def test_qr_sim_commands(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--url", stack.qr_url, "--data", str(DEMO_CONF / "data.toml")]

    async def run(*argv: str) -> tuple[int, dict[str, Any]]:
        rc = await anyio.to_thread.run_sync(qr_sim.main, [*argv, *common])
        out = capsys.readouterr().out
        body: dict[str, Any] = json.loads(out[out.index("{") :]) if "{" in out else {}
        return rc, body

    rc, paid = await run("cpm", "--pan", WALLET, "--amount", "1250")
    assert (rc, paid["status"], paid["kind"]) == (0, "approved", "cpm")
    rc, body = await run("refund", paid["payment_id"], "--amount", "250")
    assert (rc, body["status"]) == (0, "approved")
    rc, body = await run("status", paid["payment_id"])
    assert (rc, body["refunded_amount"]) == (0, 250)
    rc, body = await run("mpm", "--payer-pan", WALLET_2, "--amount", "990")
    assert (rc, body["status"], body["kind"]) == (0, "approved", "mpm")
    rc, body = await run("mpm", "--payer-pan", WALLET_2, "--amount", "10", "--static")
    assert (rc, body["status"]) == (0, "approved")
    # over the one-factor tier's CNY 1,000: two stated factors lift it; an unknown one is 422
    two = "password,biometric"
    rc, body = await run("cpm", "--pan", WALLET_2, "--amount", "150000", "--verification", two)
    assert (rc, body["status"]) == (0, "approved")
    rc, body = await run("cpm", "--pan", WALLET_2, "--amount", "100", "--verification", "retina")
    assert (rc, body["status"], body["type"].rsplit("/", 1)[-1]) == (1, 422, "validation-error")
    rc, body = await run("cpm", "--pan", LOW, "--amount", "500", "--track2")
    assert (rc, body["response_code"]) == (1, "51")
    rc, body = await run("cpm", "--pan", "5413330000000027", "--amount", "75", "--cryptogram")
    assert (rc, body["status"]) == (0, "approved")
    assert stack.issuers["beta"].host.emv.verified == 1
    rc, body = await run("qr", "--merchant", CASINO, "--amount", "100")
    assert rc == 0
    assert body["dynamic"] is True
    rc, body = await run("status", "qrp_nothing")
    assert (rc, body["status"]) == (1, 404)
    rc = await anyio.to_thread.run_sync(
        qr_sim.main, ["status", "qrp_x", "--url", "http://127.0.0.1:9", "--api-key", "k"]
    )
    assert rc == 2
