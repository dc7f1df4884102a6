"""An issuer host pins the acquirer it serves: over mutual TLS only the client certificates its
``allowed_clients`` names get in; any other certificate of the same CA (the gateway's terminal
side, another issuer's) is refused at the end of the handshake, before a byte is read."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import anyio
import pytest
import structlog

from gateway.config import load_gateway_config
from issuer_sim.cli import build_server
from issuer_sim.config import IssuerSimConfig
from issuer_sim.server import IssuerServer
from kit import pki
from kit.conf import ConfigError, build, load
from protocols.framing import Framer, encode_frame
from protocols.message import Message
from tests.helpers import CODEC, DEMO_CONF, demo_dataset, issuer_server

SIGN_ON = Message("0800", {"7": "1127101500", "11": "000001", "70": "001"})
_CLOSED = (anyio.EndOfStream, anyio.BrokenResourceError, OSError)


async def sign_on(port: int, pki_dir: Path, cert: str) -> list[Message]:
    """Send an 0800 presenting ``cert``; the answer, or nothing when the server closes."""
    stream = await anyio.connect_tcp(
        "127.0.0.1",
        port,
        ssl_context=pki.client_context(pki_dir, cert),
        tls_hostname="issuer-beta",
        tls_standard_compatible=False,
    )
    framer = Framer()
    async with stream:
        with anyio.fail_after(5):
            try:
                await stream.send(encode_frame(CODEC.encode(SIGN_ON)))
                while (frame := framer.next_frame()) is None:
                    framer.feed(await stream.receive())
            except _CLOSED:
                return []
    return [CODEC.decode(frame)]


async def served(server: IssuerServer, pki_dir: Path, cert: str) -> list[Message]:
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        try:
            answers = await sign_on(server.port, pki_dir, cert)
        finally:
            server.stop()
    return answers


@pytest.mark.anyio
async def test_the_gateways_link_certificate_is_served(pki_dir: Path) -> None:
    server = issuer_server("beta", demo_dataset(), pki_dir)
    answers = await served(server, pki_dir, "switch")
    assert [(a.mti, a.fields["39"]) for a in answers] == [("0810", "00")]
    assert server.refused == 0


@pytest.mark.anyio
@pytest.mark.parametrize("cert", ["gateway", "issuer-alpha"])
async def test_another_certificate_of_the_same_ca_is_refused_before_reading(
    pki_dir: Path, cert: str
) -> None:
    server = issuer_server("beta", demo_dataset(), pki_dir)
    with structlog.testing.capture_logs() as logs:
        answers = await served(server, pki_dir, cert)
    assert answers == []
    assert (server.received, server.refused) == (0, 1)
    refusals = [e for e in logs if e["event"] == "issuer_sim_client_refused"]
    assert [(e["log_level"], e["client"]) for e in refusals] == [("warning", cert)]
    assert refusals[0]["fingerprint"].startswith("sha256:")


@pytest.mark.anyio
async def test_without_an_allow_list_a_tls_host_refuses_everyone(pki_dir: Path) -> None:
    pinned = issuer_server("beta", demo_dataset(), pki_dir)
    server = IssuerServer(pinned.host, pinned.ssl_context)
    assert await served(server, pki_dir, "switch") == []
    assert server.refused == 1


def _sim(**endpoint: object) -> IssuerSimConfig:
    return build(IssuerSimConfig, {"issuers": [{"id": "beta", **endpoint}]}, "issuer-sim.toml")


def test_allowed_clients_is_read_per_issuer() -> None:
    ep = _sim(allowed_clients=["switch", "sha256:AB12"]).endpoint("beta")
    assert ep.allowed_clients == ("switch", "sha256:AB12")


@pytest.mark.parametrize("endpoint", [{}, {"allowed_clients": []}, {"allowed_clients": [" "]}])
def test_an_issuer_without_a_pinned_client_is_refused_at_load(endpoint: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=r"issuers\.0\.allowed_clients: .*client certificate"):
        _sim(**endpoint)


def test_issuer_sim_run_serves_its_issuers_allow_list(pki_dir: Path) -> None:
    cfg = _sim(allowed_clients=["switch"], port=0)
    cfg = dataclasses.replace(cfg, data=str(DEMO_CONF / "data.toml"), pki_dir=str(pki_dir))
    assert build_server(cfg, DEMO_CONF, "beta", None).allowed_clients == ("switch",)


def test_the_demo_issuers_pin_the_gateways_link_certificate() -> None:
    """Also what the jPOS bench rig presents to beta (its keystore is made from switch.pem)."""
    sim = load(IssuerSimConfig, DEMO_CONF / "issuer-sim.toml")
    gw, _ = load_gateway_config(DEMO_CONF / "gateway.toml")
    clients = {link.issuer: link.client_cert for link in gw.links}
    assert {ep.id: ep.allowed_clients for ep in sim.issuers} == {
        issuer: (cert,) for issuer, cert in clients.items()
    }
    assert clients["beta"] == "switch"


def test_issuer_sim_keeps_at_most_its_configured_records_and_accounts(pki_dir: Path) -> None:
    """``max_records`` and ``max_synthetic_accounts`` reach the host (``loadtest soak`` lowers
    them so that a short run fills them)."""
    cfg = _sim(allowed_clients=["switch"], port=0)
    cfg = dataclasses.replace(
        cfg,
        data=str(DEMO_CONF / "data.toml"),
        pki_dir=str(pki_dir),
        max_records=7,
        max_synthetic_accounts=9,
    )
    host = build_server(cfg, DEMO_CONF, "beta", None).host
    assert host.postings.cap == host.answers.cap == 7
    assert host.book.max_synthetic == 9
