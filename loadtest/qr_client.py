"""The generator's QR acquirer client: POST /v1/qr/payments over httpx (SPEC "QR acquirer API")."""

from __future__ import annotations

import uuid
from types import TracebackType
from typing import Any, Self

import httpx

PAYMENTS = "/v1/qr/payments"


class QrClient:
    """A pooled HTTP/1.1 client with the acquirer's bearer key; one per generator."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        connections: int = 16,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            timeout=timeout,
            transport=transport,
            # Loading the CA bundle costs ~100 ms per client; plain http:// never needs it.
            verify=self.base_url.startswith("https:"),
        )

    async def __aenter__(self) -> Self:
        await self._client.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._client.__aexit__(exc_type, exc, tb)

    async def probe(self) -> str | None:
        """Why the QR API cannot be used, or ``None`` when it answers (any status but 401/403,
        404 on an unknown payment being the expected answer)."""
        try:
            resp = await self._client.get(f"{PAYMENTS}/{uuid.uuid4().hex}", timeout=3.0)
        except httpx.HTTPError as exc:
            return f"QR API not reachable at {self.base_url} ({type(exc).__name__})"
        if resp.status_code in (401, 403):
            return f"QR API at {self.base_url} refused the API key (HTTP {resp.status_code})"
        return None

    async def pay(self, body: dict[str, Any]) -> tuple[str | None, str | None]:
        """(response code, None) for an answered payment, else (None, error name)."""
        try:
            resp = await self._client.post(PAYMENTS, json=body)
        except httpx.TimeoutException:
            return None, "timeout"
        except httpx.HTTPError as exc:
            return None, f"qr {type(exc).__name__}"
        if resp.status_code not in (200, 201):
            return None, f"http {resp.status_code}"
        try:
            rc = resp.json().get("response_code")
        except ValueError:
            rc = None
        if not isinstance(rc, str):
            return None, "qr answer without response_code"
        return rc, None
