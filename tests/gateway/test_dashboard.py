"""Dashboard: the page (CSP, self-contained, small), the snapshot's keys and numbers, masking."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import Counter
from starlette.applications import Starlette

from gateway.metrics import Metrics
from gateway.ops.dashboard import dashboard_routes, quantile_ms
from gateway.upstream.saf import SafMetrics
from loadtest.pos_sim import card_for
from tests.helpers import demo_dataset, purchase, running_stack, terminal
from tests.integration.journal_support import write_conf
from tests.integration.test_contactless import BETA_CARDS, contactless

CLEAR_PAN = "4761730000000011"
MASKED_PAN = "476173******0011"
TOP_KEYS = {
    "at",
    "ready",
    "draining",
    "in_flight",
    "tps",
    "tps_series",
    "window",
    "totals",
    "issuers",
    "stand_in_approved",
    "journal",
    "hsm",
    "alerts",
    "verification",
}
WINDOW_KEYS = {"seconds", "answers", "approved", "approval_rate", "by_rc", "p50_ms", "p99_ms"}
ISSUER_KEYS = {
    "issuer",
    "ready",
    "connections_up",
    "connections",
    "states",
    "breaker",
    "saf_depth",
    "saf_oldest_s",
    "saf_delivered",
    "p99_ms",
    "failures",
    "key_exchange",
    "key_generation",
    "zpk_kcv",
    "zak_kcv",
    "key_last_change",
    "key_next_change",
    "key_changes",
    "key_refusals",
    "key_last_refusal",
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gateway_status() -> dict[str, Any]:
    """The shape ``Gateway.status()`` returns (gateway/app.py)."""
    return {
        "ready": True,
        "links": [
            {
                "issuer": "alpha",
                "ready": True,
                "connections": [
                    {"index": 0, "state": "up", "endpoint": "127.0.0.1:9583", "connects": 1},
                    {
                        "index": 1,
                        "state": "connecting",
                        "endpoint": "127.0.0.1:9583",
                        "connects": 3,
                    },
                ],
            },
            {
                "issuer": "beta",
                "ready": False,
                "connections": [
                    {"index": 0, "state": "down", "endpoint": "127.0.0.1:9584", "connects": 0}
                ],
            },
        ],
        "recent_transactions": 12,
        "hsm": {
            "endpoint": "127.0.0.1:1500",
            "connections": 2,
            "requests": 40,
            "timeouts": 1,
            "errors": {"15": 2},
            "p50_ms": 0.4,
            "p99_ms": 2.5,
        },
        "journal": {
            "backend": "sqlite",
            "open": True,
            "recovered_at_start": 0,
            "writes": {
                "ops": 24,
                "batches": 6,
                "mean_batch": 4.0,
                "largest_batch": 9,
                "failed_batches": 0,
            },
            "saf_delivered": {"alpha": 3},
            "stand_in_approved": 5,
            "breakers": {
                "alpha": {"state": "closed", "failures": 0, "opens": 0},
                "beta": {"state": "open", "failures": 5, "opens": 1},
            },
        },
        "in_flight": 2,
        "draining": False,
    }


def make_client(
    metrics: Metrics,
    clock: Clock,
    alerts: Sequence[Mapping[str, object]] = (),
    status: Any = gateway_status,
) -> httpx.AsyncClient:
    """The routes mounted in an app of our own, served in-process."""
    routes = dashboard_routes(status, metrics, lambda n: list(alerts)[:n], clock=clock)
    transport = httpx.ASGITransport(app=Starlette(routes=routes))
    return httpx.AsyncClient(transport=transport, base_url="http://admin")


@pytest.mark.anyio
async def test_page_is_self_contained_with_csp() -> None:
    async with make_client(Metrics(), Clock()) as client:
        resp = await client.get("/dashboard")
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/html")
        page = resp.text
        assert len(resp.content) < 25_000
        assert not re.search(r"https?:|//[a-z0-9]", page, re.IGNORECASE), "no external URL"
        assert "src=" not in page
        assert "href=" not in page
        assert "@import" not in page
        csp = {
            d.split()[0]: d.split()[1:]
            for d in resp.headers["content-security-policy"].split(";")
            if d.strip()
        }
        assert csp["default-src"] == ["'none'"]
        assert csp["connect-src"] == ["'self'"]
        assert csp["frame-ancestors"] == ["'none'"]
        scripts = re.findall(r"<script>(.*?)</script>", page, re.DOTALL)
        styles = re.findall(r"<style>(.*?)</style>", page, re.DOTALL)
        assert len(scripts) == 1
        assert len(styles) == 1

        def digest(text: str) -> str:
            return (
                "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"
            )

        # The browser runs the inline script and style only because their hashes are listed.
        assert csp["script-src"] == [digest(scripts[0])]
        assert csp["style-src"] == [digest(styles[0])]
        assert 'fetch("dashboard/data"' in scripts[0]
        assert ".innerHTML" not in scripts[0], "data is shown with textContent only"
        # With admin tokens configured, the page asks for one and sends it as a bearer token.
        assert 'id="auth"' in page
        assert '{Authorization: "Bearer " + token}' in scripts[0]


@pytest.mark.anyio
async def test_data_keys_and_numbers_move_with_transactions() -> None:
    metrics, clock = Metrics(), Clock()
    saf = SafMetrics(metrics.registry)
    async with make_client(metrics, clock) as client:
        first = await client.get("/dashboard/data")
        assert first.status_code == 200
        assert first.headers["cache-control"] == "no-store"
        d0 = first.json()
        assert set(d0) == TOP_KEYS
        assert set(d0["window"]) == WINDOW_KEYS
        assert d0["totals"] == {"answers": 0, "approved": 0, "by_rc": {}}
        assert d0["tps"] == 0.0
        assert d0["tps_series"] == []
        assert d0["window"]["approval_rate"] is None
        assert d0["window"]["p50_ms"] is None

        # 30 approvals at 3 ms, 10 declines (51) at 40 ms, as the switch records them.
        for _ in range(30):
            metrics.observe_transaction("0200", "00", 0.003)
        for _ in range(10):
            metrics.observe_transaction("0200", "51", 0.04)
        metrics.observe_issuer("alpha", 0.002)
        metrics.issuer_failures.labels("beta", "timeout").inc(2)
        saf.depth.labels("beta").set(7)
        saf.oldest.labels("beta").set(42.5)

        clock.now += 0.5  # within a second: the same snapshot for every open page
        assert (await client.get("/dashboard/data")).json()["totals"]["answers"] == 0

        clock.now += 1.5  # two seconds after the first sample
        d1 = (await client.get("/dashboard/data")).json()
        assert set(d1) == TOP_KEYS
        assert d1["totals"] == {"answers": 40, "approved": 30, "by_rc": {"00": 30, "51": 10}}
        w = d1["window"]
        assert w["seconds"] == 2.0
        assert w["answers"] == 40
        assert w["approved"] == 30
        assert w["by_rc"] == {"00": 30, "51": 10}
        assert w["approval_rate"] == 0.75
        assert d1["tps_series"] == [20.0]
        assert d1["tps"] == 20.0
        assert w["p50_ms"] is not None
        assert 2.0 < w["p50_ms"] <= 5.0
        assert w["p99_ms"] is not None
        assert 20.0 < w["p99_ms"] <= 50.0

        issuers = {i["issuer"]: i for i in d1["issuers"]}
        assert set(issuers) == {"alpha", "beta"}
        assert all(set(i) == ISSUER_KEYS for i in issuers.values())
        alpha, beta = issuers["alpha"], issuers["beta"]
        assert (alpha["ready"], alpha["connections_up"], alpha["connections"]) == (True, 1, 2)
        assert alpha["breaker"] == "closed"
        assert alpha["saf_delivered"] == 3
        assert alpha["p99_ms"] is not None
        assert 1.0 < alpha["p99_ms"] <= 2.0
        assert (beta["ready"], beta["breaker"], beta["failures"]) == (False, "open", 2)
        assert (beta["saf_depth"], beta["saf_oldest_s"]) == (7, 42.5)
        assert d1["stand_in_approved"] == 5
        assert d1["journal"] == {
            "backend": "sqlite",
            "open": True,
            "records": 24,
            "commits": 6,
            "mean_batch": 4.0,
            "failed_commits": 0,
        }
        hsm = d1["hsm"]
        assert hsm["healthy"] is True
        assert hsm["errors"] == 2
        assert hsm["timeouts"] == 1

        # A quiet second: the rate falls to zero, the window still holds the 40 answers.
        clock.now += 1.0
        d2 = (await client.get("/dashboard/data")).json()
        assert d2["tps_series"] == [20.0, 0.0]
        assert d2["tps"] == 0.0
        assert d2["window"]["answers"] == 40

        # Nobody polled for a minute: the old answers leave the window; the totals keep them.
        clock.now += 61.0
        metrics.observe_transaction("0200", "91", 0.5)
        d3 = (await client.get("/dashboard/data")).json()
        assert d3["window"]["by_rc"] == {"91": 1}
        assert d3["window"]["approval_rate"] == 0.0
        assert d3["totals"]["answers"] == 41
        assert len(d3["tps_series"]) == 1


@pytest.mark.anyio
async def test_declines_and_step_ups_by_tier_and_challenge_success() -> None:
    metrics, clock = Metrics(), Clock()
    r = metrics.registry
    # the families the risk engine and the QR API register on the gateway's registry
    declines = Counter("payswitch_risk_tier_declines", "", ["tier"], registry=r)
    step_ups = Counter("switch_qr_step_ups", "", ["tier"], registry=r)
    outcomes = Counter("switch_qr_challenges", "", ["outcome"], registry=r)
    async with make_client(metrics, clock) as client:
        empty = (await client.get("/dashboard/data")).json()["verification"]
        assert empty == {"tiers": [], "challenges": {}, "challenge_success_rate": None}
        declines.labels("one_factor").inc(4)
        declines.labels("no_cvm").inc(2)
        declines.labels("static").inc()
        step_ups.labels("one_factor").inc(4)
        outcomes.labels("completed").inc(3)
        outcomes.labels("wrong_code").inc(5)
        outcomes.labels("locked").inc()
        clock.now += 1.0
        seen = (await client.get("/dashboard/data")).json()["verification"]
    assert seen == {
        "tiers": [  # weakest first
            {"tier": "no_cvm", "declines": 2, "step_ups": 0},
            {"tier": "static", "declines": 1, "step_ups": 0},
            {"tier": "one_factor", "declines": 4, "step_ups": 4},
        ],
        "challenges": {"completed": 3, "locked": 1, "wrong_code": 5},
        "challenge_success_rate": 0.75,  # completed per challenge issued
    }


@pytest.mark.anyio
async def test_no_clear_pan_in_data_when_an_alert_carries_one() -> None:
    alert: dict[str, object] = {
        "event": "risk.decline",
        "txn_id": "abc",
        "rc": "59",
        "masked_pan": CLEAR_PAN,  # a source that failed to mask
        "pan": CLEAR_PAN,
        "track2": f"{CLEAR_PAN}=2512101",
        "score": 87,
        "rules": ["velocity", f"blocked card {CLEAR_PAN}"],
        "hits": [{"name": "velocity", "detail": CLEAR_PAN}],
        "merchant_id": f"shop {CLEAR_PAN}",
        "terminal_id": "T0000001",
        "amount": 1250,
        "currency": "978",
        "at": "2026-11-27T10:00:00+00:00",
    }
    async with make_client(Metrics(), Clock(), alerts=[alert]) as client:
        resp = await client.get("/dashboard/data")
        assert resp.status_code == 200
        assert CLEAR_PAN not in resp.text
        assert "2512101" not in resp.text
        [shown] = resp.json()["alerts"]
        assert shown["masked_pan"] == MASKED_PAN
        assert shown["rules"] == ["velocity", f"blocked card {MASKED_PAN}"]
        assert shown["merchant_id"] == f"shop {MASKED_PAN}"
        assert (shown["rc"], shown["amount"], shown["score"]) == ("59", 1250, 87)
        assert "pan" not in shown
        assert "track2" not in shown
        assert "hits" not in shown


@pytest.mark.anyio
async def test_broken_status_is_a_clear_answer() -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("journal gone")

    async with make_client(Metrics(), Clock(), status=broken) as client:
        resp = await client.get("/dashboard/data")
        assert resp.status_code == 503
        assert resp.json() == {"error": "status unavailable"}


@pytest.mark.anyio
async def test_minimal_status_without_journal_or_hsm() -> None:
    async with make_client(
        Metrics(), Clock(), status=lambda: {"ready": False, "links": []}
    ) as client:
        d = (await client.get("/dashboard/data")).json()
        assert set(d) == TOP_KEYS
        assert d["journal"] is None
        assert d["hsm"] is None
        assert d["issuers"] == []


@pytest.mark.parametrize(
    ("q", "expected"),
    [(0.5, 3.5), (0.25, 2.75), (1.0, 5.0)],
)
def test_quantile_interpolates_within_the_bucket(q: float, expected: float) -> None:
    # 100 observations in (2 ms, 5 ms]: linear interpolation as Prometheus' histogram_quantile.
    buckets = ((0.001, 0.0), (0.002, 0.0), (0.005, 100.0), (float("inf"), 100.0))
    assert quantile_ms(q, buckets) == pytest.approx(expected)


def test_quantile_in_the_overflow_bucket_and_without_data() -> None:
    assert quantile_ms(0.99, ((10.0, 1.0), (float("inf"), 100.0))) == 10_000.0
    assert quantile_ms(0.5, ((10.0, 0.0), (float("inf"), 0.0))) is None
    assert quantile_ms(0.5, ()) is None


@pytest.mark.anyio
async def test_steady_polling_keeps_a_sixty_second_window() -> None:
    metrics, clock = Metrics(), Clock()
    async with make_client(metrics, clock) as client:
        for second in range(90):
            for _ in range(5 if second < 45 else 10):
                metrics.observe_transaction("0200", "00", 0.001)
            clock.now += 1.0
            d = (await client.get("/dashboard/data")).json()
        assert len(d["tps_series"]) == 60
        assert d["window"]["seconds"] == 60.0
        assert d["tps"] == 10.0
        assert d["tps_series"][-45:] == [10.0] * 45
        assert d["tps_series"][:15] == [5.0] * 15
        assert d["window"]["answers"] == 15 * 5 + 45 * 10
        assert d["totals"]["answers"] == 45 * 5 + 45 * 10


@pytest.mark.anyio
async def test_with_the_real_gateway(pki_dir: Path, tmp_path: Path) -> None:
    """Gateway.status(), its metrics and its risk engine's alerts, as admin.py would mount them."""
    async with running_stack(pki_dir, journal=write_conf(tmp_path)) as stack:
        gw = stack.gateway
        risk = gw.risk
        assert risk is not None
        clock = Clock()
        routes = dashboard_routes(gw.status, gw.metrics, risk.recent_alerts, clock=clock)
        transport = httpx.ASGITransport(app=Starlette(routes=routes))
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
            before = (await client.get("/dashboard/data")).json()
            card = card_for(demo_dataset(), BETA_CARDS[0], atc=300)
            async with terminal(stack.port) as term:
                assert (await term.exchange(purchase(CLEAR_PAN, 1250)))["39"] == "00"
                assert (await term.exchange(purchase(CLEAR_PAN, 6_000_000)))["39"] == "61"
                tap, _ = contactless(card, 100_001)  # no CVM over the demo's CNY 1,000
                assert (await term.exchange(tap))["39"] == "65"
            clock.now += 1.0
            resp = await client.get("/dashboard/data")
    after = resp.json()
    assert set(before) == TOP_KEYS
    assert {i["issuer"] for i in before["issuers"]} == {"alpha", "beta", "gamma"}
    assert all(i["ready"] for i in before["issuers"])
    assert all(i["connections_up"] == i["connections"] == 2 for i in before["issuers"])
    assert before["journal"]["backend"] == "sqlite"
    assert before["hsm"]["healthy"] is True
    assert CLEAR_PAN not in resp.text
    assert after["totals"]["by_rc"]["00"] >= 1
    assert after["window"]["by_rc"] == {"00": 1, "61": 1, "65": 1}
    assert after["window"]["approval_rate"] == 0.3333
    assert after["tps"] == 3.0
    assert after["verification"]["tiers"] == [{"tier": "no_cvm", "declines": 1, "step_ups": 0}]
    alpha = next(i for i in after["issuers"] if i["issuer"] == "alpha")
    assert alpha["breaker"] == "closed"  # a breaker exists once the issuer was asked
    assert alpha["p99_ms"] is not None
    assert after["journal"]["records"] > before["journal"]["records"]
    [decline] = [a for a in after["alerts"] if a["rc"] == "61"]
    assert decline["masked_pan"] == MASKED_PAN
    assert decline["amount"] == 6_000_000


@pytest.mark.anyio
async def test_link_keys_show_generation_and_check_values_never_keys() -> None:
    secret = "SD0112P0TB00E0000" + "A" * 96  # what a careless status could carry

    def status() -> dict[str, Any]:
        st = gateway_status()
        st["links"][0]["key_lifecycle"] = {
            "exchange": True,
            "generation": 3,
            "zpk_kcv": "21D805",
            "zak_kcv": "B704C2",
            "last_change": "2026-12-07T05:40:00+00:00",
            "next_change": "2026-12-07T06:40:00+00:00",
            "rotation_interval": 3600.0,
            "changes": 6,
            "refusals": 1,
            "last_refusal": "zpk: kcv_mismatch (by switch)",
            "zpk": secret,
        }
        return st

    async with make_client(Metrics(), Clock(), status=status) as client:
        resp = await client.get("/dashboard/data")
        page = await client.get("/dashboard")
    assert secret not in resp.text
    alpha, beta = resp.json()["issuers"]
    assert set(alpha) == ISSUER_KEYS
    assert (alpha["key_generation"], alpha["zpk_kcv"], alpha["zak_kcv"]) == (3, "21D805", "B704C2")
    assert alpha["key_next_change"] == "2026-12-07T06:40:00+00:00"
    assert (alpha["key_changes"], alpha["key_refusals"]) == (6, 1)
    assert alpha["key_last_refusal"] == "zpk: kcv_mismatch (by switch)"
    # A link without key exchange: generation 0, nothing scheduled.
    assert (beta["key_exchange"], beta["key_generation"], beta["key_next_change"]) == (
        False,
        0,
        None,
    )
    assert 'id="linkkeys"' in page.text
