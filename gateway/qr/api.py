"""The QR acquirer API over HTTP (SPEC "QR acquirer API"): Starlette on AnyIO, served by
hypercorn through :func:`gateway.edge.http.serve_asgi` on the gateway's own event loop (asyncio,
uvloop or trio), so a QR payment enters the same ``Switch`` in the same process as a terminal's.

Order of checks for a POST: authentication (401), body size and type (413, 415), JSON and model
validation (400, 422), merchant known and in the acquirer's scope (422, 403), idempotency key
(a replay gets the first answer; a different body 409), then the QR code itself (422). Every
error is a problem document; an unexpected exception is logged and answered with a 500 problem
that says nothing of its cause.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import TypeVar

from prometheus_client import Counter
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.edge.http import DrainBody
from gateway.qr import problems as p
from gateway.qr.models import MpmRequest, PaymentRequest, RefundRequest, VerifyRequest
from gateway.qr.problems import MEDIA_TYPE, Problem
from gateway.qr.service import QrService
from gateway.qr.store import StoredResponse
from kit.dataset import QrAcquirer
from kit.logs import PeerWarnings, get_logger

log = get_logger("gateway.qr.api")

JSON = "application/json"
M = TypeVar("M", bound=BaseModel)
Endpoint = Callable[[Request], Awaitable[Response]]


def qr_app(service: QrService, *, max_body: int = 16384) -> ASGIApp:
    """The ASGI application (wrapped so that nothing, ever, escapes as a bare 500)."""

    def authenticate(request: Request) -> QrAcquirer:
        address = request.client.host if request.client else ""
        return service.authenticate(request.headers.get("authorization"), address)

    async def create_payment(request: Request) -> Response:
        acquirer = authenticate(request)
        body = await _parse(request, PaymentRequest, max_body)
        stored, replayed = await service.pay(acquirer, body)
        return _stored(stored, replayed)

    async def get_payment(request: Request) -> Response:
        acquirer = authenticate(request)
        payment = await service.payment(acquirer, request.path_params["payment_id"])
        return Response(payment.view().model_dump_json(), media_type=JSON)

    async def create_refund(request: Request) -> Response:
        acquirer = authenticate(request)
        body = await _parse(request, RefundRequest, max_body)
        stored, replayed = await service.refund(acquirer, request.path_params["payment_id"], body)
        return _stored(stored, replayed)

    async def verify_payment(request: Request) -> Response:
        acquirer = authenticate(request)
        body = await _parse(request, VerifyRequest, max_body)
        stored, replayed = await service.verify(acquirer, request.path_params["payment_id"], body)
        return _stored(stored, replayed)

    async def create_mpm(request: Request) -> Response:
        acquirer = authenticate(request)
        body = await _parse(request, MpmRequest, max_body)
        view = await service.generate_mpm(acquirer, body)
        return Response(view.model_dump_json(), media_type=JSON)

    rejections = _Rejections(service.rejected)

    async def http_error(request: Request, exc: Exception) -> Response:
        return rejections.answer(request, _http_problem(request, exc))

    def guarded(endpoint: Endpoint) -> Endpoint:
        return _guarded(endpoint, rejections)

    app = Starlette(
        routes=[
            Route("/v1/qr/payments", guarded(create_payment), methods=["POST"]),
            Route("/v1/qr/payments/{payment_id}", guarded(get_payment), methods=["GET"]),
            Route("/v1/qr/payments/{payment_id}/refund", guarded(create_refund), methods=["POST"]),
            Route("/v1/qr/payments/{payment_id}/verify", guarded(verify_payment), methods=["POST"]),
            Route("/v1/qr/mpm", guarded(create_mpm), methods=["POST"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: _internal_error},
    )
    # Outermost: a 500 answered early drains the body like any other answer.
    return DrainBody(_SwallowErrors(app), limit=max_body)


class _Rejections:
    """The answer to a request refused with a problem document. A 4xx is the client's fault,
    not ours: counted by problem type (``switch_qr_rejected_total``, the volume) and a warning
    without traceback at most once per interval per client address, so a hostile peer cannot
    flood the logs."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self.warnings = PeerWarnings(log)

    def answer(self, request: Request, problem: Problem) -> Response:
        if problem.status < 500:
            self.counter.labels(problem.kind.slug).inc()
            self.warnings.warning(
                "qr_request_rejected",
                _peer(request),
                status=problem.status,
                problem=problem.kind.slug,
                method=request.method,
                path=request.url.path,
                detail=problem.detail,  # names fields and reasons, never values
            )
        return problem.response(request.url.path)


def _guarded(endpoint: Endpoint, rejections: _Rejections) -> Endpoint:
    async def guarded(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Problem as problem:
            return rejections.answer(request, problem)
        except ClientDisconnect:
            # The client hung up mid-body: its business, not an error. Nobody reads this answer.
            log.info("qr_client_disconnected", path=request.url.path, peer=_peer(request))
            return Response(status_code=400)
        except Exception:
            log.exception("qr_api_error", path=request.url.path, method=request.method)
            return _internal(request.url.path)

    return guarded


async def _parse(request: Request, model: type[M], limit: int) -> M:
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media and media != JSON and not media.endswith("+json"):
        raise Problem(p.UNSUPPORTED_MEDIA_TYPE, f"got {media}; send {JSON}")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Problem(p.PAYLOAD_TOO_LARGE, f"the body may hold at most {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async with aclosing(request.stream()) as stream:  # closed when left early (413)
        async for chunk in stream:
            size += len(chunk)
            if size > limit:
                raise Problem(p.PAYLOAD_TOO_LARGE, f"the body may hold at most {limit} bytes")
            chunks.append(chunk)
    try:
        return model.model_validate_json(b"".join(chunks))
    except ValidationError as exc:
        raise _validation_problem(exc) from None


def _validation_problem(exc: ValidationError) -> Problem:
    # Without the input values: they may hold a card number.
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    if any(e["type"] == "json_invalid" for e in errors):
        return Problem(p.INVALID_JSON, "the body must be one JSON object")
    listed = [
        {
            "field": ".".join(str(part) for part in e["loc"]) or None,
            "type": e["type"],
            "msg": e["msg"],
        }
        for e in errors
    ]
    summary = "; ".join(f"{item['field'] or 'body'}: {item['msg']}" for item in listed)
    return Problem(p.VALIDATION, summary, errors=listed)


def _peer(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "?"


def _stored(stored: StoredResponse, replayed: bool) -> Response:
    headers = {"Idempotent-Replayed": "true" if replayed else "false"}
    if stored.location is not None:
        headers["Location"] = stored.location
    media = MEDIA_TYPE if stored.status >= 400 else JSON  # a stored challenge is a problem
    return Response(stored.body, status_code=stored.status, media_type=media, headers=headers)


def _internal(path: str | None) -> Response:
    return Problem(p.INTERNAL, "the request could not be processed; it has been logged").response(
        path
    )


def _http_problem(request: Request, exc: Exception) -> Problem:
    assert isinstance(exc, HTTPException)
    path = request.url.path
    if exc.status_code == 404:
        return Problem(p.NOT_FOUND, f"no resource at {path}")
    if exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow", "")
        return Problem(
            p.METHOD_NOT_ALLOWED,
            f"{request.method} is not allowed here" + (f"; allowed: {allow}" if allow else ""),
            headers={"Allow": allow} if allow else None,
        )
    generic = p.ProblemType(f"http-{exc.status_code}", "HTTP error", exc.status_code)
    return Problem(generic, str(exc.detail))


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("qr_api_unhandled", path=request.url.path, error=type(exc).__name__)
    return _internal(request.url.path)


class _SwallowErrors:
    """Starlette answers an unhandled exception (with :func:`_internal_error`) and then re-raises
    it for the server to log; it has been logged already, so stop it here once the answer is
    complete. If nothing was sent yet, answer the 500 problem document ourselves; if an answer
    was cut short, let the server abort the connection rather than pass it off as whole."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = completed = False

        async def tracking_send(message: Message) -> None:
            nonlocal started, completed
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                completed = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            if completed:
                return
            if started:
                raise
            log.exception("qr_api_failure", path=scope.get("path"))
            response = _internal(scope.get("path"))
            await response(scope, receive, send)
