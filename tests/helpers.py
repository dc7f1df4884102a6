"""Test helpers: an async terminal on real sockets, and an in-process demo stack."""

from __future__ import annotations

import dataclasses
import datetime as dt
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from gateway.app import Gateway
from gateway.config import (
    AdminConfig,
    GatewayConfig,
    HsmConfig,
    LinkConfig,
    LogConfig,
    QrApiConfig,
    SafConfig,
    StandInConfig,
    TerminalConfig,
)
from gateway.flow.switch import utcnow
from hsm_sim.config import HsmConfig as HsmServerConfig
from hsm_sim.config import TlsConfig as HsmTlsConfig
from hsm_sim.server import HsmServer
from issuer_sim.accounts import AccountBook
from issuer_sim.emv import EmvAuthenticator
from issuer_sim.host import IssuerHost
from issuer_sim.pin import IssuerSecurity
from issuer_sim.server import IssuerServer, fallback_logger
from kit import pki
from kit.dataset import Dataset, load_dataset
from kit.framed import FramedStream
from kit.linkdialect import TranslationConfig, link_codec
from loadtest.terminal_client import build_request
from protocols.codec import Codec
from protocols.dialects import get_dialect
from protocols.framing import get_framing
from protocols.message import Message

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONF = ROOT / "conf" / "demo"
ISSUERS = ("alpha", "beta", "gamma")
LINK_CLIENT = "switch"  # the certificate the gateway's links present (LinkConfig.client_cert)
CERT_NAMES = ["gateway", LINK_CLIENT, "hsm", *(f"issuer-{i}" for i in ISSUERS)]
CODEC = Codec(get_dialect("terminal"))


def demo_dataset() -> Dataset:
    return load_dataset(DEMO_CONF / "data.toml")


class AsyncTerminal:
    """A terminal on a real socket: send requests, read answers (pipelining allowed)."""

    def __init__(self, framed: FramedStream) -> None:
        self.framed = framed

    async def send(self, msg: Message) -> None:
        await self.framed.send_frame(CODEC.encode(msg))

    async def receive(self, timeout: float = 10.0) -> Message:
        with anyio.fail_after(timeout):
            return CODEC.decode(await self.framed.receive_frame())

    async def exchange(self, msg: Message, timeout: float = 10.0) -> Message:
        await self.send(msg)
        return await self.receive(timeout)

    async def aclose(self) -> None:
        await self.framed.aclose()


@asynccontextmanager
async def terminal(port: int, *, tls: ssl.SSLContext | None = None) -> AsyncIterator[AsyncTerminal]:
    if tls is None:
        stream: anyio.abc.ByteStream = await anyio.connect_tcp("127.0.0.1", port)
    else:
        stream = await anyio.connect_tcp(
            "127.0.0.1",
            port,
            ssl_context=tls,
            tls_hostname="localhost",
            tls_standard_compatible=False,
        )
    term = AsyncTerminal(FramedStream(stream, max_size=8192, partial_timeout=10.0))
    try:
        yield term
    finally:
        await term.aclose()


def purchase(
    pan: str,
    amount: int,
    *,
    terminal_id: str = "T0000001",
    merchant: str = "M00000000000001",
    processing: str = "000000",
    mti: str = "0200",
    expiry: str | None = None,
    stan: str | None = None,
    transmission: str | None = None,
    extra: dict[str, str] | None = None,
) -> Message:
    return build_request(
        mti,
        terminal=terminal_id,
        merchant=merchant,
        pan=pan,
        amount=amount,
        processing=processing,
        expiry=expiry,
        stan=stan,
        transmission=transmission,
        extra=extra,
    )


def reversal_of(original: Message, *, mti: str = "0400") -> Message:
    f = original.fields
    f90 = f"{original.mti}{f['11']}{f['7']}{'0' * 22}"
    return build_request(
        mti,
        terminal=f["41"],
        merchant=f.get("42", ""),
        pan=f.get("2"),
        amount=int(f["4"]),
        processing=f["3"],
        extra={"90": f90},
    )


class InProcessHsm:
    """hsm_sim's server on 127.0.0.1 that a test can stop and start again on the same port."""

    def __init__(self, lmk: str, tls: HsmTlsConfig | None = None) -> None:
        self.lmk = lmk
        self.tls = tls
        self.port = 0
        self.server: HsmServer | None = None
        self._scope: anyio.CancelScope | None = None

    async def start(self, tg: anyio.abc.TaskGroup) -> int:
        self.server = HsmServer(HsmServerConfig(lmk=self.lmk, port=self.port, tls=self.tls))
        self.port = await tg.start(self._serve, self.server)
        return self.port

    async def _serve(self, server: HsmServer, *, task_status: anyio.abc.TaskStatus[int]) -> None:
        with anyio.CancelScope() as scope:
            self._scope = scope
            await server.serve(task_status=task_status)

    def stop(self) -> None:
        """Close the listener and every connection (as a crashed HSM would)."""
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None


@dataclass
class Stack:
    gateway: Gateway
    issuers: dict[str, IssuerServer]
    pki_dir: Path
    task_group: anyio.abc.TaskGroup
    hsm: InProcessHsm | None = None
    """The in-process HSM simulator the gateway uses (None: the gateway has no HSM)."""
    replicas: dict[str, list[IssuerServer]] = field(default_factory=dict)
    """Further endpoints of an issuer (same books), after ``issuers[issuer]``."""
    gateway_scope: anyio.CancelScope | None = None

    async def stop_gateway(self, *, graceful: bool = False) -> None:
        """Stop the gateway: ``graceful`` as on SIGTERM, else cancelled mid-flight (what a
        crash leaves in the journal, except that queued journal writes are flushed)."""
        if graceful:
            await self.gateway.shutdown(grace=2.0)
        if self.gateway_scope is not None:
            self.gateway_scope.cancel()
            self.gateway_scope = None
        stopped = self.gateway.stopped
        if stopped is not None:
            with anyio.fail_after(10):
                await stopped.wait()

    async def start_gateway(self, *, wait_ready: bool = True, node: int | None = None) -> Gateway:
        """A new gateway instance with the same config (same journal file): a restart, or
        with ``node`` another node on the same journal."""
        cfg = self.gateway.cfg if node is None else dataclasses.replace(self.gateway.cfg, node=node)
        self.gateway = Gateway(cfg, DEMO_CONF, self.gateway.dataset, clock=self.gateway.clock)
        self.gateway_scope = await self.task_group.start(_run_gateway, self.gateway)
        if wait_ready:
            with anyio.fail_after(10):
                await self.gateway.wait_ready()
        return self.gateway

    @property
    def port(self) -> int:
        assert self.gateway.terminal_port is not None
        return self.gateway.terminal_port

    @property
    def qr_url(self) -> str:
        """Base URL of the QR acquirer API."""
        assert self.gateway.qr_port is not None
        return f"http://127.0.0.1:{self.gateway.qr_port}"

    def account_balance(self, issuer: str, pan: str) -> int:
        account = self.issuers[issuer].host.book.find(pan)
        assert account is not None
        return account.balance

    def client_tls(self) -> ssl.SSLContext:
        return pki.client_context(self.pki_dir, None)

    async def restart_issuer(self, issuer: str) -> IssuerServer:
        old = self.issuers[issuer]
        new = old.restarted()
        await self.task_group.start(new.run)
        self.issuers[issuer] = new
        return new


def issuer_server(
    issuer: str,
    dataset: Dataset,
    pki_dir: Path,
    framing: str = "binary2",
    *,
    dialect: str = "terminal",
    header: str = "",
    translation: TranslationConfig | None = None,
) -> IssuerServer:
    """An issuer simulator as ``issuer-sim run`` builds it, speaking ``dialect``."""
    security = IssuerSecurity.from_dataset(dataset, issuer)
    book = AccountBook.from_cards(
        issuer, dataset.cards, dataset.issuer_behaviour.synthetic, security
    )
    ctx = pki.server_context(pki_dir, f"issuer-{issuer}", require_client_cert=True)
    host = IssuerHost(book, emv=EmvAuthenticator.for_issuer(dataset, issuer))
    codec = link_codec(
        dialect,
        header=header,
        translation=translation,
        clock=lambda: dt.datetime.now(dt.UTC),
        on_fallback=fallback_logger(issuer),
    )
    if security is not None:
        security.codec = codec
    return IssuerServer(
        host,
        ctx,
        allowed_clients=(LINK_CLIENT,),
        codec=codec,
        framing=get_framing(framing),
    )


@asynccontextmanager
async def running_stack(
    pki_dir: Path,
    *,
    link_timeout: float = 1.0,
    risk: str = "risk.toml",
    dataset: Dataset | None = None,
    hsm: bool = True,
    hsm_tls: HsmTlsConfig | None = None,
    journal: str | Path = "",
    saf: SafConfig | None = None,
    standin: StandInConfig | None = None,
    replicas: dict[str, int] | None = None,
    connections: int = 2,
    qr_api: QrApiConfig | None = None,
    terminal_options: dict[str, Any] | None = None,
    dialects: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    issuer_translations: dict[str, TranslationConfig] | None = None,
    framings: dict[str, str] | None = None,
    link_options: dict[str, dict[str, Any]] | None = None,
    clock: Callable[[], dt.datetime] = utcnow,
    key_blocks: bool = False,
    **gateway_options: Any,
) -> AsyncIterator[Stack]:
    """Gateway + the three issuer simulators on 127.0.0.1; ``risk`` is relative to conf/demo
    (or absolute), empty to run without the risk stage. With ``hsm`` (and an ``[hsm]`` LMK
    in the dataset) an HSM simulator runs in-process on a free port for the gateway.
    ``journal`` names a journal TOML (absolute, or relative to conf/demo; empty: none);
    ``replicas`` adds endpoints per issuer (simulators sharing the issuer's books);
    ``terminal_options`` overrides ``[terminal]`` settings (ports 0, partial frames 0.5 s);
    ``framings`` names an issuer link's framing (both ends; default binary2);
    ``dialects`` sets an issuer's link dialect on both ends (default: the terminal dialect),
    ``headers`` its static link header,
    ``issuer_translations`` an issuer simulator's own translation overrides,
    ``link_options`` more ``[[links]]`` settings per issuer; ``clock`` the gateway's;
    ``key_blocks`` holds the dataset's keys as TR-31 key blocks under the LMK (``[hsm]
    key_blocks``)."""
    framings = framings or {}
    dataset = dataset or demo_dataset()
    async with anyio.create_task_group() as tg:
        hsm_sim = None
        if hsm and dataset.hsm is not None:
            hsm_sim = InProcessHsm(dataset.hsm.lmk.key, hsm_tls)
            await hsm_sim.start(tg)
        servers: dict[str, IssuerServer] = {}
        extra: dict[str, list[IssuerServer]] = {}
        for issuer in ISSUERS:
            servers[issuer] = issuer_server(
                issuer,
                dataset,
                pki_dir,
                framings.get(issuer, "binary2"),
                dialect=(dialects or {}).get(issuer, "terminal"),
                header=(headers or {}).get(issuer, ""),
                translation=(issuer_translations or {}).get(issuer),
            )
            await tg.start(servers[issuer].run)
            extra[issuer] = []
            for _ in range((replicas or {}).get(issuer, 0)):
                first = servers[issuer]
                replica = IssuerServer(
                    first.host,
                    first.ssl_context,
                    allowed_clients=first.allowed_clients,
                    codec=first.codec,
                    framing=first.framing,
                )
                await tg.start(replica.run)
                extra[issuer].append(replica)
        cfg = GatewayConfig(
            pki_dir=str(pki_dir),
            risk=risk,
            terminal=TerminalConfig(
                **{
                    "port": 0,
                    "tls_port": 0,
                    "partial_frame_timeout": 0.5,
                    **(terminal_options or {}),
                }
            ),
            admin=gateway_options.pop("admin", AdminConfig(port=0)),
            qr_api=qr_api or gateway_options.pop("qr_api", QrApiConfig(port=0)),
            links=tuple(
                LinkConfig(
                    issuer=i,
                    endpoints=tuple(
                        f"127.0.0.1:{server.port}" for server in [servers[i], *extra[i]]
                    ),
                    connections=connections,
                    timeout=link_timeout,
                    backoff_initial=0.05,
                    backoff_max=0.2,
                    dialect=(dialects or {}).get(i, "terminal"),
                    header=(headers or {}).get(i, ""),
                    framing=framings.get(i, "binary2"),
                    **(link_options or {}).get(i, {}),
                )
                for i in ISSUERS
            ),
            hsm=HsmConfig(
                endpoints=(f"127.0.0.1:{hsm_sim.port}",) if hsm_sim else (),
                tls=hsm_tls is not None,
                key_blocks=key_blocks,
            ),
            log=LogConfig(level="warning"),
            journal=str(journal),
            saf=saf or SafConfig(),
            standin=standin or StandInConfig(),
            **gateway_options,
        )
        gateway = Gateway(cfg, DEMO_CONF, dataset, clock=clock)
        scope = await tg.start(_run_gateway, gateway)
        with anyio.fail_after(10):
            await gateway.wait_ready()
        yield Stack(gateway, servers, pki_dir, tg, hsm_sim, extra, scope)
        tg.cancel_scope.cancel()


async def _run_gateway(
    gateway: Gateway, *, task_status: anyio.abc.TaskStatus[anyio.CancelScope]
) -> None:
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            await tg.start(gateway.run)
            task_status.started(scope)


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until ``predicate()`` holds (state owned by another task), bounded in time."""
    with anyio.fail_after(timeout):
        while True:
            if predicate():
                return
            await anyio.sleep(0.01)
