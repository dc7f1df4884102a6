"""Terminal listeners (TCP and TLS) and the driver loop of each terminal connection."""

from __future__ import annotations

import ssl

import anyio

from gateway.fastio import FrameChannel
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
        """The connection's driver loop: the only code awaiting this terminal's bytes."""
        gauge = self.metrics.connections.labels(listener_name)
        gauge.inc()
        peer = channel.peer
        in_flight = anyio.Semaphore(self.max_in_flight)
        try:
            async with anyio.create_task_group() as tg:
                while True:
                    try:
                        frame = await channel.receive_frame()
                    except anyio.EndOfStream:
                        break
                    except FramingError as exc:
                        self.metrics.rejected.labels("framing").inc()
                        log.warning("terminal_framing_error", peer=peer, reason=exc.reason)
                        break
                    except StalledFrameError as exc:
                        self.metrics.rejected.labels("stalled").inc()
                        log.warning("terminal_stalled", peer=peer, reason=str(exc))
                        break
                    except (*_GONE, ssl.SSLError):
                        break
                    await in_flight.acquire()  # back-pressure: stop reading when full
                    tg.start_soon(self._process, channel, frame, in_flight, peer)
        except Exception:
            log.exception("terminal_connection_failed", peer=peer)
        finally:
            gauge.dec()
            with anyio.CancelScope(shield=True):
                await channel.aclose()

    async def _process(
        self, channel: FrameChannel, frame: bytes, in_flight: anyio.Semaphore, peer: str
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
                resp = await self.switch.handle(req)
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
