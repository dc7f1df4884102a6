"""Terminal listeners (TCP and TLS) and the driver loop of each terminal connection."""

from __future__ import annotations

import asyncio
import ssl

import anyio

from gateway.fastio import FrameChannel, fast_path
from gateway.framed import StalledFrameError
from gateway.logs import get_logger
from gateway.metrics import Metrics
from gateway.switch import Switch
from protocols.codec import Codec, MessageFormatError, UndecodableError
from protocols.errors import FramingError, LocalProtocolError
from protocols.message import Message

log = get_logger("gateway.terminals")

_GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError)


class TerminalServer:
    def __init__(
        self,
        switch: Switch,
        codec: Codec,
        metrics: Metrics,
        *,
        max_frame: int,
        partial_timeout: float,
        max_in_flight: int,
    ) -> None:
        self.switch = switch
        self.codec = codec
        self.metrics = metrics
        self.max_frame = max_frame
        self.partial_timeout = partial_timeout
        self.max_in_flight = max_in_flight

    async def handle_connection(self, channel: FrameChannel, listener_name: str) -> None:
        """The connection's driver loop: the only code awaiting this terminal's bytes.

        Each request runs in its own task so a host may pipeline, at most ``max_in_flight``
        at once (then reading pauses: back-pressure). On asyncio the per-request tasks live in
        an ``asyncio.TaskGroup`` with an ``asyncio.Semaphore``: measured here at ≈4 µs per
        request against ≈57 µs for AnyIO's ``start_soon`` + ``Semaphore``; on trio, AnyIO's.
        """
        gauge = self.metrics.connections.labels(listener_name)
        gauge.inc()
        try:
            if fast_path():
                await self._drive_asyncio(channel)
            else:
                await self._drive_anyio(channel)
        except Exception:
            log.exception("terminal_connection_failed", peer=channel.peer)
        finally:
            gauge.dec()
            with anyio.CancelScope(shield=True):
                await channel.aclose()

    async def _next_frame(self, channel: FrameChannel) -> bytes | None:
        """The next request frame, or ``None`` when this connection is over."""
        try:
            return await channel.receive_frame()
        except anyio.EndOfStream:
            return None
        except FramingError as exc:
            self.metrics.rejected.labels("framing").inc()
            log.warning("terminal_framing_error", peer=channel.peer, reason=exc.reason)
        except StalledFrameError as exc:
            self.metrics.rejected.labels("stalled").inc()
            log.warning("terminal_stalled", peer=channel.peer, reason=str(exc))
        except (*_GONE, ssl.SSLError):
            pass
        return None

    async def _drive_asyncio(self, channel: FrameChannel) -> None:
        in_flight = asyncio.Semaphore(self.max_in_flight)
        async with asyncio.TaskGroup() as tg:
            while (frame := await self._next_frame(channel)) is not None:
                await in_flight.acquire()
                tg.create_task(self._process(channel, frame, in_flight, channel.peer))

    async def _drive_anyio(self, channel: FrameChannel) -> None:
        in_flight = anyio.Semaphore(self.max_in_flight)
        async with anyio.create_task_group() as tg:
            while (frame := await self._next_frame(channel)) is not None:
                await in_flight.acquire()
                tg.start_soon(self._process, channel, frame, in_flight, channel.peer)

    async def _process(
        self,
        channel: FrameChannel,
        frame: bytes,
        in_flight: anyio.Semaphore | asyncio.Semaphore,
        peer: str,
    ) -> None:
        try:
            try:
                req = self.codec.decode(frame)
            except MessageFormatError as exc:
                resp = self.switch.format_error_response(exc)
            except UndecodableError as exc:
                self.metrics.rejected.labels("undecodable").inc()
                log.warning("terminal_undecodable", peer=peer, reason=str(exc))
                return
            else:
                resp = await self.switch.handle(req, frame)
            if resp is None:
                return
            try:
                data = self.codec.encode(resp)
            except LocalProtocolError:
                log.exception("response_encode_failed", mti=resp.mti)
                data = self.codec.encode(Message(resp.mti, {"39": "96"}))
            await channel.send_frame(data)
        except _GONE:
            pass  # the terminal went away; its answer has nowhere to go
        except Exception:
            log.exception("terminal_request_failed", peer=peer)
        finally:
            in_flight.release()
