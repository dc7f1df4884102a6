"""Issuer links over mutual TLS: connect, sign on, echo when idle, match answers, reconnect.

One :class:`IssuerPool` per issuer owns several :class:`IssuerConnection` s and the issuer's
STAN sequence (the switch reissues STANs, so two terminals' STANs never collide at the issuer).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio
from anyio.abc import TaskStatus

from gateway.config import LinkConfig
from kit import fastio
from kit.framed import StalledFrameError
from kit.logs import get_logger
from protocols import keychange
from protocols.business_day import settlement_mmdd
from protocols.codec import Codec
from protocols.errors import LocalProtocolError, ProtocolError
from protocols.framing import get_framing
from protocols.keys import LinkKey, link_key
from protocols.message import Message
from protocols.mti import is_request, response_mti

log = get_logger("gateway.upstream.links")

_LINK_ERRORS = (
    OSError,
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    ssl.SSLError,
    ProtocolError,
    StalledFrameError,
)


class LinkUnavailable(Exception):
    """No signed-on connection to the issuer, or the connection dropped mid-request."""


class IssuerTimeout(Exception):
    """The issuer did not answer within the timeout."""


CUTOVER = "201"
"""Field 70 of the network management message announcing a new business day."""
_NEVER = float("inf")
_last_second: list[tuple[int, str]] = [(-1, "")]


def transmission_time(now: dt.datetime) -> str:
    """Field 7, MMDDhhmmss: formatted once per second (strftime is on every request)."""
    second = int(now.timestamp())
    cached = _last_second[0]
    if cached[0] == second:
        return cached[1]
    text = now.strftime("%m%d%H%M%S")
    _last_second[0] = (second, text)
    return text


class _Pending:
    """One request awaiting its answer. On asyncio a bare future, its timeout kept by the
    connection's single timer (no AnyIO primitive and no timer per request: this is the hot
    path); on trio an AnyIO event."""

    __slots__ = ("_event", "_future", "deadline", "failed", "response")

    def __init__(self, loop: asyncio.AbstractEventLoop | None, deadline: float = 0.0) -> None:
        self.response: Message | None = None
        self.failed = False
        self.deadline = deadline
        self._future: asyncio.Future[None] | None = None
        self._event: anyio.Event | None = None
        if loop is not None:
            self._future = loop.create_future()
        else:
            self._event = anyio.Event()

    def set(self) -> None:
        if self._future is not None:
            if not self._future.done():
                self._future.set_result(None)
        elif self._event is not None:
            self._event.set()

    async def wait(self, timeout: float) -> None:
        """Until answered, failed or (set by the connection's timer) expired; on trio
        returns quietly at the timeout."""
        future = self._future
        if future is None:
            assert self._event is not None
            with anyio.move_on_after(timeout):
                await self._event.wait()
            return
        await future


class IssuerConnection:
    """One TLS connection to an issuer host, with its own pending-request table."""

    def __init__(self, pool: IssuerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.state = "down"
        self.endpoint = ""
        self._framed: fastio.FrameChannel | None = None
        self._pending: dict[LinkKey, _Pending] = {}
        self._last_io = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None  # set on asyncio (fast path)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = _NEVER
        self._tg: anyio.abc.TaskGroup | None = None
        self.connects = 0

    @property
    def up(self) -> bool:
        return self.state == "up"

    async def run(self) -> None:
        cfg = self.pool.cfg
        delay = cfg.backoff_initial
        attempt = 0
        while True:
            endpoint = cfg.endpoints[(self.index + attempt) % len(cfg.endpoints)]
            host, _, port = endpoint.rpartition(":")
            self.endpoint = endpoint
            self.state = "connecting"
            signed_on = False
            try:
                with anyio.fail_after(cfg.sign_on_timeout):
                    channel = await fastio.connect(
                        host,
                        int(port),
                        ssl_context=self.pool.ssl_context,
                        server_hostname=cfg.server_name or f"issuer-{cfg.issuer}",
                        max_size=8192,
                        partial_timeout=max(cfg.timeout, 5.0),
                        framing=get_framing(cfg.framing),
                        tpdu=bytes.fromhex(cfg.tpdu),
                    )
            except (*_LINK_ERRORS, TimeoutError) as exc:
                log.warning(
                    "link_connect_failed",
                    issuer=cfg.issuer,
                    conn=self.index,
                    endpoint=endpoint,
                    error=type(exc).__name__,
                )
            else:
                self.connects += 1
                signed_on = await self._serve(channel)
            self.state = "down"
            self.pool.on_state_change()
            if signed_on:
                delay, attempt = cfg.backoff_initial, 0
            else:
                attempt += 1
            await anyio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, cfg.backoff_max)

    async def _serve(self, framed: fastio.FrameChannel) -> bool:
        cfg = self.pool.cfg
        self._framed = framed
        self._loop = asyncio.get_running_loop() if fastio.fast_path() else None
        self._last_io = time.monotonic()
        self.state = "signing_on"
        signed_on = False
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._read_loop, framed, tg.cancel_scope)
                answer = await self._exchange(self.pool.network_message("001"), cfg.sign_on_timeout)
                if answer.get("39") != "00":
                    log.warning(
                        "link_sign_on_refused",
                        issuer=cfg.issuer,
                        conn=self.index,
                        rc=answer.get("39"),
                    )
                    tg.cancel_scope.cancel()
                    return False
                signed_on = True
                first = not self.pool.ready  # the link's first connection up: a sign-on
                self.state = "up"
                self.pool.on_state_change()
                log.info("link_up", issuer=cfg.issuer, conn=self.index, endpoint=self.endpoint)
                tg.start_soon(self._echo_loop, tg.cancel_scope)
                if first and self.pool.on_sign_on is not None:
                    tg.start_soon(self.pool.on_sign_on)
        except (*_LINK_ERRORS, IssuerTimeout, LinkUnavailable) as exc:
            log.warning("link_down", issuer=cfg.issuer, conn=self.index, error=type(exc).__name__)
        finally:
            self.state = "down"
            self._framed = None
            self._tg = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer, self._timer_at = None, _NEVER
            for pending in self._pending.values():
                pending.failed = True
                pending.set()
            self._pending.clear()
            with anyio.CancelScope(shield=True):
                await framed.aclose()
        return signed_on

    async def _read_loop(self, framed: fastio.FrameChannel, scope: anyio.CancelScope) -> None:
        codec = self.pool.codec
        try:
            while True:
                frame = await framed.receive_frame()
                self._last_io = time.monotonic()
                try:
                    msg = codec.decode(frame)
                except ProtocolError as exc:
                    log.warning("link_bad_message", issuer=self.pool.cfg.issuer, reason=str(exc))
                    continue
                if is_request(msg.mti):
                    await self._answer_peer_request(msg)
                    continue
                pending = self._pending.pop(link_key(msg), None)
                if pending is None:
                    self.pool.on_unmatched(msg)
                else:
                    pending.response = msg
                    pending.set()
        except _LINK_ERRORS as exc:
            log.warning(
                "link_read_ended",
                issuer=self.pool.cfg.issuer,
                conn=self.index,
                error=type(exc).__name__,
            )
        finally:
            scope.cancel()

    async def _answer_peer_request(self, msg: Message) -> None:
        # An issuer may echo us or change keys too: answer network management, refuse the rest.
        if msg.mti != "0800" or self._framed is None:
            log.warning("link_unexpected_request", issuer=self.pool.cfg.issuer, mti=msg.mti)
            return
        if keychange.is_key_change(msg):
            # Its own task: the import awaits the HSM, and a key change of ours may be waiting
            # on this very read loop for its 0810.
            if self._tg is not None:
                self._tg.start_soon(self._answer_key_change, msg)
            return
        reply = Message(
            response_mti(msg.mti),
            {k: v for k, v in msg.fields.items() if k in ("7", "11", "15", "70")},
        )
        reply["39"] = "00"
        if msg.fields.get("70") == CUTOVER:
            # The issuer's business day moved: acknowledged in kind. Ours moves at our own
            # cutover ([switch]); a transaction keeps the date it was received on.
            log.info(
                "link_cutover_received", issuer=self.pool.cfg.issuer, date=msg.fields.get("15")
            )
            self.pool.cutovers_received += 1
        await self._framed.send_frame(self.pool.codec.encode(reply))

    async def _answer_key_change(self, msg: Message) -> None:
        key_change = self.pool.on_key_change
        if key_change is None:
            reply = keychange.answer(msg, keychange.REFUSED)
        else:
            reply = await key_change(msg)
        framed = self._framed
        if framed is not None:
            try:
                await framed.send_frame(self.pool.codec.encode(reply))
            except _LINK_ERRORS:
                log.warning("link_key_change_answer_lost", issuer=self.pool.cfg.issuer)

    async def _echo_loop(self, scope: anyio.CancelScope) -> None:
        interval = self.pool.cfg.echo_interval
        while True:
            idle = time.monotonic() - self._last_io
            if idle < interval:
                await anyio.sleep(interval - idle)
                continue
            try:
                await self._exchange(self.pool.network_message("301"), self.pool.cfg.timeout)
            except (IssuerTimeout, LinkUnavailable, *_LINK_ERRORS):
                log.warning("link_echo_failed", issuer=self.pool.cfg.issuer, conn=self.index)
                scope.cancel()
                return

    async def _exchange(self, msg: Message, timeout: float) -> Message:
        framed = self._framed
        if framed is None:
            raise LinkUnavailable(self.pool.cfg.issuer)
        key = link_key(msg)
        if key in self._pending:
            raise LocalProtocolError("duplicate link key in flight")
        loop = self._loop
        if loop is None:
            pending = _Pending(None)
        else:
            deadline = loop.time() + timeout
            pending = _Pending(loop, deadline)
            if deadline < self._timer_at:
                self._arm(loop, deadline)
        self._pending[key] = pending
        try:
            await framed.send_frame(self.pool.codec.encode(msg))
            self._last_io = time.monotonic()
            await pending.wait(timeout)
        except _LINK_ERRORS as exc:
            raise LinkUnavailable(self.pool.cfg.issuer) from exc
        finally:
            self._pending.pop(key, None)
        if pending.response is not None:
            return pending.response
        if pending.failed:
            raise LinkUnavailable(self.pool.cfg.issuer)
        raise IssuerTimeout(self.pool.cfg.issuer)

    async def request(self, msg: Message, timeout: float) -> Message:
        return await self._exchange(msg, timeout)

    # -- timeouts on asyncio: one timer per connection, at the earliest deadline ------------

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = loop.call_at(when, self._expire, loop, when)

    def _expire(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        """Wake what is due (as its own timer would have: at ``when``, or already late);
        re-arm for the earliest deadline left. Answered requests have left the table."""
        self._timer, self._timer_at = None, _NEVER
        due = max(when, loop.time())
        nearest = _NEVER
        for pending in self._pending.values():
            deadline = pending.deadline
            if deadline <= due:
                pending.set()  # no response, not failed: the waiter raises IssuerTimeout
            elif deadline < nearest:
                nearest = deadline
        if nearest < _NEVER:
            self._arm(loop, nearest)


class IssuerPool:
    """All connections to one issuer; hands requests to a signed-on one, round robin."""

    def __init__(
        self,
        cfg: LinkConfig,
        codec: Codec,
        ssl_context: ssl.SSLContext,
        *,
        clock: Callable[[], dt.datetime],
        on_unmatched: Callable[[str, Message], None] | None = None,
        on_state: Callable[[IssuerPool], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.codec = codec
        self.ssl_context = ssl_context
        self.clock = clock
        self.connections = [IssuerConnection(self, i) for i in range(cfg.connections)]
        self._stan = random.randrange(999999)
        self._rr = 0
        self._on_unmatched = on_unmatched
        self._on_state = on_state
        self.cutovers_received = 0
        """0800/201 the issuer sent us (answered 00)."""
        self.on_sign_on: Callable[[], Coroutine[Any, Any, Any]] | None = None
        """Run when the link signs on (its first connection up): the key exchange."""
        self.on_key_change: Callable[[Message], Awaitable[Message]] | None = None
        """Answers the issuer's key-change 0800 (``protocols.keychange``); None: refused."""
        self.key_status: Callable[[], dict[str, Any]] | None = None
        """The link's key lifecycle for :meth:`status` (generation, KCVs, changes)."""

    @property
    def issuer(self) -> str:
        return self.cfg.issuer

    def next_stan(self) -> str:
        self._stan = self._stan % 999999 + 1
        return f"{self._stan:06d}"

    def network_message(self, code: str) -> Message:
        return Message(
            "0800", {"7": transmission_time(self.clock()), "11": self.next_stan(), "70": code}
        )

    @property
    def ready(self) -> bool:
        return any(c.up for c in self.connections)

    def on_state_change(self) -> None:
        if self._on_state is not None:
            self._on_state(self)

    def on_unmatched(self, msg: Message) -> None:
        if self._on_unmatched is not None:
            self._on_unmatched(self.cfg.issuer, msg)
        else:
            log.warning("link_unmatched_response", issuer=self.cfg.issuer, mti=msg.mti)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            for conn in self.connections:
                tg.start_soon(conn.run)
            task_status.started()

    async def request(self, msg: Message, timeout: float) -> Message:
        conns = self.connections
        n = len(conns)
        for i in range(n):
            conn = conns[(self._rr + i) % n]
            if conn.up:
                self._rr = (self._rr + i + 1) % n
                return await conn.request(msg, timeout)
        raise LinkUnavailable(self.cfg.issuer)

    async def cutover(self, day: dt.date, timeout: float) -> str | None:
        """Announce business date ``day``: 0800/201 (field 15 = ``day`` on a link that sends
        settlement dates) on one signed-on connection, the next one if it fails. The answer's
        field 39, or None when no connection answered."""
        msg = self.network_message(CUTOVER)
        if self.cfg.send_settlement_date:
            msg["15"] = settlement_mmdd(day)
        for conn in list(self.connections):
            if not conn.up:
                continue
            try:
                answer = await conn.request(msg, timeout)
            except (IssuerTimeout, LinkUnavailable, *_LINK_ERRORS):
                msg = Message(msg.mti, {**msg.fields, "11": self.next_stan()})
                continue
            return answer.fields.get("39", "")
        return None

    async def sign_off(self, timeout: float = 1.0) -> None:
        """Graceful shutdown: 0800/002 on every signed-on connection, which then takes no
        more requests (errors and silence are ignored: we are leaving anyway)."""

        async def one(conn: IssuerConnection) -> None:
            try:
                await conn.request(self.network_message("002"), timeout)
            except (IssuerTimeout, LinkUnavailable, *_LINK_ERRORS):
                pass
            conn.state = "signed_off"

        async with anyio.create_task_group() as tg:
            for conn in self.connections:
                if conn.up:
                    tg.start_soon(one, conn)
        self.on_state_change()

    def status(self) -> dict[str, Any]:
        return {
            "issuer": self.cfg.issuer,
            "ready": self.ready,
            "connections": [
                {"index": c.index, "state": c.state, "endpoint": c.endpoint, "connects": c.connects}
                for c in self.connections
            ],
            "key_lifecycle": None if self.key_status is None else self.key_status(),
        }
