"""Client of the payShield-style HSM (hsm_sim or a real one speaking the same host commands).

``HsmClient`` keeps a small pool of persistent connections to the first reachable of several
HSM endpoints, pipelines requests on them (each request gets a fresh 4-character header and
its answer is matched by that header, in whatever order answers come), bounds every request
with a timeout, and fails over to the next endpoint when one cannot be reached or times out.
Commands are pure crypto without side effects, so a request that failed on one HSM is simply
sent again to the next. Keys are passed as the ``U`` + 32 hex form under the HSM's LMK
(:func:`hsm_sim.lmk.encrypt_under_lmk` makes them from the demo's clear test keys) or as
``S`` + a TR-31 key block under it (the HSM enforces its header).

Lifecycle: ``async with HsmClient([...]) as hsm:`` or ``await tg.start(hsm.run)``. Nothing
logged here carries keys, PIN blocks or PANs. The connections themselves (an asyncio Protocol
on asyncio and uvloop, AnyIO streams on trio) are in :mod:`gateway.upstream.hsm_transport`.

Errors: :class:`HsmUnavailableError` when no endpoint answered in time (answer ``91``/``96``),
:class:`HsmCommandError` when the HSM refused a command (``error_code`` as in payShield, e.g.
``20`` for a PIN block that does not decrypt under the given key). Verification failures
(error ``01``) are not errors: the verify methods return ``False`` (or ``None`` for the ARPC).
"""

from __future__ import annotations

import ssl
import statistics as _stats
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from time import perf_counter
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import anyio
import anyio.abc
import structlog

from gateway.upstream import hsm_transport
from gateway.upstream.hsm_transport import ConnectionLostError, HeadersExhaustedError, HsmConnection
from protocols import hsm as proto
from protocols.errors import ProtocolError

log = structlog.get_logger("gateway.upstream.hsm_client")

_T = TypeVar("_T")
_LATENCY_WINDOW = 4096


class HsmError(Exception):
    """Base of the HSM client's errors."""


class HsmUnavailableError(HsmError):
    """No HSM endpoint could be reached or answered within the timeout."""


class HsmCommandError(HsmError):
    """The HSM answered with an error code other than 00 (and 01 for verifications)."""

    def __init__(self, command: str, error_code: str) -> None:
        super().__init__(f"HSM refused {command}: error {error_code}")
        self.command = command
        self.error_code = error_code


@dataclass(frozen=True, slots=True)
class HsmEndpoint:
    host: str
    port: int

    @classmethod
    def parse(cls, value: str | tuple[str, int] | HsmEndpoint) -> HsmEndpoint:
        """``"host:port"``, ``(host, port)`` or an endpoint."""
        if isinstance(value, HsmEndpoint):
            return value
        if isinstance(value, tuple):
            return cls(value[0], int(value[1]))
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"HSM endpoint must be host:port, not {value!r}")
        return cls(host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class PinTranslation:
    """A translated PIN block (8 bytes, 16 for ISO format 4) and the PIN's length."""

    pin_length: int
    pin_block: bytes
    pin_block_format: str


@dataclass(frozen=True, slots=True)
class HsmClientStatistics:
    """Counters and latency (milliseconds, over the last 4096 answered requests)."""

    requests: int
    answered: int
    timeouts: int
    failovers: int
    connects: int
    connect_failures: int
    unmatched_responses: int
    in_flight: int
    connections: int
    active_endpoint: str | None
    by_command: dict[str, int]
    by_error_code: dict[str, int]
    latency_mean_ms: float
    latency_p50_ms: float
    latency_p99_ms: float
    latency_max_ms: float


class HsmClient:
    """Pooled, pipelined, failing-over client of one or more HSMs (see the module doc)."""

    def __init__(
        self,
        endpoints: Sequence[str | tuple[str, int] | HsmEndpoint],
        *,
        connections: int = 2,
        timeout: float = 2.0,
        connect_timeout: float = 1.0,
        down_for: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        tls_hostname: str | None = None,
        histogram: Any = None,
    ) -> None:
        """
        ``connections`` persistent connections are kept to the active endpoint; ``timeout``
        bounds each attempt of a request; an endpoint that failed is skipped for ``down_for``
        seconds (if all are down, all are tried again in order). ``histogram`` is an optional
        ``prometheus_client.Histogram`` of request latency in seconds, unlabelled or with one
        ``command`` label.
        """
        if not endpoints:
            raise ValueError("at least one HSM endpoint is needed")
        if connections < 1 or timeout <= 0 or connect_timeout <= 0:
            raise ValueError("connections must be >= 1 and timeouts positive")
        self.endpoints = tuple(HsmEndpoint.parse(e) for e in endpoints)
        self.connections = connections
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.down_for = down_for
        self._ssl = ssl_context
        self._tls_hostname = tls_hostname
        self._histogram = histogram
        self._labelled = "command" in getattr(histogram, "_labelnames", ())
        self._tg: anyio.abc.TaskGroup | None = None
        self._pools: list[list[HsmConnection]] = [[] for _ in self.endpoints]
        self._down_until = [float("-inf")] * len(self.endpoints)
        self._active: int | None = None
        self._last_active: int | None = None
        self._connect_lock = anyio.Lock()
        self._rr = 0
        # statistics
        self._requests = 0
        self._answered = 0
        self._timeouts = 0
        self._failovers = 0
        self._connects = 0
        self._connect_failures = 0
        self._unmatched = 0
        self._by_command: Counter[str] = Counter()
        self._by_error: Counter[str] = Counter()
        self._latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self._latency_total = 0.0
        self._metrics: dict[str, Any] = {}  # histogram child per command

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        tg, self._tg = self._tg, None
        tg.cancel_scope.cancel()
        return await tg.__aexit__(exc_type, exc, tb)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[HsmClient] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the connections until cancelled (for ``await task_group.start(client.run)``)."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                task_status.started(self)
                await anyio.sleep_forever()
            finally:
                self._tg = None
                tg.cancel_scope.cancel()

    # ------------------------------------------------------------------ statistics

    def statistics(self) -> HsmClientStatistics:
        lat = sorted(self._latencies)
        count = len(lat)

        def pct(p: float) -> float:
            return lat[min(count - 1, int(p * count))] * 1000 if count else 0.0

        return HsmClientStatistics(
            requests=self._requests,
            answered=self._answered,
            timeouts=self._timeouts,
            failovers=self._failovers,
            connects=self._connects,
            connect_failures=self._connect_failures,
            unmatched_responses=self._unmatched,
            in_flight=sum(c.in_flight() for pool in self._pools for c in pool),
            connections=sum(len(pool) for pool in self._pools),
            active_endpoint=None if self._active is None else str(self.endpoints[self._active]),
            by_command=dict(self._by_command),
            by_error_code=dict(self._by_error),
            latency_mean_ms=_stats.fmean(lat) * 1000 if count else 0.0,
            latency_p50_ms=pct(0.50),
            latency_p99_ms=pct(0.99),
            latency_max_ms=lat[-1] * 1000 if count else 0.0,
        )

    # ------------------------------------------------------------------ connections

    def connection_closed(self, conn: HsmConnection, reason: str) -> None:
        """A connection ended (its own task reports it): forget it."""
        pool = self._pools[conn.index]
        if conn in pool:
            pool.remove(conn)
        log.info("hsm.disconnected", endpoint=str(self.endpoints[conn.index]), reason=reason)

    def unmatched_response(self, header: str | None) -> None:
        """A late answer to a command that timed out, or a broken peer."""
        self._unmatched += 1
        log.warning("hsm.unmatched_response", header=header)

    def _order(self) -> list[int]:
        """Endpoint indexes to try: those not marked down, in order; else all, in order."""
        now = anyio.current_time()
        up = [i for i in range(len(self.endpoints)) if self._down_until[i] <= now]
        return up or list(range(len(self.endpoints)))

    def _mark_down(self, index: int, why: str) -> None:
        self._down_until[index] = anyio.current_time() + self.down_for
        if self._active == index:
            self._active = None
        for conn in list(self._pools[index]):
            conn.close()
        log.warning("hsm.endpoint_down", endpoint=str(self.endpoints[index]), reason=why)

    def _tg_start(self, fn: Any) -> None:
        if self._tg is None:
            raise HsmUnavailableError("HsmClient is not running (use 'async with' or run())")
        self._tg.start_soon(fn)

    async def _connect(self, index: int) -> HsmConnection:
        endpoint = self.endpoints[index]
        with anyio.fail_after(self.connect_timeout):
            conn = await hsm_transport.connect(
                self,
                index,
                endpoint.host,
                endpoint.port,
                ssl_context=self._ssl,
                server_hostname=self._tls_hostname or endpoint.host,
            )
        self._pools[index].append(conn)
        self._connects += 1
        self._tg_start(conn.run)
        log.info("hsm.connected", endpoint=str(endpoint))
        return conn

    async def _connection(self) -> HsmConnection:
        """A live connection to the active endpoint, connecting or failing over as needed."""
        if self._tg is None:
            raise HsmUnavailableError("HsmClient is not running (use 'async with' or run())")
        active = self._active
        if active is not None:
            pool = [c for c in self._pools[active] if not c.closed]
            if len(pool) >= self.connections:
                self._rr = (self._rr + 1) % len(pool)
                return pool[self._rr]
        async with self._connect_lock:
            skipped = False
            for index in self._order():
                pool = [c for c in self._pools[index] if not c.closed]
                try:
                    while len(pool) < self.connections:
                        pool.append(await self._connect(index))
                except (OSError, TimeoutError, ssl.SSLError) as exc:
                    self._connect_failures += 1
                    if not pool:
                        self._mark_down(index, f"connect failed: {type(exc).__name__}")
                        skipped = True
                        continue
                if skipped or (self._last_active is not None and self._last_active != index):
                    self._failovers += 1
                    log.warning("hsm.failover", endpoint=str(self.endpoints[index]))
                self._active = self._last_active = index
                self._rr = (self._rr + 1) % len(pool)
                return pool[self._rr]
        raise HsmUnavailableError("no HSM endpoint reachable")

    # ------------------------------------------------------------------ requests

    async def request(self, request: proto.Request) -> proto.HsmResponse:
        """Send one command and return the decoded answer (any error code).

        Tries each endpoint at most once, each attempt bounded by ``timeout``; raises
        :class:`HsmUnavailableError` when none answered.
        """
        code = request.CODE
        self._requests += 1
        self._by_command[code] += 1
        started = perf_counter()  # the loop clock is too coarse on uvloop
        body = proto.encode_request_body(request)  # once, whichever connection sends it
        # One attempt per endpoint, plus one for a connection that dropped under the request.
        for _ in range(len(self.endpoints) + 1):
            conn = self._current() or await self._connection()
            try:
                header, waiter = conn.send(body, self.timeout)
            except ConnectionLostError:
                continue
            except HeadersExhaustedError:
                raise HsmUnavailableError(
                    "too many requests in flight on one HSM connection"
                ) from None
            try:
                payload = await waiter
            except TimeoutError:
                self._timeouts += 1
                if len(self.endpoints) == 1:
                    break
                self._mark_down(conn.index, "request timed out")
                continue
            except ConnectionLostError:
                continue
            except BaseException:
                conn.discard(header, waiter)  # cancelled: nothing must stay behind
                raise
            try:
                response = proto.decode_response(payload)
            except ProtocolError as exc:
                log.error("hsm.bad_response", command=code, reason=str(exc))
                raise HsmCommandError(code, proto.INVALID_INPUT) from None
            self._record(code, response.error_code, perf_counter() - started)
            return response
        raise HsmUnavailableError(f"no HSM answered {code}")

    def _current(self) -> HsmConnection | None:
        """The next open connection of a full pool to the active endpoint (the hot path), or
        ``None`` when :meth:`_connection` must connect, fail over or tidy up."""
        active = self._active
        if active is None or self._tg is None:
            return None
        pool = self._pools[active]
        size = len(pool)
        if size < self.connections:
            return None
        conn = pool[self._rr % size]
        if conn.batching() and not conn.closed:
            # Join the write this connection makes at the end of the loop iteration: one
            # syscall (and one wake-up of the HSM) for several commands. The next iteration's
            # commands go to the next connection.
            return conn
        self._rr = rr = (self._rr + 1) % size
        conn = pool[rr]
        return None if conn.closed else conn

    def _record(self, command: str, error_code: str, seconds: float) -> None:
        self._answered += 1
        self._latencies.append(seconds)
        if error_code != proto.OK:
            self._by_error[error_code] += 1
        histogram = self._histogram
        if histogram is not None:
            metric = self._metrics.get(command)
            if metric is None:
                metric = histogram.labels(command=command) if self._labelled else histogram
                self._metrics[command] = metric
            metric.observe(seconds)

    # ------------------------------------------------------------------ commands

    async def diagnostics(self) -> proto.DiagnosticsResult:
        """NC: the LMK check value (16 hex) and firmware string: a cheap health check."""
        request = proto.Diagnostics()
        return _body(request, await self.request(request), proto.DiagnosticsResult)

    async def generate_key(self, key_type: str = "001") -> tuple[str, str]:
        """A0: a new random key: (key under the LMK, KCV)."""
        request = proto.GenerateKey(key_type=key_type)
        body = _body(request, await self.request(request), proto.GeneratedKey)
        return body.key, body.kcv

    async def generate_key_block(
        self,
        usage: str,
        *,
        algorithm: str = "T",
        mode_of_use: str = "B",
        exportability: str = "E",
        zmk: str | None = None,
        zmk_scheme: str = proto.KEY_BLOCK_SCHEME,
    ) -> tuple[str, str, str | None]:
        """A0 in key-block form: a new key as ``S`` + key block under the LMK with this header,
        also under ``zmk`` when given (a key block by default): (key, KCV, key under ZMK)."""
        request = proto.GenerateKey(
            "FFF",
            "1" if zmk is not None else "0",
            proto.KEY_BLOCK_SCHEME,
            zmk,
            zmk_scheme if zmk is not None else None,
            usage,
            algorithm,
            mode_of_use,
            "00",
            exportability,
        )
        body = _body(request, await self.request(request), proto.GeneratedKey)
        return body.key, body.kcv, body.key_under_zmk

    async def import_key(
        self,
        zmk: str,
        key_under_zmk: str,
        *,
        key_type: str = "FFF",
        key_scheme: str = proto.KEY_BLOCK_SCHEME,
    ) -> tuple[str, str]:
        """A6: a key received under a ZMK (``S`` + key block, or the variant form) into the
        LMK: (key under the LMK, KCV). A block that does not authenticate raises
        :class:`HsmCommandError` with ``A4``."""
        request = proto.ImportKey(zmk, key_under_zmk, key_type, key_scheme)
        body = _body(request, await self.request(request), proto.ImportedKey)
        return body.key, body.kcv

    async def export_key(
        self,
        zmk: str,
        key: str,
        *,
        key_type: str = "FFF",
        key_scheme: str = proto.KEY_BLOCK_SCHEME,
    ) -> tuple[str, str]:
        """A8: a key under the LMK re-wrapped under a ZMK: (key under ZMK, KCV); ``AA`` when the
        key is not exportable."""
        request = proto.ExportKey(zmk, key, key_type, key_scheme)
        body = _body(request, await self.request(request), proto.ExportedKey)
        return body.key_under_zmk, body.kcv

    async def key_check_value(self, key: str) -> str:
        """BU: the 6-hex check value of a key under the LMK."""
        request = proto.KeyCheckValue(key=key)
        return _body(request, await self.request(request), proto.KeyCheckValueResult).kcv

    async def translate_pin_tpk_to_zpk(
        self,
        tpk: str,
        zpk: str,
        pin_block: bytes,
        pan: str,
        *,
        src_format: str = proto.FORMAT_ISO0,
        dst_format: str = proto.FORMAT_ISO0,
        max_pin_length: int = 12,
    ) -> PinTranslation:
        """CA: re-encrypt a terminal's PIN block from its TPK to a ZPK."""
        request = proto.TranslatePinTpkToZpk(
            tpk,
            zpk,
            pin_block.hex().upper(),
            pan,
            src_format,
            dst_format,
            f"{max_pin_length:02d}",
        )
        body = _body(request, await self.request(request), proto.PinTranslated)
        return _translation(body)

    async def translate_pin_zpk_to_zpk(
        self,
        src_zpk: str,
        dst_zpk: str,
        pin_block: bytes,
        pan: str,
        *,
        src_format: str = proto.FORMAT_ISO0,
        dst_format: str = proto.FORMAT_ISO0,
        max_pin_length: int = 12,
    ) -> PinTranslation:
        """CC: re-encrypt a PIN block from one ZPK to another."""
        request = proto.TranslatePinZpkToZpk(
            src_zpk,
            dst_zpk,
            pin_block.hex().upper(),
            pan,
            src_format,
            dst_format,
            f"{max_pin_length:02d}",
        )
        body = _body(request, await self.request(request), proto.PinTranslatedZpk)
        return _translation(body)

    async def translate_pin_dukpt_to_zpk(
        self,
        bdk: str,
        zpk: str,
        ksn: str,
        pin_block: bytes,
        pan: str,
        *,
        dst_format: str = proto.FORMAT_ISO0,
    ) -> PinTranslation:
        """G0: re-encrypt a DUKPT terminal's PIN block (BDK + KSN of field 53) to a ZPK."""
        request = proto.TranslatePinDukptToZpk(
            bdk, zpk, ksn.upper(), pin_block.hex().upper(), pan, dst_format
        )
        body = _body(request, await self.request(request), proto.PinTranslatedDukpt)
        return _translation(body)

    async def translate_pin_aes_dukpt_to_zpk(
        self,
        bdk: str,
        zpk: str,
        ksn: str,
        pin_block: bytes,
        pan: str,
        *,
        dst_format: str = proto.FORMAT_ISO0,
    ) -> PinTranslation:
        """Z0: an AES DUKPT terminal's format 4 PIN block (BDK + 24-hex KSN) to a ZPK.

        The BDK's length flag follows its LMK form (``U`` + 32H AES-128, + 64H AES-256); the
        PIN key is AES-128, as SPEC's terminals derive it."""
        request = proto.TranslatePinAesDukptToZpk(
            bdk,
            zpk,
            ksn.upper(),
            pin_block.hex().upper(),
            pan,
            dst_format,
            bdk_length=proto.AES_256 if len(bdk) == 65 else proto.AES_128,
        )
        body = _body(request, await self.request(request), proto.PinTranslatedAesDukpt)
        return _translation(body)

    async def verify_pin_pvv(
        self,
        zpk: str,
        pvk: str,
        pin_block: bytes,
        pan: str,
        pvv: str,
        *,
        pvki: str = "1",
        pin_block_format: str = proto.FORMAT_ISO0,
    ) -> bool:
        """EC: does the PIN in the block (under the ZPK) have this Visa PVV?"""
        request = proto.VerifyPinPvv(
            zpk, pvk, pin_block.hex().upper(), pan, pvv, pvki, pin_block_format
        )
        return _verified(request, await self.request(request))

    async def verify_pin_ibm_offset(
        self,
        pin_key: str,
        pvk: str,
        pin_block: bytes,
        pan: str,
        offset: str,
        validation_data: str,
        *,
        under: Literal["tpk", "zpk"] = "zpk",
        check_length: int = 4,
        decimalisation_table: str = "0123456789012345",
        pin_block_format: str = proto.FORMAT_ISO0,
    ) -> bool:
        """DA (``under="tpk"``) / EA (``"zpk"``): IBM 3624 offset verification.

        ``validation_data`` is 12 characters, hex digits and an ``N`` for the last 5 account
        digits; ``offset`` up to 12 digits (padded with F).
        """
        cls = proto.VerifyPinIbmTpk if under == "tpk" else proto.VerifyPinIbmZpk
        request = cls(
            pin_key,
            pvk,
            pin_block.hex().upper(),
            pan,
            offset.ljust(12, "F"),
            validation_data,
            f"{check_length:02d}",
            decimalisation_table,
            pin_block_format,
        )
        return _verified(request, await self.request(request))

    async def generate_cvv(self, cvk: str, pan: str, expiry: str, service_code: str) -> str:
        """CW: the 3-digit CVV (service code 000 for CVV2, 999 for iCVV)."""
        request = proto.GenerateCvv(cvk, pan, expiry, service_code)
        body = _body(request, await self.request(request), proto.CvvResult)
        return body.cvv

    async def verify_cvv(
        self, cvk: str, pan: str, expiry: str, service_code: str, cvv: str
    ) -> bool:
        """CY: is this the card's CVV?"""
        request = proto.VerifyCvv(cvk, cvv, pan, expiry, service_code)
        return _verified(request, await self.request(request))

    async def generate_mac(
        self,
        key: str,
        data: bytes,
        *,
        algorithm: Literal["retail", "cmac"] = "retail",
        key_type: str = "003",
    ) -> bytes:
        """M6: the 8-byte MAC: ISO 9797-1 alg 3 padding 1 (field 64), or AES-CMAC (left 8)."""
        request = proto.GenerateMac(key, data, _mac_algorithm(algorithm), key_type=key_type)
        body = _body(request, await self.request(request), proto.MacResult)
        return bytes.fromhex(body.mac)

    async def verify_mac(
        self,
        key: str,
        data: bytes,
        mac: bytes,
        *,
        algorithm: Literal["retail", "cmac"] = "retail",
        key_type: str = "003",
    ) -> bool:
        """M8: does the 8-byte ``mac`` match ``data``? (A wrong length is simply False.)"""
        if len(mac) != 8:
            return False
        request = proto.VerifyMac(
            key, data, mac.hex().upper(), _mac_algorithm(algorithm), key_type=key_type
        )
        return _verified(request, await self.request(request))

    async def verify_arqc_generate_arpc(
        self,
        mk_ac: str,
        pan: str,
        psn: str | None,
        atc: bytes,
        transaction_data: bytes,
        arqc: bytes,
        arc: bytes = b"00",
    ) -> bytes | None:
        """KQ mode 1: the 8-byte ARPC when the ARQC verifies, else ``None``.

        ``transaction_data`` is the SPEC's concatenation (``hsm_sim.emv.arqc_data``); ``psn``
        is field 23 (3 digits) or the 2-digit PSN, ``None`` meaning ``00``.
        """
        response = await self.request(
            proto.VerifyArqc(mk_ac, _pan_psn(pan, psn), atc, transaction_data, arqc, arc)
        )
        if response.error_code == proto.VERIFICATION_FAILURE:
            return None
        if not response.ok or not isinstance(response.body, proto.ArpcResult):
            raise HsmCommandError("KQ", response.error_code)
        return response.body.arpc

    async def verify_arqc(
        self,
        mk_ac: str,
        pan: str,
        psn: str | None,
        atc: bytes,
        transaction_data: bytes,
        arqc: bytes,
    ) -> bool:
        """KQ mode 0: does the ARQC verify?"""
        request = proto.VerifyArqc(
            mk_ac,
            _pan_psn(pan, psn),
            atc,
            transaction_data,
            arqc,
            mode_flag=proto.ARQC_VERIFY,
        )
        return _verified(request, await self.request(request))


def _body(request: proto.Request, response: proto.HsmResponse, body_type: type[_T]) -> _T:
    """The answer's body, or :class:`HsmCommandError` (a sync check: no coroutine per call)."""
    if not response.ok:
        raise HsmCommandError(request.CODE, response.error_code)
    if not isinstance(response.body, body_type):
        raise HsmCommandError(request.CODE, proto.INVALID_INPUT)
    return response.body


def _verified(request: proto.Request, response: proto.HsmResponse) -> bool:
    """A verification's answer: error ``01`` is False, any other error an HsmCommandError."""
    if response.error_code == proto.VERIFICATION_FAILURE:
        return False
    if not response.ok:
        raise HsmCommandError(request.CODE, response.error_code)
    return True


def _translation(
    body: proto.PinTranslated
    | proto.PinTranslatedZpk
    | proto.PinTranslatedDukpt
    | proto.PinTranslatedAesDukpt,
) -> PinTranslation:
    return PinTranslation(int(body.pin_length), bytes.fromhex(body.pin_block), body.dst_format)


def _mac_algorithm(name: str) -> str:
    return proto.MAC_AES_CMAC if name == "cmac" else proto.MAC_RETAIL


def _pan_psn(pan: str, psn: str | None) -> bytes:
    """KQ's 8-byte PAN/PSN block: EMV option A input (rightmost 16 digits of PAN || PSN)."""
    psn2 = "00" if not psn else psn[-2:]
    digits = (pan + psn2)[-16:].rjust(16, "0")
    if not digits.isdigit() or not digits.isascii():
        raise ValueError("PAN and PAN sequence number must be digits")
    return bytes.fromhex(digits)
