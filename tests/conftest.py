"""Shared fixtures: every async test runs on asyncio, asyncio+uvloop and trio."""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest

from tests.tools import in_ci

BACKENDS = [
    pytest.param(("asyncio", {}), id="asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    pytest.param(("trio", {}), id="trio"),
]


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    param: tuple[str, dict[str, Any]] = request.param
    return param


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _require_server(name: str, port: int) -> None:
    """Skip without the server on a developer machine; fail in CI, where it must be up."""
    if _port_open(port):
        return
    message = f"{name} is not reachable on 127.0.0.1:{port}"
    if in_ci():
        pytest.fail(f"{message} and CI=true: the scale-out backend must be tested in CI")
    pytest.skip(f"{message}: start it to run the scale-out backend tests")


@pytest.fixture
def redis_url() -> str:
    _require_server("Redis", 6379)
    return os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
def postgres_dsn() -> str:
    _require_server("PostgreSQL", 5432)
    return os.environ.get("POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from kit import pki
    from tests.helpers import CERT_NAMES

    return pki.ensure_pki(tmp_path_factory.mktemp("pki"), CERT_NAMES)


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Any:
    """A test that configures logging (a CLI run in-process) must not leak it to the next."""
    import structlog

    yield
    structlog.reset_defaults()
