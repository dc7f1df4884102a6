"""The generator against a scripted fake gateway on 127.0.0.1: code tables, errors, percentiles,
the open-loop schedule and latency measured from the schedule (no coordinated omission)."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from loadtest.generator import GeneratorError, LoadConfig, LoadGenerator
from loadtest.mix import TxnFactory, load_data
from loadtest.qr_client import QrClient
from tests.helpers import eventually
from tests.loadtest.fakes import FakeGateway, Step

pytestmark = pytest.mark.anyio

APPROVE_MOSTLY = [Step("00")] * 7 + [Step("51"), Step("05"), Step("91", delay=0.03)]


@asynccontextmanager
async def fake_gateway(script: list[Step]) -> AsyncIterator[FakeGateway]:
    fake = FakeGateway(script)
    async with anyio.create_task_group() as tg:
        await tg.start(fake.serve)
        yield fake
        tg.cancel_scope.cancel()


def config(port: int, **kw: object) -> LoadConfig:
    base: dict[str, object] = {
        "port": port,
        "connections": 2,
        "in_flight": 8,
        "duration": 0.2,
        "warmup": 0.0,
        "timeout": 2.0,
        "seed": 7,
    }
    base.update(kw)
    return LoadConfig(**base)  # type: ignore[arg-type]


async def test_closed_loop_code_table_matches_what_the_peer_answered() -> None:
    async with fake_gateway(APPROVE_MOSTLY) as fake:
        with anyio.fail_after(10):
            stats = await LoadGenerator(config(fake.port)).run()
    summary = stats.summary()
    assert fake.received > 20
    assert summary["response_codes"] == dict(sorted(fake.answered.items()))
    assert summary["transactions"] == fake.received
    assert summary["error_count"] == 0
    assert summary["by_kind"]["magstripe"]["transactions"] == fake.received
    # One answer in ten waits 30 ms: the median does not, the 99th percentile does.
    assert summary["latency_ms"]["p50"] < 30
    assert summary["latency_ms"]["p99"] >= 30
    assert summary["tps"] == pytest.approx(fake.received / stats.elapsed, rel=0.01)


async def test_errors_are_counted_by_name_and_never_as_codes() -> None:
    script = [Step("00"), Step("00"), Step(drop=True), Step(garbage=True)]
    async with fake_gateway(script) as fake:
        cfg = config(fake.port, in_flight=4, duration=0.2, timeout=0.3, drain=1.0)
        with anyio.fail_after(10):
            stats = await LoadGenerator(cfg).run()
    errors = stats.errors
    assert fake.dropped > 0
    assert errors["undecodable answer"] == fake.garbled
    # A dropped or garbled request ends as a timeout (or unanswered when the run ends first).
    assert errors["timeout"] + errors["unanswered at end"] == fake.dropped + fake.garbled
    assert stats.codes == fake.answered
    assert stats.count + errors["timeout"] + errors["unanswered at end"] == fake.received


async def test_open_loop_sends_on_schedule_and_measures_from_it() -> None:
    async with fake_gateway([Step("00")]) as fake:
        cfg = config(fake.port, rate=400.0, duration=0.25)
        gen = LoadGenerator(cfg)
        with anyio.fail_after(10):
            stats = await gen.run()
    assert gen.scheduled == 100  # 0.25 s at 400/s
    assert stats.count == 100
    assert fake.received == 100
    # Arrivals spread over the window at the configured rate, not in one burst.
    spread = fake.arrivals[-1] - fake.arrivals[0]
    assert 0.2 < spread < 0.4
    assert stats.summary()["tps"] == pytest.approx(400, rel=0.05)


async def test_open_loop_charges_a_generator_stall_to_latency() -> None:
    """The generator's own loop freezes for 120 ms: requests due meanwhile leave late, and
    their latency counts from when they were due (a closed loop would hide the stall)."""
    async with fake_gateway([Step("00")]) as fake:
        gen = LoadGenerator(config(fake.port, rate=400.0, duration=0.4))

        async def freeze() -> None:
            await eventually(lambda: gen.scheduled >= 40, timeout=5)
            time.sleep(0.12)  # noqa: ASYNC251 - blocks the event loop, as a GC pause or a busy CPU would

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(freeze)
                stats = await gen.run()
    assert gen.scheduled == 160
    assert stats.count == 160
    assert gen.late_max >= 0.11
    assert max(stats.latencies) >= 0.11
    # The ~48 requests due during the freeze carry it: the first half of them >= 60 ms.
    assert sum(1 for x in stats.latencies if x >= 0.06) >= 20


async def test_reversals_follow_approved_purchases() -> None:
    async with fake_gateway([Step("00")]) as fake:
        fake.keep = True
        cfg = config(fake.port, mix="magstripe=3,pin_tpk=1,reversal=1")
        with anyio.fail_after(10):
            stats = await LoadGenerator(cfg).run()
    assert stats.by_kind["reversal"].codes["00"] > 0
    purchases = {(m.fields["11"], m.fields["7"]): m for m in fake.requests if m.mti == "0200"}
    reversals = [m for m in fake.requests if m.mti == "0400"]
    assert reversals
    for rev in reversals:
        f90 = rev.fields["90"]
        original = purchases[(f90[4:10], f90[10:20])]
        assert f90[:4] == "0200"
        assert rev.fields["4"] == original.fields["4"]
        assert rev.fields["41"] == original.fields["41"]
    assert any("52" in m.fields for m in purchases.values())


async def test_a_missing_prerequisite_is_reported_not_fatal() -> None:
    async with fake_gateway([Step("00")]) as fake, QrClient("http://127.0.0.1:9", "k") as qr:
        cfg = config(fake.port, mix="magstripe=1,qr=1", duration=0.1)
        with anyio.fail_after(10):
            stats = await LoadGenerator(cfg, qr=qr).run()
    assert "qr" in stats.unavailable
    assert "not reachable" in stats.unavailable["qr"]
    assert stats.count > 0
    assert set(stats.by_kind) == {"magstripe"}


async def test_nothing_to_send_is_a_clear_error() -> None:
    with socket_closed_port() as port:
        cfg = config(port, duration=0.2)
        with pytest.raises(GeneratorError, match="gateway not reachable"):
            await LoadGenerator(cfg).run()


def socket_closed_port() -> _ClosedPort:
    return _ClosedPort()


class _ClosedPort:
    """A loopback port that nothing listens on (bound, never listening)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        port: int = self.sock.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def qr_app() -> Starlette:
    """A tiny stand-in for the QR API: approves even amounts, declines odd ones with 61."""

    async def pay(request: Request) -> JSONResponse:
        if request.headers.get("authorization") != "Bearer demo-qr-acquirer-key-0001":
            return JSONResponse({"type": "unauthorized"}, status_code=401)
        body = await request.json()
        rc = "00" if body["amount"] % 2 == 0 else "61"
        if not (body.get("qr") and body.get("idempotency_key") and body.get("merchant_id")):
            return JSONResponse({"type": "bad-request"}, status_code=400)
        return JSONResponse(
            {"response_code": rc, "status": "approved" if rc == "00" else "declined"}
        )

    async def get(request: Request) -> JSONResponse:
        return JSONResponse({"type": "not-found"}, status_code=404)

    return Starlette(
        routes=[
            Route("/v1/qr/payments", pay, methods=["POST"]),
            Route("/v1/qr/payments/{pid}", get, methods=["GET"]),
        ]
    )


async def test_qr_items_go_through_the_http_api() -> None:
    factory = TxnFactory(load_data(), rnd=random.Random(3))
    transport = httpx.ASGITransport(app=qr_app())
    async with QrClient("http://qr.test", factory.qr_api_key, transport=transport) as qr:
        cfg = config(1, mix="qr=1", duration=0.15, in_flight=4)
        with anyio.fail_after(10):
            stats = await LoadGenerator(cfg, factory, qr=qr).run()
    assert stats.unavailable == {}
    assert stats.count > 0
    assert set(stats.codes) <= {"00", "61"}
    assert sum(stats.codes.values()) == stats.by_kind["qr"].codes.total()
    assert stats.errors == {}
