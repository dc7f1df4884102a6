"""Admin API access control (bearer tokens, roles, default-deny) and its hash-chained audit."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import anyio
import httpx
import orjson
import pydantic
import pytest
import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.cli import main as gateway_cli
from gateway.config import AdminConfig, AdminTokenConfig, load_gateway_config
from gateway.edge import http as http_module
from gateway.edge.http import AUTH_FAILURES_LIMIT, AUTH_FAILURES_WINDOW, AuthFailures
from gateway.metrics import Metrics
from gateway.ops import admin
from gateway.ops.admin import (
    POLL_AUDIT_INTERVAL,
    AdminAccess,
    Authenticator,
    admin_app,
    hash_token,
)
from gateway.ops.audit import GENESIS, AuditLog, line_hash, verify_file
from gateway.ops.dashboard import dashboard_routes
from kit.conf import ConfigError
from kit.logs import configure

if TYPE_CHECKING:
    from gateway.app import Gateway

pytestmark = pytest.mark.anyio

VIEWER, OPERATOR = "viewer-secret-token-1", "operator-secret-token-2"
TOKENS = (
    AdminTokenConfig(id="ops-bob", role="viewer", sha256=hash_token(VIEWER)),
    AdminTokenConfig(id="ops-alice", role="operator", sha256=hash_token(OPERATOR)),
)


class FakeGateway:
    """What the admin views use of the gateway: risk alerts and the rule reload."""

    risk = None

    def __init__(self) -> None:
        self.reloads = 0

    def reload_risk(self) -> dict[str, Any]:
        self.reloads += 1
        return {"reloaded": True, "restart_only_ignored": ["backend"]}


def _status() -> dict[str, Any]:
    return {"ready": True, "links": [{"issuer": "alpha", "ready": True}]}


async def _reports(_: Request) -> Response:
    return JSONResponse({"page": "reports"})


@pytest.fixture
def logs() -> Iterator[io.BytesIO]:
    out = io.BytesIO()
    configure("info", stream=out)
    structlog.configure(cache_logger_on_first_use=False)
    try:
        yield out
    finally:
        structlog.reset_defaults()


def _client(
    tmp_path: Path, gateway: FakeGateway | None = None, **admin: Any
) -> tuple[httpx.AsyncClient, AdminAccess]:
    cfg = AdminConfig(**{"tokens": TOKENS, "audit_file": "audit.log", **admin})
    access = AdminAccess.from_config(cfg, tmp_path)
    app = admin_app(
        Metrics(),
        _status,
        cast("Gateway", gateway or FakeGateway()),
        access=access,
        extra_routes=[  # a page added later, not listed, and the dashboard's routes
            Route("/reports", _reports),
            *dashboard_routes(_status, Metrics()),
        ],
    )
    transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 41000))
    return httpx.AsyncClient(transport=transport, base_url="http://admin"), access


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    http, _ = _client(tmp_path)
    async with http:
        yield http


def _audit(tmp_path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (tmp_path / "audit.log").read_bytes().splitlines()]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_public_routes_need_no_token(client: httpx.AsyncClient, tmp_path: Path) -> None:
    assert (await client.get("/healthz")).text == "ok\n"
    assert (await client.get("/readyz")).json()["ready"] is True
    assert (await client.get("/metrics")).status_code == 200
    assert not (tmp_path / "audit.log").exists()  # public reads are not audited


async def test_missing_and_unknown_tokens_get_401_problem(client: httpx.AsyncClient) -> None:
    missing = await client.get("/status")
    assert missing.status_code == 401
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    doc = missing.json()
    assert doc["status"] == 401
    assert doc["type"].endswith("/admin-unauthorized")
    assert doc["instance"] == "/status"
    for header in (bearer("not-a-configured-token"), {"Authorization": f"Basic {VIEWER}"}):
        unknown = await client.get("/alerts", headers=header)
        assert unknown.status_code == 401
        assert unknown.headers["www-authenticate"].startswith("Bearer")
    assert 'error="invalid_token"' in unknown.headers["www-authenticate"]


async def test_viewer_reads_but_cannot_reload(tmp_path: Path) -> None:
    gateway = FakeGateway()
    http, _ = _client(tmp_path, gateway)
    async with http:
        assert (await http.get("/status", headers=bearer(VIEWER))).json()["ready"] is True
        assert (await http.get("/alerts", headers=bearer(VIEWER))).json() == []
        denied = await http.post("/admin/reload", headers=bearer(VIEWER))
    assert denied.status_code == 403
    assert denied.headers["content-type"] == "application/problem+json"
    assert denied.json()["required_role"] == "operator"
    assert denied.json()["type"].endswith("/admin-forbidden")
    assert gateway.reloads == 0


async def test_operator_reloads(tmp_path: Path) -> None:
    gateway = FakeGateway()
    http, _ = _client(tmp_path, gateway)
    async with http:
        ok = await http.post("/admin/reload", headers=bearer(OPERATOR))
        assert (await http.get("/status", headers=bearer(OPERATOR))).status_code == 200
    assert ok.status_code == 200
    assert ok.json()["reloaded"] is True
    assert gateway.reloads == 1


async def test_unlisted_routes_are_denied_by_default(client: httpx.AsyncClient) -> None:
    assert (await client.get("/reports")).status_code == 401
    assert (await client.get("/reports", headers=bearer(VIEWER))).json() == {"page": "reports"}
    assert (await client.get("/no-such-page")).status_code == 401  # no route enumeration
    assert (await client.get("/no-such-page", headers=bearer(VIEWER))).status_code == 404
    # A state change anywhere needs the operator role, even on a path not listed.
    assert (await client.post("/reports", headers=bearer(VIEWER))).status_code == 403
    assert (await client.post("/healthz", headers=bearer(VIEWER))).status_code == 403


async def test_dashboard_page_is_public_its_data_is_not_and_polls_are_audited_sparsely(
    tmp_path: Path,
) -> None:
    """The page holds no data (a browser opens it without a header, then it asks for a
    token); its data needs a viewer, and an open page's polling is audited once per token
    per interval, refusals every time."""
    http, access = _client(tmp_path)
    now = [1000.0]
    access.clock = lambda: now[0]
    async with http:
        page = await http.get("/dashboard")
        assert page.status_code == 200
        assert "text/html" in page.headers["content-type"]
        # The icon a browser asks for with the page: empty and open, so no 401 in its console.
        icon = await http.get("/favicon.ico")
        assert (icon.status_code, icon.content) == (204, b"")
        assert (await http.get("/dashboard/data")).status_code == 401
        for _ in range(5):
            assert (await http.get("/dashboard/data", headers=bearer(VIEWER))).status_code == 200
        now[0] += POLL_AUDIT_INTERVAL + 1
        assert (await http.get("/dashboard/data", headers=bearer(VIEWER))).status_code == 200
        assert (await http.get("/dashboard/data", headers=bearer(OPERATOR))).status_code == 200
        assert (await http.get("/dashboard/data")).status_code == 401
    records = [(r["token_id"], r["path"], r["status"]) for r in _audit(tmp_path)]
    assert records == [
        (None, "/dashboard/data", 401),
        ("ops-bob", "/dashboard/data", 200),  # the first of five polls
        ("ops-bob", "/dashboard/data", 200),  # the first after the interval
        ("ops-alice", "/dashboard/data", 200),
        (None, "/dashboard/data", 401),
    ]


async def test_an_address_with_too_many_failed_tokens_is_refused_for_a_while(
    tmp_path: Path,
) -> None:
    """Past AUTH_FAILURES_LIMIT bad tokens in a window, the address gets 429 without its token
    being looked at (a valid one too): no brute force, and one audit record per window."""
    http, access = _client(tmp_path)
    now = [1000.0]
    access.clock = lambda: now[0]
    async with http:
        for i in range(AUTH_FAILURES_LIMIT):
            assert (await http.get("/status", headers=bearer(f"guess-{i}"))).status_code == 401
        blocked = await http.get("/status", headers=bearer(VIEWER))
        assert blocked.status_code == 429
        assert blocked.headers["content-type"].startswith("application/problem+json")
        assert blocked.json()["type"].endswith("/admin-too-many-failures")
        assert 1 <= int(blocked.headers["Retry-After"]) <= AUTH_FAILURES_WINDOW
        for _ in range(5):
            assert (await http.get("/status")).status_code == 429
        assert (await http.get("/healthz")).status_code == 200  # probes are never refused
        now[0] += AUTH_FAILURES_WINDOW + 1
        assert (await http.get("/status", headers=bearer(VIEWER))).status_code == 200
    statuses = [r["status"] for r in _audit(tmp_path)]
    assert statuses == [401] * AUTH_FAILURES_LIMIT + [429, 200]  # the 429s: one record


def test_failed_addresses_are_bounded_least_recently_failed_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http_module, "_AUTH_PEERS", 2)
    failures = AuthFailures()
    for peer in ("a", "b", "a", "c"):  # "a" failed again: now more recent than "b"
        failures.failed(peer, 0.0)
    assert list(failures._failures) == ["a", "c"]
    assert [len(seen) for seen in failures._failures.values()] == [2, 1]


async def test_metrics_can_require_a_viewer(tmp_path: Path) -> None:
    http, _ = _client(tmp_path, metrics_public=False)
    async with http:
        assert (await http.get("/metrics")).status_code == 401
        assert (await http.get("/metrics", headers=bearer(VIEWER))).status_code == 200
        assert (await http.get("/healthz")).status_code == 200


async def test_audit_records_allowed_and_denied_without_the_token(
    tmp_path: Path, logs: io.BytesIO
) -> None:
    http, _ = _client(tmp_path)
    async with http:
        await http.get("/status", headers=bearer(VIEWER))
        await http.post("/admin/reload", headers=bearer(VIEWER))
        await http.post("/admin/reload", headers=bearer(OPERATOR))
        await http.get("/status", headers=bearer("wrong-token"))
        await http.get("/healthz")
    every = _audit(tmp_path)
    # The operator's action: its intent on file before it ran, then its result.
    assert [(r["token_id"], r["path"], r.get("phase"), r.get("status")) for r in every[2:4]] == [
        ("ops-alice", "/admin/reload", "intent", None),
        ("ops-alice", "/admin/reload", None, 200),
    ]
    records = [r for r in every if r.get("phase") != "intent"]
    assert [(r["token_id"], r["method"], r["path"], r["status"]) for r in records] == [
        ("ops-bob", "GET", "/status", 200),
        ("ops-bob", "POST", "/admin/reload", 403),
        ("ops-alice", "POST", "/admin/reload", 200),
        (None, "GET", "/status", 401),
    ]
    assert records[0]["role"] == "viewer"
    assert records[2]["role"] == "operator"
    assert records[3]["role"] is None
    assert records[3]["authenticated"] is False
    assert all(r["peer"] == "192.0.2.7:41000" and r["time"] for r in every)
    assert records[2]["detail"] == {"reloaded": True, "restart_only_ignored": ["backend"]}
    assert "detail" not in records[1]  # denied: nothing ran
    assert [r["prev"] for r in every[1:]] == [
        line_hash(line) for line in (tmp_path / "audit.log").read_bytes().splitlines()[:-1]
    ]
    logged = [orjson.loads(line) for line in logs.getvalue().splitlines() if b'"audit"' in line]
    assert [r["status"] for r in logged if r.get("event") == "admin_access"] == [
        200, 403, 200, 401
    ]  # fmt: skip
    assert logged[-1]["line_sha256"] == line_hash(
        (tmp_path / "audit.log").read_bytes().splitlines()[-1]
    )
    everything = (tmp_path / "audit.log").read_bytes() + logs.getvalue()
    for token in (VIEWER, OPERATOR, "wrong-token"):
        assert token.encode() not in everything


async def test_unauthenticated_loopback_api_is_open_and_audited(
    tmp_path: Path, logs: io.BytesIO
) -> None:
    http, access = _client(tmp_path, tokens=())
    async with http:
        assert (await http.get("/status")).status_code == 200
        assert (await http.post("/admin/reload")).status_code == 200
    assert not access.authenticator.enabled
    assert b"admin_api_unauthenticated" in logs.getvalue()
    records = _audit(tmp_path)
    assert [(r["path"], r["authenticated"], r.get("phase")) for r in records] == [
        ("/status", False, None),
        ("/admin/reload", False, "intent"),
        ("/admin/reload", False, None),
    ]
    assert all(r["token_id"] is None for r in records)


async def test_audit_chain_continues_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    await AuditLog(path).record({"event": "one"})
    await AuditLog(path).record({"event": "two"})  # a new process: prev read from the file
    first, second = path.read_bytes().splitlines()
    assert orjson.loads(first)["prev"] == GENESIS
    assert orjson.loads(second)["prev"] == line_hash(first)
    assert verify_file(path).ok


async def _chain(path: Path, n: int) -> list[bytes]:
    audit = AuditLog(path)
    for i in range(n):
        await audit.record({"path": "/status", "status": 200, "n": i})
    return (await anyio.Path(path).read_bytes()).splitlines(keepends=True)


async def test_verifier_catches_an_edited_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    lines = await _chain(path, 5)
    report = verify_file(path)
    assert report.ok
    assert report.lines == 5
    assert report.head == line_hash(lines[-1])
    lines[2] = lines[2].replace(b'"status":200', b'"status":403')
    path.write_bytes(b"".join(lines))
    report = verify_file(path)
    assert not report.ok
    assert report.broken_line == 4
    assert report.lines == 3


async def test_verifier_catches_a_deleted_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    lines = await _chain(path, 5)
    path.write_bytes(b"".join(lines[:1] + lines[2:]))
    assert verify_file(path).broken_line == 2
    path.write_bytes(b"".join(lines[1:]))  # the first line gone
    assert verify_file(path).broken_line == 1


async def test_verifier_flags_a_torn_last_line_and_the_writer_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    lines = await _chain(path, 2)
    path.write_bytes(b"".join(lines) + b'{"time":"2026')
    report = verify_file(path)
    assert not report.ok
    assert report.broken_line == 3
    assert "incomplete" in report.reason
    await AuditLog(path).record({"n": 3})
    assert verify_file(path).broken_line == 3  # not JSON: reported, never hidden
    assert path.read_bytes().endswith(b"}\n")


async def test_audit_verify_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.log"
    lines = await _chain(path, 3)
    assert gateway_cli(["audit", "verify", str(path)]) == 0
    assert orjson.loads(capsys.readouterr().out.splitlines()[-1])["lines"] == 3
    path.write_bytes(b"".join([lines[0], lines[2]]))
    assert gateway_cli(["audit", "verify", str(path)]) == 1
    out = orjson.loads(capsys.readouterr().out.splitlines()[-1])
    assert out["ok"] is False
    assert out["broken_line"] == 2
    assert gateway_cli(["audit", "verify", str(tmp_path / "missing.log")]) == 2


def test_startup_refuses_non_loopback_admin_without_tokens(tmp_path: Path) -> None:
    with pytest.raises(pydantic.ValidationError, match="without tokens"):
        AdminConfig(host="0.0.0.0")
    conf = tmp_path / "gateway.toml"
    conf.write_text('[admin]\nhost = "10.1.2.3"\nport = 9090\n')
    with pytest.raises(ConfigError, match="loopback"):
        load_gateway_config(conf)
    # Loopback without tokens, a disabled port, or tokens: accepted.
    for ok in (
        AdminConfig(host="127.0.0.1"),
        AdminConfig(host="::1"),
        AdminConfig(host="localhost"),
        AdminConfig(host="0.0.0.0", port=-1),
        AdminConfig(host="0.0.0.0", tokens=TOKENS),
    ):
        AdminAccess.from_config(ok, tmp_path)


def test_tokens_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = AdminConfig(host="0.0.0.0", tokens_env="ADMIN_TOKENS_TEST")
    with pytest.raises(ConfigError, match="unset or empty"):
        AdminAccess.from_config(cfg, tmp_path)
    monkeypatch.setenv("ADMIN_TOKENS_TEST", f"ci:viewer:{VIEWER}")  # a clear token by mistake
    with pytest.raises(ConfigError, match="entry 1") as exc:
        AdminAccess.from_config(cfg, tmp_path)
    assert VIEWER not in str(exc.value)
    monkeypatch.setenv(
        "ADMIN_TOKENS_TEST", f"ci:viewer:{hash_token(VIEWER)}, ops:operator:{hash_token(OPERATOR)}"
    )
    auth = AdminAccess.from_config(cfg, tmp_path).authenticator
    assert auth.authenticate(f"Bearer {OPERATOR}") == auth.authenticate(f"bearer  {OPERATOR} ")
    principal = auth.authenticate(f"Bearer {VIEWER}")
    assert principal is not None
    assert principal.id == "ci"


def test_token_config_is_validated() -> None:
    with pytest.raises(pydantic.ValidationError):
        AdminConfig(tokens=(AdminTokenConfig(id="a", role="viewer", sha256="not-hex"),))
    with pytest.raises(pydantic.ValidationError, match="unique"):
        AdminConfig(tokens=(TOKENS[0], TOKENS[0]))
    with pytest.raises(ConfigError, match="same sha256"):
        Authenticator(
            [TOKENS[0], AdminTokenConfig(id="b", role="operator", sha256=TOKENS[0].sha256)]
        )


def test_audit_file_per_worker(tmp_path: Path) -> None:
    from gateway.ops.admin import audit_path

    cfg = AdminConfig(audit_file="var/audit.log")
    assert audit_path(cfg, tmp_path) == tmp_path / "var/audit.log"
    assert audit_path(cfg, tmp_path, workers=2, node=3) == tmp_path / "var/audit-node3.log"
    assert audit_path(AdminConfig(), tmp_path) is None


def _signal_gateway(tmp_path: Path, audit_file: str, **cfg: Any) -> Gateway:
    from gateway.app import Gateway
    from gateway.config import GatewayConfig
    from tests.helpers import DEMO_CONF, demo_dataset

    admin = AdminConfig(port=0, audit_file=str(tmp_path / audit_file))
    config = GatewayConfig(risk="risk.toml", admin=admin, links=(), **cfg)
    return Gateway(config, DEMO_CONF, demo_dataset())


async def test_sighup_reload_is_audited_in_the_workers_own_file(
    tmp_path: Path, logs: io.BytesIO
) -> None:
    from gateway.edge.workers import worker_config

    single = _signal_gateway(tmp_path, "audit.log")
    result = await single.reload_risk_on_signal("SIGHUP")  # what gateway run does on SIGHUP
    assert result["reloaded"] is True
    intent, done = _audit(tmp_path)
    assert intent["phase"] == "intent"
    assert "detail" not in intent
    for record in (intent, done):
        assert record["actor"] == "signal:SIGHUP"
        assert record["action"] == "reload_risk"
        assert record["os_user"]
        assert record["pid"] > 0
    assert done["detail"] == result
    assert verify_file(tmp_path / "audit.log").ok

    from gateway.app import Gateway
    from tests.helpers import DEMO_CONF

    two = _signal_gateway(tmp_path, "audit.log", workers=2)
    worker = Gateway(worker_config(two.cfg, 1), DEMO_CONF, two.dataset)  # gateway run --worker 1
    await worker.reload_risk_on_signal("SIGHUP")
    node_file = tmp_path / "audit-node1.log"
    assert [r["node"] for r in map(orjson.loads, node_file.read_bytes().splitlines())] == [1, 1]
    assert verify_file(node_file).ok
    assert len(_audit(tmp_path)) == 2  # the single process's file is untouched
    logged = [orjson.loads(line) for line in logs.getvalue().splitlines() if b'"audit"' in line]
    assert [r["event"] for r in logged] == ["signal_intent", "signal_reload"] * 2


async def test_audit_file_unwritable_reads_go_on_operator_actions_fail_closed(
    tmp_path: Path, logs: io.BytesIO
) -> None:
    (tmp_path / "audit.log").mkdir()  # a directory where the file should be
    metrics, gateway = Metrics(), FakeGateway()
    cfg = AdminConfig(tokens=TOKENS, audit_file="audit.log")
    access = AdminAccess.from_config(cfg, tmp_path, metrics=metrics)
    app = admin_app(metrics, _status, cast("Gateway", gateway), access=access)
    transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 41000))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as http:
        assert (await http.get("/status", headers=bearer(VIEWER))).status_code == 200
        refused = await http.post("/admin/reload", headers=bearer(OPERATOR))
        text = (await http.get("/metrics", headers=bearer(VIEWER))).text
    assert refused.status_code == 503
    assert refused.headers["content-type"] == "application/problem+json"
    problem = refused.json()
    assert problem["type"].endswith("/admin-audit-unavailable")
    assert problem["status"] == 503
    assert problem["instance"] == "/admin/reload"
    assert gateway.reloads == 0  # the action never ran
    # status read, reload intent, reload refusal: each failed write counted
    assert _failures(metrics) == 3
    assert "switch_audit_write_failures_total 3.0" in text
    lines = [orjson.loads(line) for line in logs.getvalue().splitlines()]
    failures = [r for r in lines if r.get("event") == "audit_file_write_failed"]
    assert len(failures) == 3
    assert all(r["level"] == "error" for r in failures)
    records = [r for r in lines if r.get("logger") == "audit" and "status" in r]
    assert [(r["path"], r["status"], r["file_error"]) for r in records] == [
        ("/status", 200, True),
        ("/admin/reload", 503, True),
    ]  # the log still holds every record


async def test_sighup_reload_refused_when_audit_file_unwritable(tmp_path: Path) -> None:
    (tmp_path / "audit.log").mkdir()
    gateway = _signal_gateway(tmp_path, "audit.log")
    result = await gateway.reload_risk_on_signal("SIGHUP")
    assert result == {"reloaded": False, "reason": "audit file not writable: reload refused"}
    assert _failures(gateway.metrics) == 2  # the intent, then the refusal


def _failures(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("switch_audit_write_failures_total")


def test_audited_poll_slots_are_bounded_oldest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flood of blocked addresses (one sampled-audit slot each) cannot grow memory without
    bound; a forgotten slot is only audited again sooner."""
    monkeypatch.setattr(admin, "_POLL_SLOTS", 2)
    access = AdminAccess(Authenticator([]))
    access.clock = lambda: 0.0
    for peer in ("a", "b", "c"):
        assert not access._recently_polled("429:/status", None, 200, key=peer)
    assert list(access._polls) == [("429:/status", "b"), ("429:/status", "c")]
    assert access._recently_polled("429:/status", None, 200, key="c")  # still sampled
    assert not access._recently_polled("429:/status", None, 200, key="a")  # audited again


async def test_rotate_keys_needs_the_operator_and_is_audited(tmp_path: Path) -> None:
    calls: list[str] = []

    async def rotate(issuer: str) -> dict[str, Any] | None:
        calls.append(issuer)
        if issuer != "alpha":
            return None
        return {"issuer": "alpha", "rotated": True, "generation": 3, "results": ["zpk: changed"]}

    cfg = AdminConfig(tokens=TOKENS, audit_file="audit.log")
    access = AdminAccess.from_config(cfg, tmp_path)
    app = admin_app(Metrics(), _status, None, access=access, rotate_keys=rotate)
    transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 41000))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as http:
        denied = await http.post("/admin/links/alpha/rotate-keys", headers=bearer(VIEWER))
        ok = await http.post("/admin/links/alpha/rotate-keys", headers=bearer(OPERATOR))
        missing = await http.post("/admin/links/omega/rotate-keys", headers=bearer(OPERATOR))
    assert denied.status_code == 403
    assert (ok.status_code, ok.json()["generation"]) == (200, 3)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert calls == ["alpha", "omega"]  # the viewer's request never reached it
    records = [r for r in _audit(tmp_path) if r.get("path", "").endswith("/rotate-keys")]
    done = [r for r in records if r.get("status") == 200]
    assert len(done) == 1
    assert done[0]["token_id"] == "ops-alice"
    assert done[0]["detail"] == {
        "issuer": "alpha",
        "rotated": True,
        "generation": 3,
        "results": ["zpk: changed"],
    }
    assert any(r.get("status") == 403 and r["token_id"] == "ops-bob" for r in records)
