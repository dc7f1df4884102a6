"""The HSM simulator's network service: a thin AnyIO TCP (optionally TLS) listener.

Each connection has one driver loop: bytes go through the length-prefix framer, each whole
command through :class:`~hsm_sim.core.HsmCore`, and every response produced from one read is
written back in a single send, so pipelined clients get batched answers. Answers on a
connection come back in request order here, but clients must match them by header (SPEC
allows any order). Nothing logged here carries key, PIN or PIN block material: only
addresses, counts, command codes and error codes.
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass

import anyio
import anyio.abc
import structlog
from anyio.streams.tls import TLSAttribute, TLSListener
from cryptography import x509
from cryptography.x509.oid import NameOID

from hsm_sim.config import HsmConfig
from hsm_sim.core import CoreStatistics, HsmCore
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


def certificate_identity(der: bytes) -> tuple[str | None, str]:
    """(subject CN or None, ``sha256:`` + upper-case hex fingerprint) of a DER certificate."""
    cert = x509.load_der_x509_certificate(der)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(names[0].value) if names else None
    return cn, "sha256:" + hashlib.sha256(der).hexdigest().upper()


def client_allowed(allowed: tuple[str, ...], der: bytes | None) -> bool:
    """True when the allow-list is empty or names the certificate's CN or fingerprint."""
    if not allowed:
        return True
    if der is None:
        return False
    cn, fingerprint = certificate_identity(der)
    wanted = {a.replace(":", "").upper() if a.lower().startswith("sha256") else a for a in allowed}
    return cn in wanted or fingerprint.replace(":", "").upper() in wanted


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
        self._open = 0
        self._total = 0
        self._refused = 0
        self._frames = 0

    def statistics(self) -> ServerStatistics:
        return ServerStatistics(
            self._open, self._total, self._refused, self._frames, self.core.statistics()
        )

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve until cancelled; reports the bound port through ``task_status``."""
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
        log.info(
            "hsm.listening",
            host=self.config.host,
            port=self.port,
            tls=self._ssl is not None,
            lmk_kcv=self.core.lmk.check_value(),
        )
        async with listener:
            task_status.started(self.port)
            await listener.serve(self._handle)

    async def _handle(self, stream: anyio.abc.ByteStream) -> None:
        peer = _peer(stream)
        async with stream:
            if self._open >= self.config.max_connections:
                self._refused += 1
                log.warning("hsm.connection_refused", peer=peer, reason="max_connections")
                return
            if self.config.tls is not None and not client_allowed(
                self.config.tls.allowed_clients,
                stream.extra(TLSAttribute.peer_certificate_binary, None),
            ):
                self._refused += 1
                log.warning("hsm.connection_refused", peer=peer, reason="client not allowed")
                return
            self._open += 1
            self._total += 1
            log.info("hsm.connected", peer=peer)
            try:
                reason = await self._drive(stream)
            finally:
                self._open -= 1
            log.info("hsm.disconnected", peer=peer, reason=reason)

    async def _drive(self, stream: anyio.abc.ByteStream) -> str:
        """The connection's loop; returns why it ended."""
        framer = Framer(self.config.max_frame)
        process = self.core.process
        while True:
            try:
                if framer.has_partial:
                    with anyio.fail_after(self.config.partial_frame_timeout):
                        data = await stream.receive(_READ_SIZE)
                else:
                    data = await stream.receive(_READ_SIZE)
            except TimeoutError:
                return "partial frame timeout"
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return "closed by peer"
            except (OSError, ssl.SSLError) as exc:
                return f"read error: {type(exc).__name__}"
            framer.feed(data)
            out: list[bytes] = []
            broken = None
            try:
                while (frame := framer.next_frame()) is not None:
                    out.append(encode_frame(process(frame), _MAX_RESPONSE))
            except FramingError as exc:
                broken = f"framing error: {exc.reason}"
            self._frames += len(out)
            if out:
                try:
                    await stream.send(b"".join(out))
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    return "write failed"
            if broken is not None:
                return broken


def _peer(stream: anyio.abc.ByteStream) -> str:
    try:
        addr = stream.extra(anyio.abc.SocketAttribute.remote_address)
    except anyio.TypedAttributeLookupError:
        return "?"
    if isinstance(addr, tuple):
        return f"{addr[0]}:{addr[1]}"
    return str(addr)
