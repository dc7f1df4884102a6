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

import pickle
import struct
import sys
from collections import deque
from typing import Any

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream, Process

from gateway.journal.errors import JournalClosedError, JournalWriteError
from gateway.journal.groupcommit import Op

HEADER = struct.Struct(">I")


def frame(obj: object) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


def loads(data: bytes) -> Any:
    """A frame's body: only ever from our own child or parent, over our own pipe."""
    return pickle.loads(data)  # noqa: S301


class WriterProcess:
    """The gateway's side: starts the child, sends batches, hands back their results.

    Several batches may be on their way (the group committer's ``depth``): the child answers
    them in the order they were sent. A batch waiting for its answer reads answers (one
    reader at a time) and hands each to the oldest batch sent until its own has come: no
    reader task of its own to own and stop."""

    def __init__(self) -> None:
        self._proc: Process | None = None
        self._buf = b""
        self._waiting: deque[_Pending] = deque()
        self._sending = anyio.Lock()  # one frame at a time, in the order answers come back
        self._reading = anyio.Lock()

    async def start(self, config: Any, chain: Any, protector: Any) -> None:
        proc = await anyio.open_process(
            [sys.executable, "-m", "gateway.journal.writer"], stderr=None
        )
        self._proc = proc
        try:
            await self._send(frame((config, chain, protector)))
            answer = await self._receive()
            if answer[0] != "ready":
                raise JournalWriteError(f"journal writer did not start: {answer[1]}: {answer[2]}")
        except BaseException:
            await self.aclose()
            raise

    async def commit(self, ops: list[Op]) -> None:
        """One batch, all or nothing: each op's ``result`` set, or an error raised."""
        pending = _Pending()
        data = frame([(op.kind.value, op.args, op.durable) for op in ops])
        async with self._sending:
            self._waiting.append(pending)
            await self._send(data)
        async with self._reading:
            while not pending.settled:
                self._waiting.popleft().settle(await self._receive())
        answer = pending.answer
        if answer[0] != "ok":
            raise JournalWriteError(f"journal writer: {answer[1]}: {answer[2]}")
        for op, result in zip(ops, answer[1], strict=True):
            op.result = result

    async def aclose(self) -> None:
        """Close the child's input (it finishes, closes the file and exits) and reap it."""
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


class _Pending:
    __slots__ = ("answer", "settled")

    def __init__(self) -> None:
        self.settled = False
        self.answer: Any = None

    def settle(self, answer: Any) -> None:
        self.answer = answer
        self.settled = True
