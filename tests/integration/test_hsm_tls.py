"""The gateway reaches the HSM over mutual TLS (TLS 1.2+); an HSM whose allow-list does not
name the gateway's certificate refuses it: PIN transactions then get 96, the rest flows."""

from __future__ import annotations

from pathlib import Path

import pytest

from hsm_sim.config import TlsConfig
from tests.helpers import purchase, running_stack, terminal
from tests.integration.test_security import BETA_PAN, PAN, PIN, TPK_TERMINAL, pin_purchase

pytestmark = pytest.mark.anyio


def hsm_tls(pki_dir: Path, allowed: tuple[str, ...]) -> TlsConfig:
    return TlsConfig(
        cert_file=str(pki_dir / "hsm.pem"),
        key_file=str(pki_dir / "hsm.key"),
        ca_file=str(pki_dir / "ca.pem"),
        allowed_clients=allowed,
    )


async def test_pin_purchase_through_an_hsm_over_mutual_tls(pki_dir: Path) -> None:
    async with running_stack(pki_dir, hsm_tls=hsm_tls(pki_dir, ("switch",))) as stack:
        assert stack.gateway.cfg.hsm.tls
        async with terminal(stack.port) as term:
            assert (await term.exchange(pin_purchase(TPK_TERMINAL, PAN, PIN, 700)))["39"] == "00"
        assert stack.hsm is not None
        assert stack.hsm.server is not None
        assert stack.hsm.server.statistics().connections_total >= 1


async def test_hsm_refusing_the_gateway_certificate(pki_dir: Path) -> None:
    async with running_stack(pki_dir, hsm_tls=hsm_tls(pki_dir, ("someone-else",))) as stack:
        async with terminal(stack.port) as term:
            assert (await term.exchange(pin_purchase(TPK_TERMINAL, PAN, PIN, 700)))["39"] == "96"
            assert (await term.exchange(purchase(BETA_PAN, 5)))["39"] == "00"
        assert stack.hsm is not None
        assert stack.hsm.server is not None
        assert stack.hsm.server.statistics().connections_refused >= 1
