"""One issuer-link connection on asyncio and uvloop: requests are served inside
``data_received``.

The issuer host is synchronous, so nothing here needs a task: each frame that arrives is
decoded, answered and encoded on the spot, and the answers to one read leave in one write. The
frame channel of :mod:`kit.fastio` (a queue, a waiter future and a task wake-up per read,
a coroutine and a ``call_soon`` per answer) cost the simulator more than the host's own work at
the gateway's batch sizes. Trio keeps that channel (:meth:`IssuerServer._connection`).

The server's framing is the link's (``protocols.framing``): SPEC's ``binary2`` is parsed inline
here (the hot path), the others through their framer; with a TPDU framing each answer carries
its request's TPDU with the addresses swapped.

Same rules as the channel path: a header announcing more than ``MAX_FRAME`` bytes (or any
framing error), or a partial
frame without new bytes for the server's ``partial_timeout`` seconds, closes the connection
after the frames before it are answered; zero-length frames are keep-alives; delayed answers
(latency fault) die with their connection; while the peer does not read its answers, its
requests are not read.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from kit.fastio import stream_transport, transport_peer
from kit.logs import get_logger
from protocols.codec import Codec
from protocols.errors import FramingError
from protocols.framing import BINARY2, TPDU_ID, TPDU_SIZE, Framer, Framing, answer_tpdu
from protocols.message import Message


class _Faults(Protocol):
    @property
    def disconnect_after(self) -> int: ...


class Server(Protocol):
    """What a connection asks of its server (``issuer_sim.server.IssuerServer``): a protocol,
    so that the server, which creates connections, is the only one of the two importing the
    other."""

    live: set[LinkConnection]
    partial_timeout: float
    framing: Framing

    @property
    def faults(self) -> _Faults: ...

    def codec_for(self, first: bytes) -> Codec: ...

    def serve_frame(
        self, frame: bytes, codec: Codec | None = None
    ) -> tuple[Message | None, float] | None: ...

    def encode(self, answer: Message, codec: Codec | None = None) -> bytes: ...

    def admit(self, peer: str, der: bytes | None) -> bool: ...


log = get_logger("issuer_sim")

OWN_TPDU = bytes([TPDU_ID, 0, 0, 0, 0])
"""The TPDU of a request of the host's own in a TPDU framing: no addresses to answer to."""

MAX_FRAME = 8192
PARTIAL_TIMEOUT = 30.0


class LinkConnection(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self._transport: asyncio.Transport | None = None
        self._buf = b""
        self._count = 0
        """Frames received (decodable or not): what ``disconnect_after`` counts."""
        self._closing = False
        self._stall: asyncio.TimerHandle | None = None
        self._later: set[asyncio.TimerHandle] = set()
        framing = server.framing
        self._encode = framing.encode
        self._framer: Framer | None = None if framing is BINARY2 else framing.framer(MAX_FRAME)
        self._tpdu = framing.tpdu
        self.codec: Codec | None = None
        """This connection's codec, from its first frame (the server's ``also_accept``)."""

    # -- asyncio callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Called once the TLS handshake is done: the client certificate is known, nothing read.
        self._transport = stream_transport(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not self.server.admit(transport_peer(transport), der):
            self.close()
            return
        self.server.live.add(self)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        if self._framer is not None:
            self._framed_received(self._framer, data)
            return
        buf = self._buf + data if self._buf else data
        size_all = len(buf)
        pos = 0
        out: list[bytes] = []
        close = False
        try:
            while size_all - pos >= 2:
                size = (buf[pos] << 8) | buf[pos + 1]
                if size > MAX_FRAME:
                    close = True  # the stream cannot be resynchronised
                    break
                end = pos + 2 + size
                if end > size_all:
                    break
                frame = buf[pos + 2 : end]
                pos = end
                if not size:
                    continue  # keep-alive
                if self._serve(frame, out):
                    close = True
                    break
        except Exception:
            log.exception("issuer_sim_connection_failed")
            close = True
        self._buf = buf[pos:] if pos < size_all else b""
        self._finish(out, close)

    def _framed_received(self, framer: Framer, data: bytes) -> None:
        """Any framing but ``binary2``: its framer splits the stream."""
        framer.feed(data)
        out: list[bytes] = []
        close = False
        try:
            while (frame := framer.next_frame()) is not None:
                if self._serve(frame, out):
                    close = True
                    break
        except FramingError as exc:
            log.warning("issuer_sim_framing_error", reason=exc.reason)
            close = True  # the stream cannot be resynchronised
        except Exception:
            log.exception("issuer_sim_connection_failed")
            close = True
        self._finish(out, close)

    def _serve(self, frame: bytes, out: list[bytes]) -> bool:
        """Serve one request frame, its answer (if any, and not delayed) appended to ``out``;
        True when the connection is to close after it (``disconnect_after``)."""
        server = self.server
        tpdu = b""
        if self._tpdu:
            tpdu, frame = answer_tpdu(frame[:TPDU_SIZE]), frame[TPDU_SIZE:]
        self._count += 1
        codec = self.codec
        if codec is None:
            codec = self.codec = server.codec_for(frame)
        served = server.serve_frame(frame, codec)
        if served is None:
            return False  # undecodable, logged
        answer, delay_ms = served
        if answer is not None:
            if delay_ms:
                self._answer_later(answer, delay_ms, tpdu)
            else:
                encoded = server.encode(answer, codec)
                out.append(self._encode(tpdu + encoded if tpdu else encoded, MAX_FRAME))
        disconnect_after = server.faults.disconnect_after
        if disconnect_after and self._count >= disconnect_after:
            log.info("issuer_sim_disconnect", after=self._count)
            return True
        return False

    def _finish(self, out: list[bytes], close: bool) -> None:
        transport = self._transport
        if out and transport is not None and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))
        if close:
            self.close()
            return
        self._watch_partial()

    def eof_received(self) -> bool:
        return False  # the peer is done: close

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._cancel_timers()
        self.server.live.discard(self)

    def pause_writing(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and not self._closing:
            self._transport.resume_reading()

    # -- ours ---------------------------------------------------------------------------

    def send(self, payload: bytes) -> bool:
        """A message of our own (the host's 0800) to the acquirer, in the link's framing
        (a TPDU framing: :data:`OWN_TPDU`); False if closed."""
        transport = self._transport
        if self._closing or transport is None or transport.is_closing():
            return False
        transport.write(self._encode(OWN_TPDU + payload if self._tpdu else payload, MAX_FRAME))
        return True

    def close(self) -> None:
        self._closing = True
        self._cancel_timers()
        if self._transport is not None:
            self._transport.close()

    def _cancel_timers(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        for handle in self._later:
            handle.cancel()
        self._later.clear()

    def _watch_partial(self) -> None:
        """Restart the stall timer while part of a frame waits (new bytes restart it)."""
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        framer = self._framer
        if self._buf or (framer is not None and framer.has_partial):
            loop = asyncio.get_running_loop()
            self._stall = loop.call_later(self.server.partial_timeout, self.close)

    def _answer_later(self, answer: Message, delay_ms: float, tpdu: bytes = b"") -> None:
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def send() -> None:
            self._later.discard(handle)
            transport = self._transport
            if self._closing or transport is None or transport.is_closing():
                return
            try:
                encoded = self.server.encode(answer, self.codec)
                transport.write(self._encode(tpdu + encoded, MAX_FRAME))
            except Exception:
                log.exception("issuer_sim_connection_failed")
                self.close()

        handle = loop.call_later(delay_ms / 1000, send)
        self._later.add(handle)
