"""QR tiers and the step-up over real HTTP: a static-code payer stops at CNY 500 a day; a
one-factor payer over CNY 1,000 is challenged (nothing sent to the issuer), answers with a TOTP
code and is charged exactly once however often the verify call comes; wrong codes lock the
challenge after 5; a late answer finds it expired."""

from __future__ import annotations

import datetime as dt
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pyotp
import pytest
import structlog

from gateway.config import QrApiConfig
from gateway.qr.service import utcnow
from tests.helpers import DEMO_CONF, Stack, running_stack
from tests.qr.test_api import (
    GROCERY,
    KEY,
    WALLET,
    assert_problem,
    cpm,
    issuer_requests,
    payment,
)

pytestmark = pytest.mark.anyio

ENROLLED = "6250940000000027"  # conf/demo/otp.toml (gamma, balance CNY 50,000)
SECRET = next(
    p["totp_secret"]
    for p in tomllib.loads((DEMO_CONF / "otp.toml").read_text())["payers"]
    if p["pan"] == ENROLLED
)
ONE_FACTOR = ["password"]


@pytest.fixture
async def stack(pki_dir: Path) -> AsyncIterator[Stack]:
    async with running_stack(pki_dir, qr_api=QrApiConfig(port=0, otp_enrolment="otp.toml")) as s:
        yield s


@pytest.fixture
async def api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=stack.qr_url, headers=headers, timeout=10) as client:
        yield client


def code(at: dt.datetime | None = None) -> str:
    return pyotp.TOTP(SECRET).at(at or utcnow())


def wrong(right: str) -> str:
    return f"{(int(right) + 500_000) % 1_000_000:06d}"


async def challenged(api: httpx.AsyncClient, key: str, amount: int = 30_000) -> dict[str, Any]:
    """A one-factor payer who has paid CNY 800 today asks for ``amount`` more: challenged."""
    first = await api.post(
        "/v1/qr/payments",
        json=payment(cpm(ENROLLED), 80_000, f"{key}-first", payer_verification=ONE_FACTOR),
    )
    assert first.json()["status"] == "approved", first.text
    over = await api.post(
        "/v1/qr/payments",
        json=payment(cpm(ENROLLED), amount, key, payer_verification=ONE_FACTOR),
    )
    return assert_problem(over, 403, "verification-required")


async def test_static_code_payer_refused_after_cny_500(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    static = (await api.post("/v1/qr/mpm", json={"merchant_id": GROCERY})).json()
    assert static["dynamic"] is False
    # whatever the wallet says it verified: a static code is capped at CNY 500 a day
    factors = {"payer_pan": WALLET, "payer_verification": ["password", "biometric"]}
    for i, amount in enumerate((30_000, 20_000)):
        resp = await api.post(
            "/v1/qr/payments", json=payment(static["qr"], amount, f"s{i}", **factors)
        )
        assert resp.json()["status"] == "approved", resp.text
    sent = issuer_requests(stack, "gamma")
    refused = await api.post("/v1/qr/payments", json=payment(static["qr"], 100, "s3", **factors))
    assert refused.status_code == 201
    assert (refused.json()["status"], refused.json()["response_code"]) == ("declined", "61")
    assert issuer_requests(stack, "gamma") == sent


async def test_step_up_with_totp_charges_exactly_once(stack: Stack, api: httpx.AsyncClient) -> None:
    before = stack.account_balance("gamma", ENROLLED)
    with structlog.testing.capture_logs() as logs:
        doc = await challenged(api, "step")
        assert doc["factor"] == "otp"
        pid = doc["payment_id"]
        assert doc["verify"] == f"/v1/qr/payments/{pid}/verify"
        sent = issuer_requests(stack, "gamma")
        assert stack.account_balance("gamma", ENROLLED) == before - 80_000  # nothing yet
        # the wallet retries its POST: the same challenge, not a second one
        again = await api.post(
            "/v1/qr/payments",
            json=payment(cpm(ENROLLED), 30_000, "step", payer_verification=ONE_FACTOR),
        )
        assert assert_problem(again, 403, "verification-required")["payment_id"] == pid
        url = f"/v1/qr/payments/{pid}/verify"
        right = code()
        bad = await api.post(url, json={"otp": wrong(right)})
        assert assert_problem(bad, 422, "verification-failed")["attempts_left"] == 4
        # the right code, sent twice at once (a retry racing the first): one charge
        answers: list[httpx.Response] = []

        async def send() -> None:
            answers.append(await api.post(url, json={"otp": right}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            tg.start_soon(send)
        later = await api.post(url, json={"otp": right})
    bodies = {a.text for a in (*answers, later)}
    assert len(bodies) == 1
    paid = later.json()
    assert (paid["payment_id"], paid["status"], paid["amount"]) == (pid, "approved", 30_000)
    assert {a.status_code for a in answers} == {201}
    assert sorted(a.headers["idempotent-replayed"] for a in answers) == ["false", "true"]
    assert issuer_requests(stack, "gamma") == sent + 1
    assert stack.account_balance("gamma", ENROLLED) == before - 110_000
    # the first POST's key now answers the payment; GET finds it
    replay = await api.post(
        "/v1/qr/payments",
        json=payment(cpm(ENROLLED), 30_000, "step", payer_verification=ONE_FACTOR),
    )
    assert (replay.status_code, replay.json()) == (201, paid)
    assert (await api.get(f"/v1/qr/payments/{pid}")).json()["status"] == "approved"
    text = repr(logs)
    for secret in (right, wrong(right), SECRET, ENROLLED):
        assert secret not in text
    assert "qr_step_up" in text


async def test_wrong_codes_lock_the_challenge_after_five(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    before = stack.account_balance("gamma", ENROLLED)
    pid = (await challenged(api, "lock"))["payment_id"]
    url = f"/v1/qr/payments/{pid}/verify"
    right = code()
    for left in (4, 3, 2, 1):
        bad = await api.post(url, json={"otp": wrong(right)})
        assert assert_problem(bad, 422, "verification-failed")["attempts_left"] == left
    assert_problem(await api.post(url, json={"otp": wrong(right)}), 403, "verification-locked")
    assert_problem(await api.post(url, json={"otp": right}), 403, "verification-locked")
    assert stack.account_balance("gamma", ENROLLED) == before - 80_000


async def test_expired_challenge_is_a_clear_problem(stack: Stack, api: httpx.AsyncClient) -> None:
    pid = (await challenged(api, "late"))["payment_id"]
    late = utcnow() + dt.timedelta(seconds=301)
    stack.gateway.qr.clock = lambda: late
    resp = await api.post(f"/v1/qr/payments/{pid}/verify", json={"otp": code(late)})
    assert_problem(resp, 410, "verification-expired")


async def test_unknown_factor_and_bad_code_format_are_422(api: httpx.AsyncClient) -> None:
    body = payment(cpm(ENROLLED), 100, "f1", payer_verification=["password", "retina"])
    resp = await api.post("/v1/qr/payments", json=body)
    doc = assert_problem(resp, 422, "validation-error")
    assert doc["errors"][0]["field"] == "payer_verification.1"
    assert "retina" not in resp.text  # the input is never echoed
    short = await api.post("/v1/qr/payments/qrp_x/verify", json={"otp": "12345"})
    assert_problem(short, 422, "validation-error")
    unknown = await api.post("/v1/qr/payments/qrp_x/verify", json={"otp": "123456"})
    assert_problem(unknown, 404, "not-found")
