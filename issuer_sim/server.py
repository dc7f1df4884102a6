"""The issuer simulator's mutual-TLS server, with fault injection for tests and demos."""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import ssl
from dataclasses import dataclass

import anyio
from anyio.abc import TaskStatus

from gateway import fastio
from gateway.framed import StalledFrameError
from gateway.logs import get_logger
from issuer_sim.host import IssuerHost
from protocols.dialects import get_dialect
from protocols.errors import ProtocolError
from protocols.fastcodec import best_codec
from protocols.message import Message

log = get_logger("issuer_sim")

_GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError)


@dataclass(slots=True)
class LiveFaults:
    """Mutable at run time (tests flip them); starts from the config."""

    latency_ms: float = 0.0
    drop_ratio: float = 0.0
    disconnect_after: int = 0
    apply_to_network: bool = False


class IssuerServer:
    def __init__(
        self,
        host: IssuerHost,
        ssl_context: ssl.SSLContext | None,
        *,
        faults: LiveFaults | None = None,
        bind: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.host = host
        self.ssl_context = ssl_context
        self.faults = faults or LiveFaults()
        self.bind = bind
        self.port = port
        self.codec = best_codec(get_dialect("terminal"))
        self.received = 0
        self.by_mti: dict[str, int] = {}
        self._scope: anyio.CancelScope | None = None

    async def run(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.CancelScope() as scope:
            self._scope = scope
            async with anyio.create_task_group() as tg:
                self.port = await fastio.serve(
                    tg,
                    self._connection,
                    host=self.bind,
                    port=self.port,
                    ssl_context=self.ssl_context,
                    max_size=8192,
                    partial_timeout=30.0,
                )
                log.info("issuer_sim_started", issuer=self.host.book.issuer, port=self.port)
                task_status.started(self.port)

    def stop(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    async def _connection(self, framed: fastio.FrameChannel) -> None:
        count = 0
        try:
            async with anyio.create_task_group() as tg:
                while True:
                    try:
                        frame = await framed.receive_frame()
                    except (*_GONE, ProtocolError, StalledFrameError, ssl.SSLError):
                        break
                    count += 1
                    faults = self.faults
                    try:
                        msg = self.codec.decode(frame)
                    except ProtocolError as exc:
                        log.warning("issuer_sim_bad_message", reason=str(exc))
                        continue
                    self.received += 1
                    self.by_mti[msg.mti] = self.by_mti.get(msg.mti, 0) + 1
                    answer = self.host.handle(msg, dt.datetime.now(dt.UTC))
                    faulty = msg.mti != "0800" or faults.apply_to_network
                    if faulty and faults.drop_ratio and random.random() < faults.drop_ratio:
                        pass  # processed, but the answer is lost
                    elif faulty and faults.latency_ms:
                        tg.start_soon(self._answer_later, framed, answer, faults.latency_ms)
                    else:
                        await framed.send_frame(self._encode(answer))
                    if faults.disconnect_after and count >= faults.disconnect_after:
                        log.info("issuer_sim_disconnect", after=count)
                        break
                tg.cancel_scope.cancel()
        except _GONE:
            pass
        except Exception:
            log.exception("issuer_sim_connection_failed")
        finally:
            with anyio.CancelScope(shield=True):
                await framed.aclose()

    def _encode(self, answer: Message) -> bytes:
        # A MACed answer was encoded when it was sealed: reuse those bytes.
        security = self.host.book.security
        if security is not None and security.codec.spec is self.codec.spec:
            frame = security.take_encoded(answer)
            if frame is not None:
                return frame
        return self.codec.encode(answer)

    async def _answer_later(
        self, framed: fastio.FrameChannel, answer: Message, delay_ms: float
    ) -> None:
        await anyio.sleep(delay_ms / 1000)
        with contextlib.suppress(*_GONE):
            await framed.send_frame(self._encode(answer))
