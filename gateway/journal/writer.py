"""The SQLite journal's writer in a process of its own (``writer = "process"``).

Why: with the journal on, a third of the gateway's CPU per transaction went to the journal's
batches (SQL, the chain's HMACs, index upserts, the WAL fsync and checkpoints), all on the one
core the event loop runs on. Here a child process does that part: the gateway still prepares
each record (encryption, canonical payload: the child never sees a clear PAN) and batches
records by group commit; each batch travels down a pipe as one pickled frame, the child
chains, writes, commits and syncs it exactly as :meth:`SqliteJournal._commit_sync` does, and
answers with each op's result. A writer is released only after its batch is on disk, as
before: the guarantees do not change, the work moves to the other core.

Reads stay in the gateway on its own WAL reader connections (readers never block the writer,
in another process either). The child ends when its standard input closes: the gateway
stopped, or died (SIGKILL closes the pipe), so it never outlives its gateway by more than the
batch it is writing. It never restarts on its own: a journal that cannot write is an error
the gateway reports (``96``), as with a failing disk.

Wire: 4-byte big-endian length + pickle, both ways (our own child, over our own pipe). The
first frame down is ``(config, chain)``; the child answers ``("ready",)`` once the file is
open, then one answer per batch: ``("ok", results)`` or ``("error", type name, message)``.
"""

from __future__ import annotations

import os
import pickle
import struct
import sys
import threading
from typing import Any, BinaryIO

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream, Process

from gateway.journal.errors import JournalClosedError, JournalWriteError
from gateway.journal.groupcommit import Op, OpKind

_HEADER = struct.Struct(">I")


def frame(obj: object) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


class WriterProcess:
    """The gateway's side: starts the child, sends batches, hands back their results."""

    def __init__(self) -> None:
        self._proc: Process | None = None
        self._buf = b""

    async def start(self, config: Any, chain: Any) -> None:
        proc = await anyio.open_process(
            [sys.executable, "-m", "gateway.journal.writer"], stderr=None
        )
        self._proc = proc
        try:
            await self._send(frame((config, chain)))
            answer = await self._receive()
        except BaseException:
            await self.aclose()
            raise
        if answer[0] != "ready":
            await self.aclose()
            raise JournalWriteError(f"journal writer did not start: {answer[1]}: {answer[2]}")

    async def commit(self, ops: list[Op]) -> None:
        """One batch, all or nothing: each op's ``result`` set, or an error raised."""
        await self._send(frame([(op.kind.value, op.args, op.durable) for op in ops]))
        answer = await self._receive()
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
            if len(self._buf) >= _HEADER.size:
                (size,) = _HEADER.unpack_from(self._buf)
                end = _HEADER.size + size
                if len(self._buf) >= end:
                    data, self._buf = self._buf[_HEADER.size : end], self._buf[end:]
                    return pickle.loads(data)  # noqa: S301 (our own child, our own pipe)
            try:
                self._buf += await stdout.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError) as exc:
                raise JournalClosedError("the journal writer process is gone") from exc

    def _stream(self) -> Process:
        if self._proc is None:
            raise JournalClosedError("the journal writer process is not running")
        return self._proc


# ---------------------------------------------------------------------------- the child


def _read_exact(src: BinaryIO, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = src.read(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _read_frame(src: BinaryIO) -> Any:
    head = _read_exact(src, _HEADER.size)
    if head is None:
        return None
    body = _read_exact(src, _HEADER.unpack(head)[0])
    return None if body is None else pickle.loads(body)  # noqa: S301 (from our parent)


class _Child:
    """Applies batches with the same code as the in-loop writer, synchronously."""

    def __init__(self, config: Any, chain: Any) -> None:
        from gateway.journal.config import JournalKeys
        from gateway.journal.protect import DataProtector
        from gateway.journal.sqlite import CHECKPOINT_RECORDS, SqliteJournal

        # The writer only chains and stores rows the gateway prepared: it never encrypts or
        # decrypts, so its protector holds a throw-away key, never the data keys.
        protector = DataProtector({"writer": os.urandom(32)}, "writer", os.urandom(32))
        self.journal = SqliteJournal(config, keys=JournalKeys(protector, chain))
        self.every = CHECKPOINT_RECORDS
        self.since = 0
        self.catch_up = False
        self.checkpointing: threading.Thread | None = None

    def open(self) -> None:
        self.journal._open_sync()

    def close(self) -> None:
        if self.checkpointing is not None:
            self.checkpointing.join()
        self.journal._close_sync()

    def apply(self, batch: list[tuple[int, Any, bool]]) -> list[Any]:
        journal = self.journal
        if self.catch_up and self.checkpointing is None:
            # As in the loop writer: a short pass with no write running lets the WAL restart.
            self.catch_up = False
            journal._checkpoint_sync()
        ops = [Op(OpKind(kind), args, durable=durable) for kind, args, durable in batch]
        journal._commit_waiting(ops)
        fd = journal._wal_fd
        if journal.config.synchronous == "FULL" and fd is not None and any(o.durable for o in ops):
            getattr(os, "fdatasync", os.fsync)(fd)
        self.since += len(ops)
        if self.since >= self.every and self.checkpointing is None:
            self.since = 0
            self.checkpointing = threading.Thread(target=self._checkpoint, daemon=True)
            self.checkpointing.start()
        return [op.result for op in ops]

    def _checkpoint(self) -> None:
        try:
            self.journal._checkpoint_sync()
        except Exception as exc:  # a later one retries; the WAL only grows meanwhile
            print(f"journal writer: checkpoint failed: {exc}", file=sys.stderr)
        finally:
            self.catch_up = True
            self.checkpointing = None


def main() -> int:
    src, out = sys.stdin.buffer, sys.stdout.buffer
    first = _read_frame(src)
    if first is None:
        return 0
    try:
        child = _Child(*first)
        child.open()
    except Exception as exc:
        out.write(frame(("error", type(exc).__name__, str(exc))))
        out.flush()
        return 1
    out.write(frame(("ready",)))
    out.flush()
    try:
        while (batch := _read_frame(src)) is not None:
            try:
                answer: tuple[Any, ...] = ("ok", child.apply(batch))
            except Exception as exc:  # the batch is rolled back; the gateway retries each op
                answer = ("error", type(exc).__name__, str(exc))
            out.write(frame(answer))
            out.flush()
    finally:
        child.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
