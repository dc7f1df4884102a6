"""Card affinity across the worker processes of one machine (``workers = N``).

The kernel spreads terminal connections over the workers (SO_REUSEPORT), but a card's state
must live in one place for the switch to stay exact: its daily amount and count, velocity and
travel history, its stand-in totals, the duplicate window (a retransmission carries the same
card) and the journal record a reversal looks up. So each card has an owner, the worker whose
index is ``crc32(funding PAN) mod N``, and a request for another worker's card is handed to that
worker whole, over a Unix socket, and its answer handed back. The owner runs the unchanged
pipeline (``Switch.handle``); the worker that took the connection only frames, decodes and
encodes for its terminal. Nothing else needs sharing: no Redis round trip per limit check, and
one SQLite journal per worker stays correct because every record of a card is in its owner's.

Wire between workers (a private Unix socket in a 0700 directory, never a network port):
``length(4) id(4) raw_length(4) raw json`` where ``raw`` is the request as the terminal sent
it (its MAC is checked over those bytes) and ``json`` ``[mti, fields, qr]``; the answer is
``length(4) id(4) 0(4) json`` with ``[mti, fields, step_up]``, ``null`` for a message that has
no answer, or ``{"error": reason}``. Frames sent in one loop iteration leave in one write.

A request whose owner cannot be reached (restarting) is refused with ``96`` and counted: the
terminal may retry, and the owner's journal recovery reverses whatever reached an issuer.
"""

from __future__ import annotations

import os
import stat
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.abc
import orjson
from prometheus_client import Counter

from gateway.flow.tokens import TokenVault
from gateway.risk.verification import QrVerification
from kit.logs import get_logger
from protocols.codec import MessageFormatError
from protocols.message import Message

log = get_logger("gateway.edge.affinity")

ENV_DIR = "PAYSWITCH_AFFINITY_DIR"
"""Set by the supervisor for its workers: the private directory of their sockets."""

_HEAD = struct.Struct(">III")  # length (after these 4 bytes), id, raw length
_MAX_FRAME = 1 << 20
_SEPARATORS = ("=", "D", "d")


class Handler(Protocol):
    """What the terminal listeners and the QR API call: :class:`gateway.flow.switch.Switch`
    and this module's :class:`CardAffinity` alike."""

    async def handle(
        self, req: Message, raw: bytes = b"", *, qr: QrVerification | None = None
    ) -> Message | None: ...

    def format_error_response(self, exc: MessageFormatError) -> Message | None: ...

    def refuse(self, req: Message, rc: str) -> Message | None: ...


class PeerUnavailableError(Exception):
    """The owning worker could not be reached, or went away with the request."""


def card_number(req: Message, vault: TokenVault | None = None) -> str | None:
    """The funding card number of a request (field 2, else track 2's PAN; a wallet token is
    replaced by its funding PAN, as the pipeline does), or ``None`` when it carries none."""
    fields = req.fields
    pan = fields.get("2")
    if pan is None:
        track = fields.get("35")
        if track is None:
            return None
        cut = len(track)
        for sep in _SEPARATORS:
            at = track.find(sep)
            if 0 <= at < cut:
                cut = at
        pan = track[:cut]
    if vault is not None:
        record = vault.lookup(pan)
        if record is not None:
            return vault.funding_pan(pan, record)
    return pan


def owner_of(pan: str, workers: int) -> int:
    """The worker that owns a card: stable across processes and restarts (not ``hash``)."""
    return zlib.crc32(pan.encode()) % workers


def socket_dir(conf: Path) -> Path:
    """The workers' socket directory: the supervisor's (``ENV_DIR``), else one per config
    file under the temporary directory, private to this user."""
    given = os.environ.get(ENV_DIR)
    if given:
        return Path(given)
    tag = zlib.crc32(str(conf.resolve()).encode())
    return Path(tempfile.gettempdir()) / f"payswitch-{os.getuid()}-{tag:08x}"


def private_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700) or check that an existing one is ours and private."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise PermissionError(f"{path}: must be a directory of this user with mode 0700")
    return path


def _frame(ident: int, raw: bytes, body: bytes) -> bytes:
    return _HEAD.pack(8 + len(raw) + len(body), ident, len(raw)) + raw + body


class _Frames:
    """Sans-IO reader of the frames above."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes, bytes]]:
        buf = self._buf
        buf += data
        out = []
        while len(buf) >= 4:
            (length,) = struct.unpack_from(">I", buf)
            if length < 8 or length > _MAX_FRAME:
                raise ValueError(f"bad frame length {length}")
            if len(buf) < 4 + length:
                break
            _, ident, raw_len = _HEAD.unpack_from(buf)
            if raw_len > length - 8:
                raise ValueError("bad raw length")
            raw = bytes(buf[12 : 12 + raw_len])
            body = bytes(buf[12 + raw_len : 4 + length])
            del buf[: 4 + length]
            out.append((ident, raw, body))
        return out


class _Writer:
    """Frames queued in one loop iteration leave in one write."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self._out: list[bytes] = []
        self._ready = anyio.Event()

    def push(self, frame: bytes) -> None:
        self._out.append(frame)
        self._ready.set()

    async def run(self) -> None:
        while True:
            await self._ready.wait()
            self._ready = anyio.Event()
            out, self._out = self._out, []
            await self.stream.send(b"".join(out))


class _Peer:
    """The connection to one other worker: requests pipelined, answers matched by id."""

    def __init__(self, path: Path, tg: anyio.abc.TaskGroup, connect_timeout: float) -> None:
        self.path = path
        self._tg = tg
        self._connect_timeout = connect_timeout
        self._writer: _Writer | None = None
        self._lock = anyio.Lock()
        self._next = 0
        self._pending: dict[int, list[Any]] = {}  # id -> [event, answer or None]

    async def call(self, raw: bytes, body: bytes, timeout: float) -> Any:
        writer = self._writer or await self._connect()
        self._next = ident = (self._next + 1) & 0xFFFFFFFF
        slot: list[Any] = [anyio.Event(), None]
        self._pending[ident] = slot
        writer.push(_frame(ident, raw, body))
        try:
            with anyio.fail_after(timeout):
                await slot[0].wait()
        except TimeoutError:
            raise PeerUnavailableError(f"no answer within {timeout} s") from None
        finally:
            self._pending.pop(ident, None)
        answer = slot[1]
        if isinstance(answer, PeerUnavailableError):
            raise answer
        return answer

    async def _connect(self) -> _Writer:
        async with self._lock:
            if self._writer is not None:
                return self._writer
            try:
                with anyio.fail_after(self._connect_timeout):
                    stream = await anyio.connect_unix(self.path)
            except (OSError, TimeoutError) as exc:
                raise PeerUnavailableError(f"connect: {type(exc).__name__}") from None
            writer = self._writer = _Writer(stream)
            self._tg.start_soon(self._serve, writer)
            return writer

    async def _serve(self, writer: _Writer) -> None:
        reason = "closed"
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(writer.run)
                frames = _Frames()
                async for chunk in writer.stream:
                    for ident, _, body in frames.feed(chunk):
                        slot = self._pending.get(ident)
                        if slot is not None:
                            slot[1] = orjson.loads(body)
                            slot[0].set()
                tg.cancel_scope.cancel()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            reason = type(exc).__name__
        except ValueError as exc:  # a broken frame from our own sibling: a bug, said loudly
            reason = str(exc)
            log.error("affinity_peer_broken_frame", path=str(self.path), reason=reason)
        finally:
            self._writer = None
            with anyio.CancelScope(shield=True):
                await writer.stream.aclose()
            lost = PeerUnavailableError(f"connection lost: {reason}")
            for slot in list(self._pending.values()):
                if slot[1] is None:
                    slot[1] = lost
                    slot[0].set()


def _encode_request(req: Message, qr: QrVerification | None) -> bytes:
    q = None if qr is None else [qr.dynamic, sorted(qr.factors)]
    return orjson.dumps([req.mti, req.fields, q])


class CardAffinity:
    """The handler in front of a worker's switch: its own cards to it, the others' to them."""

    def __init__(
        self,
        switch: Handler,
        *,
        index: int,
        workers: int,
        directory: Path,
        vault: TokenVault | None,
        timeout: float,
        requests: Counter,
        connect_timeout: float = 1.0,
    ) -> None:
        if not 0 <= index < workers:
            raise ValueError(f"worker {index} out of range 0..{workers - 1}")
        self.switch = switch
        self.index = index
        self.workers = workers
        self.directory = directory
        self.vault = vault
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._peers: dict[int, _Peer] = {}
        self._local = requests.labels(route="local")
        self._remote = requests.labels(route="remote")
        self._served = requests.labels(route="served")
        self._failed = requests.labels(route="unavailable")
        self._tg: anyio.abc.TaskGroup | None = None

    def path(self, index: int) -> Path:
        return self.directory / f"worker-{index}.sock"

    # -- the handler ------------------------------------------------------------------------

    def format_error_response(self, exc: MessageFormatError) -> Message | None:
        return self.switch.format_error_response(exc)

    def refuse(self, req: Message, rc: str) -> Message | None:
        return self.switch.refuse(req, rc)

    async def handle(
        self, req: Message, raw: bytes = b"", *, qr: QrVerification | None = None
    ) -> Message | None:
        pan = card_number(req, self.vault)
        owner = self.index if pan is None else owner_of(pan, self.workers)
        if owner == self.index or self._tg is None:
            self._local.inc()
            return await self.switch.handle(req, raw, qr=qr)
        self._remote.inc()
        peer = self._peers.get(owner)
        if peer is None:
            peer = self._peers[owner] = _Peer(self.path(owner), self._tg, self.connect_timeout)
        try:
            answer = await peer.call(raw, _encode_request(req, qr), self.timeout)
        except PeerUnavailableError as exc:
            self._failed.inc()
            log.warning("affinity_owner_unavailable", owner=owner, reason=str(exc))
            return self.switch.refuse(req, "96")
        if answer is None:
            return None
        if isinstance(answer, dict):  # the owner failed: its own log has the cause
            self._failed.inc()
            log.warning("affinity_owner_failed", owner=owner, reason=answer.get("error"))
            return self.switch.refuse(req, "96")
        mti, fields, step_up = answer
        if qr is not None and step_up is not None:
            qr.step_up = step_up
        return Message(mti, fields)

    # -- serving the other workers ------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen for the other workers' requests; peers connect lazily on first use."""
        private_dir(self.directory)
        path = self.path(self.index)
        path.unlink(missing_ok=True)  # a previous run's socket (this worker restarted)
        listener = await anyio.create_unix_listener(path)
        os.chmod(path, 0o600)
        async with anyio.create_task_group() as tg, listener:
            self._tg = tg
            task_status.started()
            try:
                await listener.serve(self._serve_peer, task_group=tg)
            finally:
                self._tg = None

    async def _serve_peer(self, stream: anyio.abc.ByteStream) -> None:
        writer = _Writer(stream)
        frames = _Frames()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(writer.run)
                async for chunk in stream:
                    for ident, raw, body in frames.feed(chunk):
                        tg.start_soon(self._answer, writer, ident, raw, body)
                tg.cancel_scope.cancel()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass  # the sibling went away; what it asked is answered to nobody
        except ValueError as exc:
            log.error("affinity_peer_broken_frame", reason=str(exc))
        finally:
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def _answer(self, writer: _Writer, ident: int, raw: bytes, body: bytes) -> None:
        self._served.inc()
        try:
            mti, fields, q = orjson.loads(body)
            qr = None if q is None else QrVerification(bool(q[0]), frozenset(q[1]))
            resp = await self.switch.handle(Message(mti, fields), raw, qr=qr)
            out: Any = None
            if resp is not None:
                out = [resp.mti, resp.fields, None if qr is None else qr.step_up]
        except Exception as exc:
            log.exception("affinity_request_failed")
            out = {"error": type(exc).__name__}
        writer.push(_frame(ident, b"", orjson.dumps(out)))
