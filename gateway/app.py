"""The gateway process: wires dataset, links, pipeline, listeners and admin in one task group."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import os
import ssl
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager, nullcontext
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskStatus

from gateway.config import GatewayConfig
from gateway.edge.affinity import CardAffinity, Handler, socket_dir
from gateway.edge.draining import DrainingSwitch
from gateway.edge.http import Rejections, serve_asgi
from gateway.edge.terminals import Listener, TerminalServer
from gateway.flow.emv_check import CheckEmv
from gateway.flow.evicted import EvictedKeys
from gateway.flow.journal_stage import (
    JournalCheckDuplicate,
    JournalFindOriginal,
    JournalIssuerHook,
    JournalReceive,
    JournalRuntime,
    JournalStage,
    recover_in_flight,
)
from gateway.flow.participants import CheckDuplicate, CheckFields, FindOriginal, QueryIssuer, Route
from gateway.flow.pipeline import Participant
from gateway.flow.recent import RecentTransactions
from gateway.flow.risk_stage import CheckRisk
from gateway.flow.routing import BinTable
from gateway.flow.security import IssuerLinkMac, SecurityMetrics, TranslatePin, VerifyMac
from gateway.flow.standin import StandIn
from gateway.flow.switch import utcnow
from gateway.flow.tokens import Detokenize, PanCipher, TokenVault
from gateway.journal import Journal, JournalConfig, JournalConfigError, open_journal
from gateway.journal import load_config as load_journal_config
from gateway.journal.config import node_path
from gateway.metrics import Metrics
from gateway.ops.admin import AdminAccess, admin_app
from gateway.ops.audit import os_user
from gateway.ops.dashboard import dashboard_routes
from gateway.qr import QrService, qr_app, with_virtual_terminals
from gateway.qr.otp import OtpEnrolment
from gateway.qr.store import store_from_config
from gateway.risk import RiskEngine
from gateway.upstream.cutover import CutoverAnnouncer
from gateway.upstream.hsm_client import HsmClient, HsmCommandError, HsmError
from gateway.upstream.link_keys import LinkKeyExchange, LinkKeyMetrics
from gateway.upstream.links import IssuerPool
from gateway.upstream.saf import SafMetrics, SafService
from kit import fastio, pki
from kit.admission import Admission
from kit.conf import ConfigError
from kit.dataset import Dataset, load_dataset
from kit.keys import load_keys
from kit.linkdialect import link_codec
from kit.logs import get_logger
from protocols.dialects import get_dialect
from protocols.fastcodec import best_codec
from protocols.framing import get_framing
from protocols.message import Message
from protocols.translate import Fallback

log = get_logger("gateway.app")


class Gateway:
    def __init__(
        self,
        cfg: GatewayConfig,
        base_dir: Path,
        dataset: Dataset | None = None,
        *,
        worker: int = 0,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        """Wall clock of requests, links and the business day (tests move it)."""
        self.calendar = cfg.switch.calendar()
        self.base_dir = base_dir
        # QR acquirers enter the pipeline from virtual terminals (gateway/qr/terminals.py).
        self.dataset = with_virtual_terminals(dataset or load_dataset(base_dir / cfg.data))
        self.pki_dir = (base_dir / cfg.pki_dir).resolve()
        self.metrics = Metrics()
        self.codec = best_codec(get_dialect(cfg.terminal.dialect))
        pki.ensure_pki(self.pki_dir, self.certificate_names(cfg))
        for name in (pki.CA_NAME, *self.certificate_names(cfg)):
            expiry = pki.not_after(self.pki_dir, name).timestamp()
            self.metrics.certificate_expiry.labels(name).set(expiry)
        self.pools: dict[str, IssuerPool] = {}
        client_ctx: dict[str, Any] = {}
        for link in cfg.links:
            self.dataset.issuer(link.issuer)  # KeyError names an issuer missing from the data
            if link.client_cert not in client_ctx:
                client_ctx[link.client_cert] = pki.client_context(self.pki_dir, link.client_cert)
            self.pools[link.issuer] = IssuerPool(
                link,
                link_codec(
                    link.dialect,
                    header=link.header,
                    translation=link.translation,
                    clock=utcnow,
                    on_fallback=self._translation_fallback(link.issuer),
                ),
                client_ctx[link.client_cert],
                clock=clock,
                on_unmatched=self._on_unmatched,
                on_state=self._on_link_state,
            )
        self.metrics.watch_links(lambda: [p.status() for p in self.pools.values()])
        self.metrics.watch_status(self.status)
        self.bins = BinTable((b, i.id) for i in self.dataset.issuers for b in i.bins)
        self.recent = RecentTransactions(
            window=cfg.duplicate_window,
            max_entries=cfg.duplicate_max_entries,
            evicted=EvictedKeys(
                window=cfg.duplicate_window,
                first_capacity=cfg.duplicate_max_entries,
                max_bytes=int(cfg.duplicate_filter_max_mib * 2**20),
            ),
        )
        self.risk_path = (base_dir / cfg.risk) if cfg.risk else None
        self.risk: RiskEngine | None = None
        if self.risk_path is not None:
            self.risk = RiskEngine.from_file(self.risk_path, registry=self.metrics.registry)
        self.pan_cipher = PanCipher.from_env(cfg.tokens.key_env)
        self.tokens = TokenVault(self.pan_cipher, self.dataset.tokens)
        # Keys under the LMK, once (kit/keys.py); the HSM does every PIN and MAC operation.
        self.keys = load_keys(self.dataset, key_blocks=cfg.hsm.key_blocks)
        self.security_metrics = SecurityMetrics(self.metrics.registry)
        self.hsm: HsmClient | None = None
        if cfg.hsm.endpoints:
            hsm_tls = pki.client_context(self.pki_dir, cfg.hsm.client_cert) if cfg.hsm.tls else None
            self.hsm = HsmClient(
                cfg.hsm.endpoints,
                connections=cfg.hsm.connections,
                timeout=cfg.hsm.timeout,
                connect_timeout=cfg.hsm.connect_timeout,
                ssl_context=hsm_tls,
                tls_hostname=cfg.hsm.server_name if cfg.hsm.tls else None,
                histogram=self.security_metrics.hsm_latency,
            )
        security = (self.hsm, self.keys, self.security_metrics)
        # Working keys of issuer links changed under their ZMKs (gateway/upstream/link_keys.py).
        self.link_key_metrics = LinkKeyMetrics(self.metrics.registry)
        self.key_exchanges: dict[str, LinkKeyExchange] = {}
        for issuer, pool in self.pools.items():
            exchange = LinkKeyExchange(
                pool, self.keys, self.hsm, self.link_key_metrics, clock=utcnow
            )
            self.key_exchanges[issuer] = exchange
            pool.on_key_change = exchange.answer
            pool.key_status = exchange.status
            pool.on_sign_on = functools.partial(self._keys_on_sign_on, exchange)
        # Journal, store-and-forward, stand-in and crash recovery (gateway/flow/journal_stage.py).
        self.journal_config: JournalConfig | None = None
        if cfg.journal:
            try:
                self.journal_config = load_journal_config(base_dir / cfg.journal)
            except JournalConfigError as exc:
                raise ConfigError(str(exc)) from None
            if cfg.workers > 1 and self.journal_config.backend == "sqlite":
                # One SQLite file per worker process (one writer each); PostgreSQL is shared.
                self.journal_config = dataclasses.replace(
                    self.journal_config, path=node_path(self.journal_config.path, cfg.node)
                )
        self.journal_runtime = JournalRuntime(cfg.acquirer_id, cfg.saf, window=cfg.duplicate_window)
        self.journal: Journal | None = None
        self.saf: SafService | None = None
        self.saf_metrics = SafMetrics(self.metrics.registry)
        self.link_hook = IssuerLinkMac(*security)
        rt, started = self.journal_runtime, set[str]()
        journaled = self.journal_config is not None
        query = QueryIssuer(
            cfg.acquirer_id,
            self.metrics,
            JournalIssuerHook(rt, started, self.link_hook) if journaled else self.link_hook,
        )
        self.standin: StandIn | None = None
        if journaled:
            self.standin = StandIn(
                cfg.standin,
                rt,
                query,
                self.dataset,
                hsm=self.hsm,
                keys=self.keys,
                acquirer_id=cfg.acquirer_id,
                risk=self.risk,
                key_blocks=cfg.hsm.key_blocks,
            )
        self.participants: list[Participant] = [
            *([JournalStage(rt, started, self.pools)] if journaled else []),
            CheckFields(self.dataset),
            CheckEmv(),
            JournalCheckDuplicate(self.recent, self.metrics, rt)
            if journaled
            else CheckDuplicate(self.recent, self.metrics),
            VerifyMac(*security),
            Detokenize(self.tokens),
            JournalFindOriginal(self.recent, rt) if journaled else FindOriginal(self.recent),
            Route(self.bins, self.pools),
            *([JournalReceive(rt, started)] if journaled else []),
            *([CheckRisk(self.risk)] if self.risk is not None else []),
            TranslatePin(*security, memory=cfg.ksn_memory),
            *([self.standin] if self.standin is not None else []),
            query,
        ]
        self.switch = DrainingSwitch(
            self.participants,
            self.metrics,
            node=cfg.node,
            request_timeout=cfg.terminal.request_timeout,
            log_transactions=cfg.log.transactions,
            clock=clock,
            calendar=self.calendar,
        )
        self.cutover = CutoverAnnouncer(
            self.calendar,
            self.pools,
            clock=clock,
            timeout=cfg.switch.cutover_timeout,
            on_outcome=lambda issuer, outcome: self.metrics.cutovers.labels(issuer, outcome).inc(),
        )
        # Several workers: each card's requests run in the worker that owns it.
        self.affinity: CardAffinity | None = None
        front: Handler = self.switch
        if cfg.workers > 1 and cfg.card_affinity:
            front = self.affinity = CardAffinity(
                self.switch,
                index=worker,
                workers=cfg.workers,
                directory=socket_dir(base_dir),
                vault=self.tokens,
                timeout=2 * cfg.terminal.request_timeout + 1.0,
                requests=self.metrics.affinity,
            )
        self.terminals = TerminalServer(
            front,
            self.codec,
            self.metrics,
            max_frame=cfg.terminal.max_frame,
            partial_timeout=cfg.terminal.partial_frame_timeout,
            max_in_flight=cfg.terminal.max_in_flight,
            max_pending_per_terminal=cfg.terminal.max_pending_per_terminal,
        )
        # QR payments and idempotency keys: in memory, or a SQLite file under its own key.
        qr_store, qr_cipher = store_from_config(cfg.qr_api, base_dir, self.pan_cipher)
        self.qr = QrService(
            self.dataset,
            front.handle,
            qr_cipher,
            idempotency_window=cfg.qr_api.idempotency_window,
            max_payments=cfg.qr_api.max_payments,
            store=qr_store,
            registry=self.metrics.registry,
            journaled=self.journal_config is not None,
            enrolment=OtpEnrolment.load(
                base_dir / cfg.qr_api.otp_enrolment, qr_cipher.lookup_key_of
            )
            if cfg.qr_api.otp_enrolment
            else None,
            challenge_ttl=cfg.qr_api.challenge_ttl,
            challenge_tries=cfg.qr_api.challenge_tries,
            max_challenges=cfg.qr_api.max_challenges,
        )
        self._ready: anyio.Event | None = None
        self.terminal_port: int | None = None
        self.tls_port: int | None = None
        self.listener_ports: dict[str, int] = {}
        """Bound ports of ``[terminal] listeners``, by name."""
        self.admin_port: int | None = None
        # Admin tokens and audit file: a bad [admin] config stops the start here, before
        # anything listens (tokens_env unset, no token on a non-loopback address).
        self.admin_access = AdminAccess.from_config(
            cfg.admin, base_dir, workers=cfg.workers, node=cfg.node, metrics=self.metrics
        )
        self.qr_port: int | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._front: anyio.CancelScope | None = None
        self._saf_scope: anyio.CancelScope | None = None
        self.recovered = 0
        """Transactions found in flight at start (a crash) and reversed."""
        self.stopped: anyio.Event | None = None
        """Set once ``run`` has ended and the journal is closed."""

    @staticmethod
    def certificate_names(cfg: GatewayConfig) -> list[str]:
        names = {cfg.terminal.tls_cert, *(link.client_cert for link in cfg.links)}
        if cfg.hsm.tls:
            names.add(cfg.hsm.client_cert)
        return sorted(names)

    def _translation_fallback(self, issuer: str) -> Callable[[Fallback], None]:
        """Log and count a code the link's translation table lacks (protocols.translate):
        the fallback is explicit, never a silent pass-through or approval."""
        counter = self.metrics.translation_fallbacks

        def report(fb: Fallback) -> None:
            counter.labels(issuer, fb.direction, fb.field, fb.code).inc()
            log.warning(
                "link_translation_fallback",
                issuer=issuer,
                direction=fb.direction,
                field=fb.field,
                code=fb.code,
                used=fb.used,
            )

        return report

    def _on_unmatched(self, issuer: str, msg: Message) -> None:
        self.metrics.late_responses.labels(issuer).inc()
        log.warning("issuer_late_response", issuer=issuer, mti=msg.mti, rc=msg.fields.get("39"))
        if self.saf is not None:
            self.saf.late_answer(issuer, msg)  # a late approval is reversed (0420 via SAF)

    def reload_risk(self) -> dict[str, Any]:
        """Reload the risk rules from their file; a broken file keeps the old rules."""
        from gateway.risk import ConfigError as RiskConfigError

        if self.risk is None or self.risk_path is None:
            return {"reloaded": False, "reason": "risk stage disabled"}
        try:
            ignored = self.risk.reload_file(self.risk_path)
        except RiskConfigError as exc:
            log.warning("risk_reload_refused", reason=str(exc))
            return {"reloaded": False, "reason": str(exc)}
        log.info("risk_reloaded", restart_only_ignored=list(ignored))
        return {"reloaded": True, "restart_only_ignored": list(ignored)}

    async def reload_risk_on_signal(self, signame: str = "SIGHUP") -> dict[str, Any]:
        """The rule reload a signal asks for, audited like ``POST /admin/reload`` in this
        process's audit file: an intent record first (it cannot be written: the reload is
        refused, as an operator action over HTTP is), then the result."""
        audit = self.admin_access.audit
        who: dict[str, Any] = {
            "actor": f"signal:{signame}",
            "os_user": os_user(),
            "pid": os.getpid(),
            "node": self.cfg.node,
            "action": "reload_risk",
        }
        if audit.path is not None and not await audit.record(
            {**who, "phase": "intent"}, event="signal_intent"
        ):
            log.error("risk_reload_refused", reason="audit file not writable", signal=signame)
            result: dict[str, Any] = {
                "reloaded": False,
                "reason": "audit file not writable: reload refused",
            }
        else:
            result = self.reload_risk()
        await audit.record({**who, "detail": result}, event="signal_reload")
        return result

    async def _keys_on_sign_on(self, exchange: LinkKeyExchange) -> None:
        if not exchange.on_signed_on():
            return
        try:
            await exchange.rotate("sign_on")
        except Exception as exc:  # a bug of ours must not take the link down with it
            log.error("link_keys_sign_on_failed", issuer=exchange.issuer, error=type(exc).__name__)

    async def rotate_link_keys(self, issuer: str) -> dict[str, Any] | None:
        """``POST /admin/links/{issuer}/rotate-keys``: new ZPK/ZAK on the link now (None: no
        such link)."""
        exchange = self.key_exchanges.get(issuer)
        if exchange is None:
            return None
        if not exchange.enabled:
            return {"issuer": issuer, "rotated": False, "reason": exchange.why_not()}
        if not exchange.pool.ready:
            return {"issuer": issuer, "rotated": False, "reason": "link not signed on"}
        return await exchange.rotate("operator")

    @property
    def ready(self) -> bool:
        return all(p.ready for p in self.pools.values())

    def _alerts(self, limit: int) -> list[dict[str, object]]:
        """The latest risk alerts (masked PANs only), for the dashboard."""
        return self.risk.recent_alerts(limit) if self.risk is not None else []

    def status(self) -> dict[str, Any]:
        start, end, business_date = self.calendar.span(self.clock())
        return {
            "ready": self.ready,
            "business_day": {
                "date": business_date.isoformat(),
                "started": start.isoformat(),
                "next_cutover": end.isoformat(),
            },
            "links": [p.status() for p in self.pools.values()],
            "recent_transactions": len(self.recent),
            "hsm": self._hsm_status(),
            "journal": None
            if self.journal_config is None
            else {
                "backend": self.journal_config.backend,
                "open": self.journal is not None,
                "recovered_at_start": self.recovered,
                "writes": self._journal_writes(),
                "saf_delivered": {}
                if self.saf is None
                else {i: s.delivered for i, s in self.saf.senders.items()},
                "stand_in_approved": self.standin.approved if self.standin else 0,
                "breakers": self.standin.status() if self.standin else {},
            },
            "in_flight": self.switch.in_flight,
            "draining": self.switch.draining,
        }

    def _journal_writes(self) -> dict[str, Any] | None:
        """Group-commit counters: records per batch is what durability costs per record."""
        if self.journal is None:
            return None
        st = self.journal.statistics()
        return {
            "ops": st.ops,
            "batches": st.batches,
            "mean_batch": round(st.ops / max(1, st.batches), 1),
            "largest_batch": st.largest_batch,
            "failed_batches": st.failed_batches,
        }

    def _hsm_status(self) -> dict[str, Any] | None:
        if self.hsm is None:
            return None
        st = self.hsm.statistics()
        return {
            "endpoint": st.active_endpoint,
            "connections": st.connections,
            "requests": st.requests,
            "timeouts": st.timeouts,
            "errors": st.by_error_code,
            "p50_ms": round(st.latency_p50_ms, 3),
            "p99_ms": round(st.latency_p99_ms, 3),
        }

    async def _check_hsm(self, hsm: HsmClient) -> None:
        """At start: is the HSM there, and does it hold the LMK our keys are under? Asks again
        every 2 s until it answers (it may start after the gateway); says so once."""
        warned = False
        while True:
            try:
                diag = await hsm.diagnostics()
                break
            except HsmCommandError as exc:
                log.warning("hsm_diagnostics_refused", error=exc.error_code)
                return
            except HsmError as exc:
                if not warned:
                    endpoints = list(self.cfg.hsm.endpoints)
                    log.warning("hsm_not_reachable", endpoints=endpoints, error=str(exc))
                    warned = True
            await anyio.sleep(2.0)
        if self.keys.lmk_kcv and not diag.lmk_check_value.upper().startswith(self.keys.lmk_kcv):
            log.error("hsm_lmk_mismatch", expected_kcv=self.keys.lmk_kcv)
            return
        log.info("hsm_ready", endpoint=hsm.statistics().active_endpoint, firmware=diag.firmware)

    def _on_link_state(self, pool: IssuerPool) -> None:
        if self.saf is not None:
            self.saf.link_state_changed(pool)
        if self._ready is not None and self.ready:
            self._ready.set()

    async def wait_ready(self) -> None:
        """Until every issuer has a signed-on link (the caller bounds the wait)."""
        while not self.ready:
            self._ready = anyio.Event()
            await self._ready.wait()

    async def run(self, *, task_status: TaskStatus[Gateway] = anyio.TASK_STATUS_IGNORED) -> None:
        opener: AbstractAsyncContextManager[Journal | None] = nullcontext(None)
        if self.journal_config is not None:
            opener = open_journal(self.journal_config)
        self.stopped = stopped = anyio.Event()
        # The journal closes last: every write queued by the pipeline is flushed first.
        try:
            async with opener as journal, self.qr.store:
                self.journal = journal
                self.journal_runtime.attach(journal)
                try:
                    await self._run(journal, task_status)
                finally:
                    self.journal_runtime.attach(None)
                    self.journal = None
                    self.saf = None
        finally:
            stopped.set()

    async def _run(self, journal: Journal | None, task_status: TaskStatus[Gateway]) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            if journal is not None:
                # Before any traffic: what a crash left with the issuer is reversed.
                self.recovered = await recover_in_flight(
                    journal,
                    self.pools,
                    acquirer_id=self.cfg.acquirer_id,
                    now=self.clock(),
                    node=self.cfg.node,
                )
                await self.journal_runtime.load_known(
                    self.clock(), self.recent.max_entries, self.recent.evicted
                )
                self.saf = SafService(
                    self.journal_runtime,
                    journal,
                    self.pools,
                    self.cfg.saf,
                    self.saf_metrics,
                    hook=self.link_hook,
                    clock=self.clock,
                )
            if self.risk is not None:
                await tg.start(self.risk.run)
            if self.affinity is not None:
                await tg.start(self.affinity.run)
            if self.hsm is not None:
                await tg.start(self.hsm.run)
                tg.start_soon(self._check_hsm, self.hsm)
            for pool in self.pools.values():
                await tg.start(pool.run)
            for exchange in self.key_exchanges.values():
                await tg.start(exchange.run)
            if self.pools:
                await tg.start(self.cutover.run)
            if self.saf is not None:
                self._saf_scope = await tg.start(self._run_saf, self.saf)
            self._front = await tg.start(self._serve_front)
            if self.cfg.admin.port >= 0:
                app = admin_app(
                    self.metrics,
                    self.status,
                    self,
                    access=self.admin_access,
                    extra_routes=dashboard_routes(self.status, self.metrics, self._alerts),
                    rotate_keys=self.rotate_link_keys,
                )
                self.admin_port = await tg.start(
                    functools.partial(
                        serve_asgi,
                        limits=self.cfg.admin.limits,
                        refused=Rejections(self.metrics.http_rejected, "admin"),
                    ),
                    app,
                    self.cfg.admin.host,
                    self.cfg.admin.port,
                )
            log.info(
                "gateway_started",
                terminal_port=self.terminal_port,
                tls_port=self.tls_port,
                listener_ports=self.listener_ports,
                admin_port=self.admin_port,
                qr_port=self.qr_port,
                issuers=sorted(self.pools),
                journal=self.journal_config.backend if self.journal_config else None,
                recovered=self.recovered,
            )
            task_status.started(self)

    async def _run_saf(
        self, saf: SafService, *, task_status: TaskStatus[anyio.CancelScope]
    ) -> None:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                await tg.start(saf.run)
                task_status.started(scope)

    async def _serve_front(self, *, task_status: TaskStatus[anyio.CancelScope]) -> None:
        """Terminal listeners and the QR API, with their connections: stopped first."""
        cfg = self.cfg.terminal
        reuse_port = self.cfg.workers > 1  # worker processes share the listening ports
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                limits = functools.partial(
                    fastio.serve,
                    tg,
                    host=cfg.host,
                    max_size=cfg.max_frame,
                    partial_timeout=cfg.partial_frame_timeout,
                    idle_timeout=cfg.idle_timeout,
                    frame_deadline=cfg.frame_deadline,
                    handshake_timeout=cfg.tls_handshake_timeout,
                    reuse_port=reuse_port,
                )
                framing = get_framing(cfg.framing)
                if cfg.port >= 0:
                    self.terminal_port = await limits(
                        self._handler("tcp", cfg.dialect, cfg.framing),
                        port=cfg.port,
                        ssl_context=None,
                        admission=self._admission(),
                        framing=framing,
                    )
                if cfg.tls_port >= 0:
                    self.tls_port = await limits(
                        self._handler("tls", cfg.dialect, cfg.framing),
                        port=cfg.tls_port,
                        ssl_context=self._tls_context(),
                        admission=self._admission(),
                        framing=framing,
                    )
                qr_cfg = self.cfg.qr_api
                if qr_cfg.port >= 0:
                    qr = qr_app(self.qr, max_body=qr_cfg.max_body)
                    self.qr_port = await tg.start(
                        functools.partial(
                            serve_asgi,
                            limits=qr_cfg.limits,
                            refused=Rejections(self.metrics.http_rejected, "qr"),
                            reuse_port=reuse_port,
                        ),
                        qr,
                        qr_cfg.host,
                        qr_cfg.port,
                    )
                for extra in cfg.listeners:
                    if extra.port >= 0:
                        self.listener_ports[extra.name] = await limits(
                            self._handler(extra.name, extra.dialect, extra.framing),
                            port=extra.port,
                            ssl_context=self._tls_context() if extra.tls else None,
                            admission=self._admission(),
                            framing=get_framing(extra.framing),
                        )
                task_status.started(scope)

    def _tls_context(self) -> ssl.SSLContext:
        return pki.server_context(
            self.pki_dir, self.cfg.terminal.tls_cert, require_client_cert=False
        )

    def _handler(
        self, name: str, dialect: str, framing: str
    ) -> Callable[[fastio.FrameChannel], Coroutine[Any, Any, None]]:
        """The connection handler of a terminal listener speaking ``dialect`` in ``framing``."""
        codec = (
            self.codec if dialect == self.cfg.terminal.dialect else best_codec(get_dialect(dialect))
        )
        listener = Listener(name, codec, tpdu=get_framing(framing).tpdu)

        async def handle(channel: fastio.FrameChannel) -> None:
            if self.switch.draining:
                await channel.aclose()  # stopping: no new terminal connections
                return
            await self.terminals.handle_connection(channel, listener)

        return handle

    def _admission(self) -> Admission:
        """A terminal listener's connection caps (one each: TCP, TLS)."""
        cfg = self.cfg.terminal
        return Admission(
            cfg.max_connections, cfg.max_connections_per_address, self.terminals.refused
        )

    async def shutdown(self, grace: float | None = None) -> None:
        """Graceful stop (SIGTERM): refuse new transactions, let those in flight finish (at
        most ``grace`` s), close the listeners, stop the SAF senders, sign off every issuer
        link, then end ``run`` (which flushes and closes the journal)."""
        grace = self.cfg.shutdown_grace if grace is None else grace
        log.info("gateway_stopping", in_flight=self.switch.in_flight, grace=grace)
        left = await self.switch.drain(grace)
        if self._front is not None:
            self._front.cancel()
        if self._saf_scope is not None:
            self._saf_scope.cancel()
        with anyio.move_on_after(max(grace, 1.0)):
            async with anyio.create_task_group() as tg:
                for pool in self.pools.values():
                    tg.start_soon(pool.sign_off)
        log.info("gateway_stopped", abandoned=left)
        self.abort()

    def abort(self) -> None:
        """End ``run`` now (cancels everything; the journal still flushes what is queued)."""
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
