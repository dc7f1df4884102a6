"""The HSM simulator's network service: a thin TCP (optionally TLS) listener.

Bytes go through the length-prefix framer, each whole command through
:class:`~hsm_sim.core.HsmCore`, and every response produced from one read is written back in
a single write, so pipelined clients get batched answers. Answers on a connection come back in
request order here, but clients must match them by header (SPEC allows any order). On asyncio
(and uvloop) a connection is an ``asyncio.Protocol`` that answers from ``data_received``, with
the loop's native TLS: no task, stream or cancel scope per read, which on this hardware was
most of the HSM's CPU per command. On trio each connection has an AnyIO driver loop. Nothing
logged here carries key, PIN or PIN block material: only addresses, counts, command codes and
error codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import anyio
import anyio.abc
import sniffio
import structlog
from anyio.streams.tls import TLSAttribute, TLSListener

from hsm_sim.config import HsmConfig
from hsm_sim.core import CoreStatistics, HsmCore
from kit.admission import Admission
from kit.fastio import Watchdog
from kit.framed import Deadlines, StalledFrameError
from kit.logs import PeerWarnings, peer_host
from kit.pki import client_allowed
from protocols.errors import FramingError
from protocols.framing import Framer, encode_frame

log = structlog.get_logger("hsm_sim.server")

_READ_SIZE = 65536
_MAX_RESPONSE = 0xFFFF


@dataclass(frozen=True, slots=True)
class ServerStatistics:
    """Connection and command counters of a running server."""

    connections_open: int
    connections_total: int
    connections_refused: int
    frames: int
    core: CoreStatistics
    closed_by_limit: dict[str, int]
    """Connections refused or closed by a limit, by reason: ``address_not_allowed``,
    ``client_not_allowed``, ``max_connections``, ``max_per_address``, ``idle``, ``stalled``."""


class HsmServer:
    """Serves host commands on one listener until cancelled.

    ``await tg.start(server.serve)`` returns once the socket listens; ``server.port`` then
    holds the bound port (useful with port 0).
    """

    def __init__(self, config: HsmConfig, core: HsmCore | None = None) -> None:
        self.config = config
        self.core = (
            core
            if core is not None
            else HsmCore(
                config.load_lmk(),
                firmware=config.firmware,
                disabled_commands=config.disabled_commands,
            )
        )
        self._ssl: ssl.SSLContext | None = config.server_ssl_context()
        self.port: int | None = None
        self._networks = config.networks()
        self._admission = Admission(
            config.max_connections, config.max_connections_per_client, self._refuse
        )
        self._warnings = PeerWarnings(log)
        self._limits: Counter[str] = Counter()
        self._total = 0
        self._refused = 0
        self._frames = 0

    def statistics(self) -> ServerStatistics:
        return ServerStatistics(
            self._admission.open,
            self._total,
            self._refused,
            self._frames,
            self.core.statistics(),
            dict(self._limits),
        )

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve until cancelled; reports the bound port through ``task_status``."""
        if sniffio.current_async_library() == "asyncio":
            await self._serve_asyncio(task_status)
            return
        listener: anyio.abc.Listener[anyio.abc.ByteStream]
        tcp = await anyio.create_tcp_listener(
            local_host=self.config.host, local_port=self.config.port, reuse_port=False
        )
        self.port = int(tcp.extra(anyio.abc.SocketAttribute.local_port))
        listener = tcp
        if self._ssl is not None:
            assert self.config.tls is not None
            listener = TLSListener(
                tcp,
                self._ssl,
                standard_compatible=False,
                handshake_timeout=self.config.tls.handshake_timeout,
            )
        self._log_listening()
        async with listener:
            task_status.started(self.port)
            await listener.serve(self._handle)

    def _log_listening(self) -> None:
        log.info(
            "hsm.listening",
            host=self.config.host,
            port=self.port,
            tls=self._ssl is not None,
            lmk_kcv=self.core.lmk.check_value(),
        )

    async def _serve_asyncio(self, task_status: anyio.abc.TaskStatus[int]) -> None:
        loop = asyncio.get_running_loop()
        connections: set[_HsmProtocol] = set()
        server = await loop.create_server(
            lambda: _HsmProtocol(self, connections),
            self.config.host,
            self.config.port,
            ssl=self._ssl,
            reuse_address=True,
            ssl_handshake_timeout=self.config.tls.handshake_timeout
            if self.config.tls is not None
            else None,
        )
        try:
            self.port = int(server.sockets[0].getsockname()[1])
            self._log_listening()
            task_status.started(self.port)
            await anyio.sleep_forever()
        finally:
            server.close()
            for conn in list(connections):
                conn.close("server stopping")

    def _admit(self, peer: str, der: bytes | None) -> bool:
        """Count a new connection, or say why it is refused (the caller closes it)."""
        if not self._address_allowed(peer):
            self._refuse(peer, "address_not_allowed")
            return False
        if self.config.tls is not None and not client_allowed(self.config.tls.allowed_clients, der):
            self._refuse(peer, "client_not_allowed")
            return False
        if not self._admission.admit(peer):
            return False
        self._total += 1
        log.info("hsm.connected", peer=peer)
        return True

    def _address_allowed(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer_host(peer))
        except ValueError:
            return False
        return any(address in network for network in self._networks)

    def _refuse(self, peer: str, reason: str) -> None:
        self._refused += 1
        self._limited(peer, reason, "hsm.connection_refused")

    def _limited(self, peer: str, reason: str, event: str) -> None:
        """Counted by reason; a warning rate-limited per client address (a flood of refused
        connections must not flood the log)."""
        self._limits[reason] += 1
        self._warnings.warning(event, peer, reason=reason)

    def _expired(self, peer: str, reason: str) -> str:
        """A time limit closed ``peer``'s connection (``idle``, ``stalled``); the reason."""
        self._limited(peer, reason, "hsm.connection_timeout")
        return reason

    def _closed(self, peer: str, reason: str) -> None:
        self._admission.release(peer)
        log.info("hsm.disconnected", peer=peer, reason=reason)

    async def _handle(self, stream: anyio.abc.ByteStream) -> None:
        peer = _peer(stream)
        async with stream:
            der = (
                stream.extra(TLSAttribute.peer_certificate_binary, None)
                if self.config.tls is not None
                else None
            )
            if not self._admit(peer, der):
                return
            reason = "closed"
            try:
                reason = await self._drive(stream, peer)
            finally:
                self._closed(peer, reason)

    async def _drive(self, stream: anyio.abc.ByteStream, peer: str) -> str:
        """The connection's loop; returns why it ended."""
        framer = Framer(self.config.max_frame)
        process = self.core.process
        while True:
            try:
                limit = self.config.partial_frame_timeout if framer.has_partial else None
                with anyio.fail_after(limit or self.config.idle_timeout):
                    data = await stream.receive(_READ_SIZE)
            except TimeoutError:
                return self._expired(peer, "stalled" if framer.has_partial else "idle")
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return "closed by peer"
            except (OSError, ssl.SSLError) as exc:
                return f"read error: {type(exc).__name__}"
            out, broken = _answer(framer, process, data)
            self._frames += len(out)
            if out:
                try:
                    await stream.send(b"".join(out))
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    return "write failed"
            if broken is not None:
                return broken


def _answer(
    framer: Framer, process: Callable[[bytes], bytes], data: bytes
) -> tuple[list[bytes], str | None]:
    """The framed answers to the complete commands ``data`` brings, and why the connection
    must end (a framing error) or None; both connection drivers write the answers at once."""
    framer.feed(data)
    out: list[bytes] = []
    try:
        while (frame := framer.next_frame()) is not None:
            out.append(encode_frame(process(frame), _MAX_RESPONSE))
    except FramingError as exc:
        return out, f"framing error: {exc.reason}"
    return out, None


def _peer(stream: anyio.abc.ByteStream) -> str:
    try:
        addr = stream.extra(anyio.abc.SocketAttribute.remote_address)
    except anyio.TypedAttributeLookupError:
        return "?"
    if isinstance(addr, tuple):
        return f"{addr[0]}:{addr[1]}"
    return str(addr)


class _HsmProtocol(asyncio.Protocol):
    """One connection on asyncio: commands answered as they are read."""

    def __init__(self, server: HsmServer, connections: set[_HsmProtocol]) -> None:
        self.server = server
        self.connections = connections
        self.peer = "?"
        self.reason = "closed by peer"
        self._framer = Framer(server.config.max_frame)
        self._process = server.core.process
        self._transport: asyncio.Transport | None = None
        self._admitted = False
        self._watchdog: Watchdog | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = cast(asyncio.Transport, transport)
        address = transport.get_extra_info("peername")
        if isinstance(address, tuple):
            self.peer = f"{address[0]}:{address[1]}"
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        der = None
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            der = ssl_object.getpeercert(binary_form=True)
        if not self.server._admit(self.peer, der):
            transport.close()
            return
        self._admitted = True
        self.connections.add(self)
        config = self.server.config
        deadlines = Deadlines(config.partial_frame_timeout, idle_timeout=config.idle_timeout)
        self._watchdog = Watchdog(
            asyncio.get_running_loop(), deadlines, self._framer, self._timed_out
        )

    def data_received(self, data: bytes) -> None:
        if not self._admitted or self._transport is None:
            return
        out, broken = _answer(self._framer, self._process, data)
        self.server._frames += len(out)
        if out:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))
        if broken is not None:
            self.close(broken)
        elif self._watchdog is not None:
            self._watchdog.read(bool(out))

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        # The client does not read its answers: stop reading its commands (back-pressure).
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def close(self, reason: str) -> None:
        self.reason = reason
        if self._transport is not None:
            self._transport.close()

    def _timed_out(self, expired: Exception) -> None:
        reason = "stalled" if isinstance(expired, StalledFrameError) else "idle"
        self.close(self.server._expired(self.peer, reason))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()
        if not self._admitted:
            return
        self._admitted = False
        self.connections.discard(self)
        if exc is not None and self.reason == "closed by peer":
            self.reason = f"read error: {type(exc).__name__}"
        self.server._closed(self.peer, self.reason)
