"""Admin HTTP endpoint: /healthz, /readyz, /metrics, /status."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from gateway.metrics import Metrics


def admin_app(metrics: Metrics, status: Callable[[], dict[str, Any]]) -> Starlette:
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

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_view),
            Route("/status", status_view),
        ]
    )
