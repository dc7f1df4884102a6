"""The issuer simulator's mutual-TLS server, with fault injection for tests and demos."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import itertools
import random
import signal
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus
from anyio.streams.tls import TLSAttribute

from issuer_sim import keys
from issuer_sim.connection import MAX_FRAME, OWN_TPDU, PARTIAL_TIMEOUT, LinkConnection
from issuer_sim.host import IssuerHost
from issuer_sim.linkmac import link_mac_field
from issuer_sim.postings import Snapshot, rows_of, write_csv
from kit import fastio
from kit.framed import FramedStream, StalledFrameError
from kit.logs import PeerWarnings, get_logger
from kit.pki import certificate_identity, client_allowed
from protocols import keychange
from protocols.codec import Codec
from protocols.dialects import get_dialect
from protocols.errors import ProtocolError
from protocols.fastcodec import best_codec
from protocols.framing import BINARY2, TPDU_SIZE, Framing, answer_tpdu
from protocols.message import Message
from protocols.mti import is_request
from protocols.translate import Fallback

log = get_logger("issuer_sim")

_SNAPSHOT_CHUNK = 20_000
_GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError)


@dataclass(slots=True)
class LiveFaults:
    """Mutable at run time (tests flip them); starts from the config."""

    latency_ms: float = 0.0
    drop_ratio: float = 0.0
    disconnect_after: int = 0
    apply_to_network: bool = False
    bad_mac_ratio: float = 0.0


def fallback_logger(issuer: str) -> Callable[[Fallback], None]:
    """Log a code the host's translation table lacks (protocols.translate)."""

    def report(fb: Fallback) -> None:
        log.warning(
            "issuer_sim_translation_fallback",
            issuer=issuer,
            direction=fb.direction,
            field=fb.field,
            code=fb.code,
            used=fb.used,
        )

    return report


def corrupt_mac(answer: Message) -> Message:
    """A copy of ``answer`` whose link MAC is wrong (one bit flipped); unchanged without one.
    A copy: the host keeps the answer for retransmissions, and the sealed bytes of the
    original are not reused for it (``IssuerServer.encode``)."""
    field = link_mac_field(answer.fields)
    mac = answer.fields.get(field)
    if mac is None or not mac:
        return answer
    flipped = f"{int(mac[0], 16) ^ 1:X}{mac[1:]}"
    return Message(answer.mti, {**answer.fields, field: flipped})


class IssuerServer:
    def __init__(
        self,
        host: IssuerHost,
        ssl_context: ssl.SSLContext | None,
        *,
        faults: LiveFaults | None = None,
        bind: str = "127.0.0.1",
        port: int = 0,
        postings_file: Path | None = None,
        allowed_clients: tuple[str, ...] = (),
        codec: Codec | None = None,
        framing: Framing = BINARY2,
        alternate: Codec | None = None,
        cutover_signal: bool = False,
        key_change_signal: bool = False,
    ) -> None:
        self.host = host
        self.framing = framing
        """The link's framing (``protocols.framing``): the gateway's link must use the same."""
        self.cutover_signal = cutover_signal
        """``SIGUSR2`` sends a cutover (``send_cutover``, field 15 today's UTC date)."""
        self.allowed_clients = allowed_clients
        """Client certificates served over TLS (CN or ``sha256:`` fingerprint, as hsm-sim's
        allow-list); empty: none (a bank's host pins its acquirer). Unused on plain TCP."""
        self.postings_file = postings_file
        """Where ``SIGUSR1`` writes the posting file (``issuer_sim.postings``); None: off."""
        self.key_change_signal = key_change_signal
        """``SIGHUP`` sends the acquirer a new ZPK (and ZAK, if the link MACs): the issuer's
        side of a key change, on demand (the ``issuer-sim`` program; off in tests)."""
        self.ssl_context = ssl_context
        self.faults = faults or LiveFaults()
        self.bind = bind
        self.port = port
        self.codec = codec or best_codec(get_dialect("terminal"))
        """The link's codec: canonical messages for the host, its dialect on the wire."""
        self.alternate = alternate
        """``also_accept``'s codec: a connection whose first byte is of its MTI's kind
        (ASCII digit or BCD) speaks it instead."""
        self._alternate_ascii = alternate is not None and _ascii_mti(alternate)
        self.received = 0
        self.by_mti: dict[str, int] = {}
        self.refused = 0
        """Connections refused because the allow-list does not name the client certificate."""
        self._warnings = PeerWarnings(log)
        self.partial_timeout = PARTIAL_TIMEOUT
        """A partial frame waiting longer than this (s) for its next bytes closes the link."""
        self.live: set[LinkConnection] = set()
        """Open connections on asyncio (closed when the server stops)."""
        self.channels: set[fastio.FrameChannel] = set()
        """Open connections on trio (for messages of our own)."""
        self.answers_received: deque[Message] = deque(maxlen=1000)
        """Answers the acquirer sent to our own requests (the 0810 to our cutover)."""
        self._stan = itertools.count(1)
        self._waiting: dict[str, tuple[anyio.Event, list[Message]]] = {}
        """Our key-change 0800s awaiting their 0810, by STAN."""
        self.key_changes: dict[str, int] = {}
        """Our key changes by outcome: ``accepted``, ``refused``, ``no_answer``."""
        self._scope: anyio.CancelScope | None = None

    async def run(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        if self.postings_file is None and not self.cutover_signal and not self.key_change_signal:
            await self._serve(task_status=task_status)
            return
        async with anyio.create_task_group() as tg:
            if self.postings_file is not None:
                await tg.start(self._export_on_signal, self.postings_file)
            if self.cutover_signal:
                await tg.start(self._cutover_on_signal)
            if self.key_change_signal:
                await tg.start(self._keys_on_signal)
            await self._serve(task_status=task_status)
            tg.cancel_scope.cancel()

    async def _cutover_on_signal(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        with anyio.open_signal_receiver(signal.SIGUSR2) as signals:
            task_status.started()
            async for _ in signals:
                await self.send_cutover(dt.datetime.now(dt.UTC).date())

    async def _keys_on_signal(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """``SIGHUP``: a key change from the issuer's side (ZPK, then ZAK if there is one)."""
        with anyio.open_signal_receiver(signal.SIGHUP) as signals:
            task_status.started()
            async for _ in signals:
                security = self.host.book.security
                if security is None or security.zmk is None:
                    log.warning("issuer_sim_key_change_unavailable", issuer=self.host.book.issuer)
                    continue
                for kind in ("zpk", "zak"):
                    if getattr(security, kind) is not None:
                        rc = await self.initiate_key_change(kind)
                        log.info(
                            "issuer_sim_key_change_sent",
                            issuer=self.host.book.issuer,
                            key_kind=kind,
                            rc=rc,
                        )

    async def _export_on_signal(
        self, path: Path, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """``SIGUSR1``: write the posting file. The snapshot is taken on the event loop (the
        postings change there), the masking and the writing run in a worker thread."""
        with anyio.open_signal_receiver(signal.SIGUSR1) as signals:
            task_status.started()
            async for _ in signals:
                rows = await self._snapshot()
                try:
                    count = await anyio.to_thread.run_sync(write_csv, rows, path)
                except OSError as exc:
                    log.error("issuer_sim_postings_failed", path=str(path), error=exc.strerror)
                    continue
                log.info("issuer_sim_postings_written", path=str(path), count=count)

    async def _snapshot(self) -> Snapshot:
        """The postings as tuples: which postings, at once (one C-level copy of the items);
        their values in chunks with the loop serving in between (1M postings: 0.3 s of CPU,
        20,000 at a time). The collector is off meanwhile: a tuple per posting would make it
        walk every object of the host (1M postings: 1.3 s instead of 0.3 s, process time)."""
        enabled = gc.isenabled()
        gc.disable()
        try:
            items = list(self.host.postings.items())
            rows: Snapshot = []
            for start in range(0, len(items), _SNAPSHOT_CHUNK):
                rows += rows_of(items[start : start + _SNAPSHOT_CHUNK])
                await anyio.lowlevel.checkpoint()
            return rows
        finally:
            if enabled:
                gc.enable()

    async def _serve(self, *, task_status: TaskStatus[int]) -> None:
        with anyio.CancelScope() as scope:
            self._scope = scope
            if fastio.fast_path():
                await self._run_protocol(task_status)
                return
            async with anyio.create_task_group() as tg:
                self.port = await fastio.serve(
                    tg,
                    self._connection,
                    host=self.bind,
                    port=self.port,
                    ssl_context=self.ssl_context,
                    max_size=MAX_FRAME,
                    partial_timeout=self.partial_timeout,
                    framing=self.framing,
                )
                log.info("issuer_sim_started", issuer=self.host.book.issuer, port=self.port)
                task_status.started(self.port)

    async def _run_protocol(self, task_status: TaskStatus[int]) -> None:
        """asyncio and uvloop: requests served in ``data_received`` (issuer_sim.connection)."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: LinkConnection(self),
            self.bind,
            self.port,
            ssl=self.ssl_context,
            backlog=4096,
            reuse_address=True,
            ssl_handshake_timeout=10.0 if self.ssl_context is not None else None,
        )
        try:
            self.port = server.sockets[0].getsockname()[1]
            log.info("issuer_sim_started", issuer=self.host.book.issuer, port=self.port)
            task_status.started(self.port)
            await anyio.sleep_forever()
        finally:
            server.close()
            for conn in list(self.live):
                conn.close()

    def stop(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    def restarted(self) -> IssuerServer:
        """A new server for this one's host on its port, as after a crash of the host
        process: same accounts, TLS, pinned clients and live faults (tests and chaos)."""
        return IssuerServer(
            self.host,
            self.ssl_context,
            faults=self.faults,
            port=self.port,
            allowed_clients=self.allowed_clients,
            codec=self.codec,
            framing=self.framing,
            alternate=self.alternate,
        )

    def admit(self, peer: str, der: bytes | None) -> bool:
        """Whether a connection whose TLS handshake is done may be served (``der``: the client
        certificate); a refusal is counted and logged, rate-limited per peer address, and the
        caller closes the connection unread."""
        if self.ssl_context is None:
            return True
        # Empty is none here, where hsm-sim's empty allow-list admits the whole CA.
        if self.allowed_clients and client_allowed(self.allowed_clients, der):
            return True
        self.refused += 1
        cn, fingerprint = certificate_identity(der) if der is not None else (None, None)
        self._warnings.warning(
            "issuer_sim_client_refused",
            peer,
            issuer=self.host.book.issuer,
            client=cn,
            fingerprint=fingerprint,
        )
        return False

    def codec_for(self, first: bytes) -> Codec:
        """The codec of a connection, from its first frame (``also_accept``)."""
        alternate = self.alternate
        if alternate is None or not first:
            return self.codec
        ascii_first = 0x30 <= first[0] <= 0x39
        return alternate if ascii_first == self._alternate_ascii else self.codec

    async def send_cutover(self, business_date: dt.date | None = None) -> int:
        """Tell the acquirer our business day moved on: 0800/201 (field 15 = the new date,
        MMDD, when given) on every open connection; how many it went out on. The answers
        land in ``answers_received``."""
        now = dt.datetime.now(dt.UTC)
        fields = {"7": now.strftime("%m%d%H%M%S"), "11": f"{next(self._stan) % 1_000_000:06d}"}
        fields["70"] = "201"
        if business_date is not None:
            fields["15"] = f"{business_date.month:02d}{business_date.day:02d}"
        msg = Message("0800", fields)
        payload = self.codec.encode(msg)
        framed_payload = OWN_TPDU + payload if self.framing.tpdu else payload
        # Each connection in its own dialect (also_accept); trio's channels in the host's.
        sent = sum(conn.send((conn.codec or self.codec).encode(msg)) for conn in list(self.live))
        for channel in list(self.channels):
            with contextlib.suppress(*_GONE):
                await channel.send_frame(framed_payload)
                sent += 1
        log.info("issuer_sim_cutover_sent", issuer=self.host.book.issuer, connections=sent)
        return sent

    def serve_frame(
        self, frame: bytes, codec: Codec | None = None
    ) -> tuple[Message | None, float] | None:
        """Decode and answer one request: ``None`` when it cannot be decoded (logged), else
        the answer (``None`` when the drop fault loses it) and the delay before sending it
        (latency fault, ms; 0: now)."""
        faults = self.faults
        try:
            msg = (codec or self.codec).decode(frame)
        except ProtocolError as exc:
            log.warning("issuer_sim_bad_message", reason=str(exc))
            return None
        self.received += 1
        by_mti = self.by_mti
        if msg.mti in by_mti or len(by_mti) < 256:  # a peer's made-up MTIs stay bounded
            by_mti[msg.mti] = by_mti.get(msg.mti, 0) + 1
        if not is_request(msg.mti):
            # The answer to a request of ours (an 0810): kept, never answered; a key change's
            # wakes its sender.
            self.answers_received.append(msg)
            waiting = self._waiting.get(msg.fields.get("11", ""))
            if waiting is not None:
                waiting[1].append(msg)
                waiting[0].set()
            return None
        try:
            answer = self.host.handle(msg, dt.datetime.now(dt.UTC))
        except (ProtocolError, ValueError, KeyError, IndexError) as exc:
            # A request no answer fits (an MTI without a response, a field the host cannot
            # read): logged by kind only, as its text may quote a card number; no answer.
            log.warning("issuer_sim_bad_request", mti=msg.mti, error=type(exc).__name__)
            return None
        faulty = msg.mti != "0800" or faults.apply_to_network
        if faulty and faults.drop_ratio and random.random() < faults.drop_ratio:
            return None, 0.0  # processed, but the answer is lost
        if faulty and faults.bad_mac_ratio and random.random() < faults.bad_mac_ratio:
            answer = corrupt_mac(answer)  # processed, but the answer cannot be trusted
        if faulty and faults.latency_ms:
            return answer, faults.latency_ms
        return answer, 0.0

    async def initiate_key_change(
        self, kind: str, *, fault: str | None = None, timeout: float = 5.0
    ) -> str:
        """Send the acquirer a new ``kind`` key (``zpk``/``zak``) on one live connection: its
        0810's field 39 (``no_answer`` when none came); refused or unanswered, the old key is
        put back. ``fault``: ``tamper`` or ``wrong_kcv`` (tests)."""
        security = self.host.book.security
        if security is None:
            raise LookupError("this issuer has no keys")
        fields, undo = keys.offer(security, kind, fault=fault)
        stan = f"{next(self._stan) % 1_000_000:06d}"
        msg = Message(
            "0800", {"7": dt.datetime.now(dt.UTC).strftime("%m%d%H%M%S"), "11": stan, **fields}
        )
        event = anyio.Event()
        answers: list[Message] = []
        self._waiting[stan] = (event, answers)
        try:
            if not await self._send_any(msg):
                undo(False)  # nothing was sent
                return self._key_change_outcome("no_answer")
            with anyio.move_on_after(timeout):
                await event.wait()
        finally:
            self._waiting.pop(stan, None)
        rc = answers[0].fields.get("39", "") if answers else ""
        if rc != keychange.ACCEPTED:
            undo(not rc)  # unanswered: the acquirer may use it, so it stays acceptable
            log.warning(
                "issuer_sim_key_change_not_accepted",
                issuer=self.host.book.issuer,
                key_kind=kind,
                rc=rc or None,
            )
            return self._key_change_outcome("refused" if rc else "no_answer", rc)
        log.info(
            "issuer_sim_key_changed",
            issuer=self.host.book.issuer,
            key_kind=kind,
            generation=security.generation,
            initiator="issuer",
        )
        return self._key_change_outcome("accepted", rc)

    def _key_change_outcome(self, outcome: str, rc: str = "") -> str:
        self.key_changes[outcome] = self.key_changes.get(outcome, 0) + 1
        return rc or outcome

    async def _send_any(self, msg: Message) -> bool:
        """``msg`` on one open connection, in its dialect and the link's framing (as
        :meth:`send_cutover`); False when there is none."""
        for conn in list(self.live):
            if conn.send((conn.codec or self.codec).encode(msg)):
                return True
        payload = self.codec.encode(msg)
        framed_payload = OWN_TPDU + payload if self.framing.tpdu else payload
        for channel in list(self.channels):
            try:
                await channel.send_frame(framed_payload)
            except (*_GONE, ssl.SSLError):
                continue
            return True
        return False

    def encode(self, answer: Message, codec: Codec | None = None) -> bytes:
        codec = codec or self.codec
        # A MACed answer was encoded when it was sealed: reuse those bytes.
        security = self.host.book.security
        if security is not None and security.codec.spec is codec.spec:
            frame = security.take_encoded(answer)
            if frame is not None:
                return frame
        return codec.encode(answer)

    async def _connection(self, framed: fastio.FrameChannel) -> None:
        """Trio: one connection over the frame channel (asyncio: LinkConnection)."""
        count = 0
        codec: Codec | None = None
        try:
            if not self.admit(*_channel_client(framed)):
                return
            self.channels.add(framed)
            async with anyio.create_task_group() as tg:
                while True:
                    try:
                        frame = await framed.receive_frame()
                    except (*_GONE, ProtocolError, StalledFrameError, ssl.SSLError):
                        break
                    count += 1
                    tpdu = b""
                    if self.framing.tpdu:  # answered with its addresses swapped
                        tpdu, frame = answer_tpdu(frame[:TPDU_SIZE]), frame[TPDU_SIZE:]
                    if codec is None:
                        codec = self.codec_for(frame)
                    served = self.serve_frame(frame, codec)
                    if served is None:
                        continue
                    answer, delay_ms = served
                    if answer is not None:
                        if delay_ms:
                            tg.start_soon(self._answer_later, framed, answer, delay_ms, tpdu, codec)
                        else:
                            await framed.send_frame(tpdu + self.encode(answer, codec))
                    disconnect_after = self.faults.disconnect_after
                    if disconnect_after and count >= disconnect_after:
                        log.info("issuer_sim_disconnect", after=count)
                        break
                tg.cancel_scope.cancel()
        except _GONE:
            pass
        except Exception:
            log.exception("issuer_sim_connection_failed")
        finally:
            self.channels.discard(framed)
            with anyio.CancelScope(shield=True):
                await framed.aclose()

    async def _answer_later(
        self,
        framed: fastio.FrameChannel,
        answer: Message,
        delay_ms: float,
        tpdu: bytes = b"",
        codec: Codec | None = None,
    ) -> None:
        await anyio.sleep(delay_ms / 1000)
        with contextlib.suppress(*_GONE):
            await framed.send_frame(tpdu + self.encode(answer, codec))


def _ascii_mti(codec: Codec) -> bool:
    return str(codec.spec["t"]["data_enc"]) == "ascii"


def _channel_client(framed: fastio.FrameChannel) -> tuple[str, bytes | None]:
    """(peer address, DER client certificate or None) of a trio connection."""
    if not isinstance(framed, FramedStream):
        return "?", None
    der = framed.stream.extra(TLSAttribute.peer_certificate_binary, None)
    return str(getattr(framed, "peer", "?")), der
