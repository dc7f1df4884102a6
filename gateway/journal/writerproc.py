"""The SQLite journal's writer in a process of its own (``writer = "process"``): the
gateway's side. The child is :mod:`gateway.journal.writer`.

Why: with the journal on, a third of the gateway's CPU per transaction went to the journal's
batches (SQL, the chain's HMACs, index upserts, the WAL fsync and checkpoints), all on the one
core the event loop runs on. Here a child process does that part, and since 2026-12-07 the
records' encryption and PAN hash too (the child was two-thirds idle): the gateway validates
each event and strips it of sensitive authentication data (:class:`JournalEvent`), hands it
down as a plain tuple (:func:`.rows.defer_event`; the child, our own process behind our own
pipe, holds the data keys as it already held the chain key) and batches records by group
commit; each batch travels down a pipe as one pickled frame, the child encrypts, chains,
writes, commits and syncs it exactly as :meth:`SqliteJournal._commit_sync` does, and answers
with each op's result. A writer is released only after its batch is on disk, as before: the
guarantees do not change, the work moves to the other core.

Reads stay in the gateway on its own WAL reader connections (readers never block the writer,
in another process either). The child ends when its standard input closes: the gateway
stopped, or died (SIGKILL closes the pipe), so it never outlives its gateway by more than the
batch it is writing. It never restarts on its own: a journal that cannot write is an error
the gateway reports (``96``), as with a failing disk.

Wire: 4-byte big-endian length + pickle, both ways (our own child, over our own pipe). The
first frame down is ``(config, chain, protector)``; the child answers ``("ready",)`` once the
file is open, then one answer per batch: ``("ok", results)`` or ``("error", type name,
message)``.
"""

from __future__ import annotations

import asyncio
import functools
import pickle
import struct
import subprocess
import sys
from collections import deque
from typing import Any

import anyio
import sniffio
from anyio.abc import ByteReceiveStream, ByteSendStream, Process

from gateway.journal.errors import JournalClosedError, JournalWriteError
from gateway.journal.groupcommit import Done, Op

HEADER = struct.Struct(">I")


def frame(obj: object) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


def settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    """Resolve ``future`` with ``error`` (or success), unless something already did."""
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _batch(ops: list[Op]) -> bytes:
    return frame([(op.kind.value, op.args, op.durable) for op in ops])


def _apply_answer(ops: list[Op], answer: Any) -> JournalWriteError | None:
    """Each op's result from a batch's answer, or the error the answer reports."""
    if answer[0] != "ok":
        return JournalWriteError(f"journal writer: {answer[1]}: {answer[2]}")
    for op, result in zip(ops, answer[1], strict=True):
        op.result = result
    return None


def loads(data: bytes) -> Any:
    """A frame's body: only ever from our own child or parent, over our own pipe."""
    return pickle.loads(data)  # noqa: S301


class WriterProcess:
    """The gateway's side: starts the child, sends batches, hands back their results.

    Several batches may be on their way (the group committer's ``depth``): the child answers
    them in the order they were sent. On asyncio the child's pipes are a protocol: a batch
    is written without awaiting (:meth:`send`) and its answer settles it from the pipe's
    read callback, with no task to wake (see :class:`.groupcommit.GroupCommitter`). On trio,
    AnyIO's process streams: a batch waiting for its answer reads answers (one reader at a
    time) and hands each to the oldest batch sent until its own has come."""

    def __init__(self) -> None:
        self._proc: Process | None = None
        self._buf = b""
        self._waiting: deque[_Pending] = deque()
        self._sending = anyio.Lock()  # one frame at a time, in the order answers come back
        self._reading = anyio.Lock()
        # asyncio
        self._transport: asyncio.SubprocessTransport | None = None
        self._stdin: Any = None  # asyncio.WriteTransport-like (uvloop's is not a subclass)
        self._answers: _Answers | None = None
        self._callbacks: deque[tuple[list[Op], Done]] = deque()
        self._first: asyncio.Future[Any] | None = None
        self._gone = False

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        if self._transport is not None:
            return self._transport.get_pid()
        return None if self._proc is None else self._proc.pid

    @property
    def sends(self) -> bool:
        """:meth:`send` works (asyncio)."""
        return self._stdin is not None

    async def start(self, config: Any, chain: Any, protector: Any) -> None:
        hello = frame((config, chain, protector))
        if sniffio.current_async_library() == "asyncio":
            await self._start_asyncio(hello)
            return
        proc = await anyio.open_process(
            [sys.executable, "-m", "gateway.journal.writer"], stderr=None
        )
        self._proc = proc
        try:
            await self._send(hello)
            answer = await self._receive()
            if answer[0] != "ready":
                raise JournalWriteError(f"journal writer did not start: {answer[1]}: {answer[2]}")
        except BaseException:
            await self.aclose()
            raise

    async def _start_asyncio(self, hello: bytes) -> None:
        loop = asyncio.get_running_loop()
        self._first = loop.create_future()
        transport, answers = await loop.subprocess_exec(
            lambda: _Answers(self, loop),
            sys.executable,
            "-m",
            "gateway.journal.writer",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
        )
        self._transport, self._answers = transport, answers
        stdin: Any = transport.get_pipe_transport(0)  # uvloop's: no asyncio.WriteTransport
        if stdin is None:
            transport.close()
            raise JournalWriteError("journal writer did not start: no input pipe")
        self._stdin = stdin
        try:
            stdin.write(hello)
            answer = await self._first
            if answer[0] != "ready":
                raise JournalWriteError(f"journal writer did not start: {answer[1]}: {answer[2]}")
        except BaseException:
            await self.aclose()
            raise

    def send(self, ops: list[Op], done: Done) -> None:
        """asyncio: write one batch now; ``done`` is called when its answer is read."""
        stdin = self._stdin
        if stdin is None or self._gone or stdin.is_closing():
            raise JournalClosedError("the journal writer process is gone")
        data = _batch(ops)
        self._callbacks.append((ops, done))
        stdin.write(data)

    async def commit(self, ops: list[Op]) -> None:
        """One batch, all or nothing: each op's ``result`` set, or an error raised."""
        if self._stdin is not None:
            settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.send(ops, functools.partial(settle, settled))
            await settled
            return
        pending = _Pending()
        data = _batch(ops)
        async with self._sending:
            self._waiting.append(pending)
            await self._send(data)
        async with self._reading:
            while not pending.settled:
                self._waiting.popleft().settle(await self._receive())
        error = _apply_answer(ops, pending.answer)
        if error is not None:
            raise error

    def _answered(self, answer: Any) -> None:
        """asyncio: one answer read from the child, for the oldest batch sent."""
        first = self._first
        if first is not None:
            self._first = None
            if not first.done():
                first.set_result(answer)
            return
        if not self._callbacks:
            return  # nothing asked: ignore (never happens with our own child)
        ops, done = self._callbacks.popleft()
        done(_apply_answer(ops, answer))

    def _lost(self) -> None:
        """asyncio: the child's output ended (it exited, or was killed)."""
        self._gone = True
        error = JournalClosedError("the journal writer process is gone")
        first, self._first = self._first, None
        if first is not None and not first.done():
            first.set_exception(error)
        while self._callbacks:
            _, done = self._callbacks.popleft()
            done(error)

    async def aclose(self) -> None:
        """Close the child's input (it finishes, closes the file and exits) and reap it."""
        transport, self._transport = self._transport, None
        if transport is not None:
            answers = self._answers
            assert answers is not None
            with anyio.CancelScope(shield=True):
                if self._stdin is not None:
                    self._stdin.close()
                with anyio.move_on_after(30):
                    await answers.exited
                if not answers.exited.done():
                    transport.kill()
                    await answers.exited
                transport.close()
            self._stdin = None
            self._lost()
            return
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with anyio.CancelScope(shield=True):
            if proc.stdin is not None:
                await proc.stdin.aclose()
            with anyio.move_on_after(30):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await proc.aclose()

    async def _send(self, data: bytes) -> None:
        stdin = self._stream().stdin
        assert isinstance(stdin, ByteSendStream)
        try:
            await stdin.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            raise JournalClosedError("the journal writer process is gone") from exc

    async def _receive(self) -> Any:
        stdout = self._stream().stdout
        assert isinstance(stdout, ByteReceiveStream)
        while True:
            if len(self._buf) >= HEADER.size:
                (size,) = HEADER.unpack_from(self._buf)
                end = HEADER.size + size
                if len(self._buf) >= end:
                    data, self._buf = self._buf[HEADER.size : end], self._buf[end:]
                    return loads(data)
            try:
                self._buf += await stdout.receive()
            except (
                anyio.EndOfStream,
                anyio.BrokenResourceError,
                anyio.ClosedResourceError,
                OSError,
            ) as exc:
                raise JournalClosedError("the journal writer process is gone") from exc

    def _stream(self) -> Process:
        if self._proc is None:
            raise JournalClosedError("the journal writer process is not running")
        return self._proc


class _Answers(asyncio.SubprocessProtocol):
    """asyncio: the child's answers, parsed as they arrive and handed to the owner."""

    def __init__(self, owner: WriterProcess, loop: asyncio.AbstractEventLoop) -> None:
        self.owner = owner
        self.buf = b""
        self.exited: asyncio.Future[None] = loop.create_future()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd != 1:
            return
        buf = self.buf + data if self.buf else data
        pos, size = 0, len(buf)
        while size - pos >= HEADER.size:
            end = pos + HEADER.size + HEADER.unpack_from(buf, pos)[0]
            if end > size:
                break
            self.owner._answered(loads(buf[pos + HEADER.size : end]))
            pos = end
        self.buf = buf[pos:]

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1:
            self.owner._lost()

    def process_exited(self) -> None:
        # Not lost yet: answers it wrote before exiting may still be unread (the pipe's end,
        # ``pipe_connection_lost``, comes after them).
        if not self.exited.done():
            self.exited.set_result(None)


class _Pending:
    __slots__ = ("answer", "settled")

    def __init__(self) -> None:
        self.settled = False
        self.answer: Any = None

    def settle(self, answer: Any) -> None:
        self.answer = answer
        self.settled = True
