"""Admin HTTP endpoint: /healthz, /readyz, /metrics, /status."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from gateway.metrics import Metrics

if TYPE_CHECKING:
    from gateway.app import Gateway


def admin_app(
    metrics: Metrics, status: Callable[[], dict[str, Any]], gateway: Gateway | None = None
) -> Starlette:
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

    async def reload_view(_: Request) -> Response:
        if gateway is None:
            return JSONResponse({"reloaded": False}, status_code=404)
        result = gateway.reload_risk()
        return JSONResponse(result, status_code=200 if result["reloaded"] else 422)

    return Starlette(
        routes=[
            Route("/alerts", alerts_view),
            Route("/admin/reload", reload_view, methods=["POST"]),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_view),
            Route("/status", status_view),
        ]
    )
