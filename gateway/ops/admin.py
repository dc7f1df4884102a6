"""Admin HTTP endpoint: /healthz, /readyz, /metrics, /status, /alerts, POST /admin/reload,
POST /admin/links/{issuer}/rotate-keys.

Access control is one ASGI middleware (:class:`AdminAccess`) in front of every route, keyed by
path and method (:class:`AccessPolicy`), default-deny: only the public paths (/healthz,
/readyz, /metrics unless ``metrics_public = false``) are open; everything under ``/admin/``
and every method other than GET/HEAD needs ``operator``; any other path (/status, /alerts, a
page added later such as /dashboard, an unknown path) needs ``viewer``. Callers send
``Authorization: Bearer <token>``; the config holds only the token's SHA-256, compared in
constant time. A missing or unknown token gets 401 with ``WWW-Authenticate: Bearer``, a role
too low 403, both RFC 9457 problem documents. Every request that needs a role, allowed or
denied, leaves one audit record (:mod:`gateway.ops.audit`); a handler adds what it changed with
:func:`audit_detail`.

With no token configured the API is unauthenticated, which the config allows only on a
loopback address (a warning says so at start); requests are still audited.

An operator action (any method other than GET/HEAD) fails closed: with an audit file, an
``intent`` record (who, what) is written before the action runs; if it cannot be, the action
does not run and the answer is 503 (``admin-audit-unavailable`` problem document). Reads go
on when the file cannot be written: every failed write is logged at error level and counted
(``switch_audit_write_failures_total``).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.config import AdminConfig, AdminTokenConfig
from gateway.edge.http import AUTH_FAILURES_DETAIL, AuthFailures
from gateway.metrics import Metrics
from gateway.ops.audit import AuditLog
from gateway.qr.problems import Problem, ProblemType
from kit.conf import ConfigError
from kit.logs import get_logger
from protocols.bounded import BoundedFifo

if TYPE_CHECKING:
    from gateway.risk import RiskEngine

log = get_logger("gateway.ops.admin")

ADMIN_UNAUTHORIZED: Final = ProblemType("admin-unauthorized", "Missing or unknown admin token", 401)
ADMIN_FORBIDDEN: Final = ProblemType("admin-forbidden", "Role not allowed for this request", 403)
ADMIN_TOO_MANY_FAILURES: Final = ProblemType(
    "admin-too-many-failures", "Too many failed authentications from this address", 429
)
ADMIN_AUDIT_UNAVAILABLE: Final = ProblemType(
    "admin-audit-unavailable", "Audit record could not be written; action not performed", 503
)
ADMIN_NO_SUCH_LINK: Final = ProblemType("admin-no-such-link", "No such issuer link", 404)
REALM: Final = 'Bearer realm="payswitch-admin"'
_SAFE_METHODS: Final = frozenset({"GET", "HEAD"})


class Role(enum.IntEnum):
    VIEWER = 1
    OPERATOR = 2

    @property
    def label(self) -> str:
        return self.name.lower()


# /dashboard is the page alone (no data: it asks for a token, then reads /dashboard/data
# with it), so a browser can open it without a bearer header; /favicon.ico, which every
# browser asks for with it, is empty (a 401 there was a console error and an audit refusal
# on every page load).
_ALWAYS_PUBLIC = frozenset({"/healthz", "/readyz", "/dashboard", "/favicon.ico"})


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """The role a request needs, by path prefix and method; None for a public path."""

    public: frozenset[str] = frozenset({*_ALWAYS_PUBLIC, "/metrics"})
    """Exact paths anyone may read (GET/HEAD)."""
    prefixes: tuple[tuple[str, Role], ...] = (("/admin/", Role.OPERATOR),)
    """Path prefixes needing more than the default, longest match first."""
    default: Role = Role.VIEWER
    """Every other read: a new page is protected without being listed."""

    polled: frozenset[str] = frozenset({"/dashboard/data"})
    """Reads a page repeats every second: an allowed one is audited once per token per
    ``POLL_AUDIT_INTERVAL`` (refusals always), so an open dashboard does not flood the file."""

    @classmethod
    def from_config(cls, cfg: AdminConfig) -> AccessPolicy:
        public = set(_ALWAYS_PUBLIC)
        if cfg.metrics_public:
            public.add("/metrics")
        return cls(public=frozenset(public))

    def required(self, method: str, path: str) -> Role | None:
        method = method.upper()
        if method in _SAFE_METHODS and path in self.public:
            return None
        for prefix, role in sorted(self.prefixes, key=lambda p: -len(p[0])):
            if path.startswith(prefix) or path == prefix.rstrip("/"):
                return role
        return self.default if method in _SAFE_METHODS else Role.OPERATOR


@dataclass(frozen=True, slots=True)
class Principal:
    id: str
    role: Role


_ENV_ENTRY = re.compile(r"^([A-Za-z0-9._@-]{1,64}):(viewer|operator):([0-9a-fA-F]{64})$")


def tokens_from_env(name: str, environ: dict[str, str] | None = None) -> list[AdminTokenConfig]:
    """``id:role:sha256`` entries separated by commas or whitespace; an unset, empty or
    malformed variable is a config error (never silently unauthenticated)."""
    env = os.environ if environ is None else environ
    value = env.get(name, "")
    entries = [e for e in re.split(r"[,\s]+", value) if e]
    if not entries:
        raise ConfigError(f"[admin] tokens_env: environment variable {name} is unset or empty")
    out = []
    for number, entry in enumerate(entries, start=1):
        m = _ENV_ENTRY.match(entry)
        if m is None:  # the entry is not echoed: it could be a clear token pasted by mistake
            raise ConfigError(
                f"[admin] tokens_env: entry {number} of {name} is not id:viewer|operator:sha256"
            )
        out.append(AdminTokenConfig(id=m[1], role=m[2], sha256=m[3]))  # type: ignore[arg-type]
    return out


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Authenticator:
    """Bearer token -> principal, by SHA-256 compared in constant time with every entry."""

    def __init__(self, tokens: Iterable[AdminTokenConfig]) -> None:
        self._entries = [
            (bytes.fromhex(t.sha256), Principal(t.id, Role[t.role.upper()])) for t in tokens
        ]
        ids = [p.id for _, p in self._entries]
        if len(set(ids)) != len(ids):
            raise ConfigError("[admin] a token id appears twice (tokens and tokens_env)")
        if len({d for d, _ in self._entries}) != len(self._entries):
            raise ConfigError("[admin] two admin tokens have the same sha256")

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    def authenticate(self, authorization: str | None) -> Principal | None:
        if not authorization:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found: Principal | None = None
        for expected, principal in self._entries:  # no early exit: same time for every entry
            if hmac.compare_digest(digest, expected):
                found = principal
        return found


def audit_detail(request: Request, **detail: Any) -> None:
    """What a handler did, added to the request's audit record (e.g. a reload's result)."""
    request.state.audit_detail = detail


def audit_path(cfg: AdminConfig, base: Path, *, workers: int = 1, node: int = 0) -> Path | None:
    """The audit file of this process: one per worker when there are several (a shared file
    would interleave two chains)."""
    if not cfg.audit_file:
        return None
    path = base / cfg.audit_file
    if workers > 1:
        path = path.with_name(f"{path.stem}-node{node}{path.suffix}")
    return path


POLL_AUDIT_INTERVAL = 300.0
"""Seconds between audit records of one token's allowed polls of a polled path."""
_POLL_SLOTS = 10_000  # (path, token or blocked address) kept; one forgotten is audited sooner


@dataclass
class AdminAccess:
    """ASGI middleware: the access policy, bearer authentication and the audit record."""

    authenticator: Authenticator
    audit: AuditLog = field(default_factory=AuditLog)
    policy: AccessPolicy = field(default_factory=AccessPolicy)
    clock: Callable[[], float] = time.monotonic
    _polls: BoundedFifo[tuple[str, str], float] = field(
        default_factory=lambda: BoundedFifo(_POLL_SLOTS), repr=False
    )
    _failures: AuthFailures = field(default_factory=AuthFailures, repr=False)
    on_block: Callable[[], None] | None = None
    """Called for each request refused for too many failed authentications (a metric)."""

    @classmethod
    def from_config(
        cls,
        cfg: AdminConfig,
        base: Path,
        *,
        workers: int = 1,
        node: int = 0,
        metrics: Metrics | None = None,
    ) -> AdminAccess:
        """Refuses (ConfigError) tokens_env unset or malformed, and no token on an address
        other than loopback; warns when the API is unauthenticated. ``metrics``: where failed
        audit file writes are counted."""
        tokens = list(cfg.tokens)
        if cfg.tokens_env:
            tokens += tokens_from_env(cfg.tokens_env)
        auth = Authenticator(tokens)
        if not auth.enabled and cfg.port >= 0:
            # AdminConfig refuses this already; kept here for configs built in code.
            from gateway.config import is_loopback

            if not is_loopback(cfg.host):
                raise ConfigError(
                    f"[admin] host {cfg.host!r} is not loopback and no admin token is configured"
                )
            log.warning(
                "admin_api_unauthenticated",
                host=cfg.host,
                hint="configure [admin] tokens to require bearer tokens",
            )
        path = audit_path(cfg, base, workers=workers, node=node)
        failed = None if metrics is None else metrics.audit_write_failures.inc
        blocked = None if metrics is None else metrics.admin_auth_blocked.inc
        return cls(auth, AuditLog(path, failed), AccessPolicy.from_config(cfg), on_block=blocked)

    def wrap(self, app: ASGIApp) -> ASGIApp:
        async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            await self._http(app, scope, receive, send)

        return asgi

    async def _http(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        path: str = scope["path"]
        needed = self.policy.required(method, path)
        if needed is None:
            await app(scope, receive, send)
            return
        principal: Principal | None = None
        problem: Problem | None = None
        client = scope.get("client")
        peer = str(client[0]) if client else ""
        enabled = self.authenticator.enabled
        blocked_for = self._failures.blocked_for(peer, self.clock()) if enabled else 0.0
        if blocked_for > 0:
            self._block_counter()
            # One record per window (no audit flood); the token is not even looked at.
            problem = Problem(
                ADMIN_TOO_MANY_FAILURES,
                AUTH_FAILURES_DETAIL,
                headers=AuthFailures.retry_after(blocked_for),
            )
            await problem.response(path)(scope, receive, send)
            if not self._recently_polled(f"429:{path}", None, 200, key=peer):
                await self._audit(scope, None, needed, problem.status, None)
            return
        if self.authenticator.enabled:
            header = None
            for key, value in scope.get("headers", ()):
                if key == b"authorization":
                    header = value.decode("latin-1")
                    break
            principal = self.authenticator.authenticate(header)
            if principal is None:
                self._failures.failed(peer, self.clock())
                error = ', error="invalid_token"' if header else ""
                problem = Problem(
                    ADMIN_UNAUTHORIZED,
                    "send Authorization: Bearer <token> with a token configured in [admin]"
                    if not header
                    else "the bearer token is not one configured in [admin]",
                    headers={"WWW-Authenticate": REALM + error},
                )
            elif principal.role < needed:
                problem = Problem(
                    ADMIN_FORBIDDEN,
                    f"{method} {path} needs the {needed.label} role; "
                    f"token {principal.id!r} has {principal.role.label}",
                    headers={"WWW-Authenticate": REALM + ', error="insufficient_scope"'},
                    required_role=needed.label,
                )
        # Fail closed: an operator action runs only once its intent is on file.
        if (
            problem is None
            and method.upper() not in _SAFE_METHODS
            and self.audit.path is not None
            and not await self._audit(scope, principal, needed, None, None, intent=True)
        ):
            problem = Problem(
                ADMIN_AUDIT_UNAVAILABLE,
                f"the audit file cannot be written, so {method} {path} was not performed; "
                "fix the audit file (see switch_audit_write_failures_total) and retry",
                headers={"Retry-After": "30"},
            )
        status = 500
        if problem is not None:
            status = problem.status
            await problem.response(path)(scope, receive, send)
        else:
            state = scope.setdefault("state", {})

            async def send_status(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                await send(message)

            try:
                await app(scope, receive, send_status)
            finally:
                detail = state.get("audit_detail") if isinstance(state, dict) else None
                if not self._recently_polled(path, principal, status):
                    await self._audit(scope, principal, needed, status, detail)
            return
        await self._audit(scope, principal, needed, status, None)

    def _block_counter(self) -> None:
        if self.on_block is not None:
            self.on_block()

    def _recently_polled(
        self, path: str, principal: Principal | None, status: int, *, key: str | None = None
    ) -> bool:
        """True for an allowed poll of a polled path (or a refusal sampled by ``key``)
        already audited within ``POLL_AUDIT_INTERVAL`` (then it is not audited again)."""
        if key is None and (path not in self.policy.polled or status >= 400):
            return False
        key = key if key is not None else (principal.id if principal is not None else "")
        slot = (path, key)
        now = self.clock()
        last = self._polls.get(slot)
        if last is not None and now - last < POLL_AUDIT_INTERVAL:
            return True
        self._polls[slot] = now
        return False

    async def _audit(
        self,
        scope: Scope,
        principal: Principal | None,
        needed: Role,
        status: int | None,
        detail: dict[str, Any] | None,
        *,
        intent: bool = False,
    ) -> bool:
        client = scope.get("client")
        record: dict[str, Any] = {
            "token_id": principal.id if principal else None,
            "role": principal.role.label if principal else None,
            "required_role": needed.label,
            "authenticated": principal is not None,
            "peer": f"{client[0]}:{client[1]}" if client else None,
            "method": scope["method"],
            "path": scope["path"],
        }
        if intent:
            record["phase"] = "intent"
            return await self.audit.record(record, event="admin_intent")
        record["status"] = status
        if detail is not None:
            record["detail"] = detail
        return await self.audit.record(record)


class RiskControl(Protocol):
    """What the admin API asks of the running gateway (``gateway.app.Gateway`` is one): a
    protocol, so this module need not import the module that wires it."""

    @property
    def risk(self) -> RiskEngine | None: ...

    def reload_risk(self) -> dict[str, Any]: ...


def admin_app(
    metrics: Metrics,
    status: Callable[[], dict[str, Any]],
    gateway: RiskControl | None = None,
    *,
    access: AdminAccess | None = None,
    extra_routes: Sequence[BaseRoute] = (),
    rotate_keys: Callable[[str], Awaitable[dict[str, Any] | None]] | None = None,
) -> ASGIApp:
    """The admin ASGI app; ``extra_routes`` (pages of other modules) get the same access
    policy: a route not public needs a viewer token by default. ``access`` None: the open,
    unaudited app (tests of the views only). ``rotate_keys(issuer)`` changes an issuer link's
    working keys (None when there is no such link)."""

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(_: Request) -> Response:
        st = status()
        not_ready = [link["issuer"] for link in st["links"] if not link["ready"]]
        body = {"ready": not not_ready, "issuers_without_link": not_ready}
        return JSONResponse(body, status_code=200 if not not_ready else 503)

    async def metrics_view(_: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def status_view(_: Request) -> Response:
        return JSONResponse(status())

    async def alerts_view(_: Request) -> Response:
        if gateway is None or gateway.risk is None:
            return JSONResponse([])
        return JSONResponse(gateway.risk.recent_alerts(200))

    async def reload_view(request: Request) -> Response:
        if gateway is None:
            audit_detail(request, reloaded=False, reason="no gateway")
            return JSONResponse({"reloaded": False}, status_code=404)
        result = gateway.reload_risk()
        audit_detail(request, **result)
        return JSONResponse(result, status_code=200 if result["reloaded"] else 422)

    async def rotate_keys_view(request: Request) -> Response:
        issuer = str(request.path_params["issuer"])
        result = None if rotate_keys is None else await rotate_keys(issuer)
        if result is None:
            audit_detail(request, issuer=issuer, rotated=False, reason="no such link")
            problem = Problem(ADMIN_NO_SUCH_LINK, f"no issuer link {issuer!r} with keys")
            return problem.response(request.url.path)
        audit_detail(request, **result)
        return JSONResponse(result, status_code=200 if result["rotated"] else 409)

    app = Starlette(
        routes=[
            Route("/alerts", alerts_view),
            Route("/admin/reload", reload_view, methods=["POST"]),
            Route("/admin/links/{issuer}/rotate-keys", rotate_keys_view, methods=["POST"]),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_view),
            Route("/status", status_view),
            *extra_routes,
        ]
    )
    return app if access is None else access.wrap(app)
