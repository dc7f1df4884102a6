"""The journal writer process itself: ``python -m gateway.journal.writer``, started by
:class:`gateway.journal.writerproc.WriterProcess` (see there for why and the wire). Reads one
batch frame at a time from standard input, applies it with the in-loop writer's own code,
answers on standard output, and ends when its input closes."""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, BinaryIO

from gateway.journal.config import JournalKeys
from gateway.journal.groupcommit import Op, OpKind
from gateway.journal.protect import DataProtector
from gateway.journal.rows import prepare_deferred
from gateway.journal.sqlite import CHECKPOINT_RECORDS, SqliteJournal
from gateway.journal.writerproc import HEADER, frame, loads

_APPEND = OpKind.APPEND.value


def _read_exact(src: BinaryIO, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = src.read(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _read_frame(src: BinaryIO) -> Any:
    head = _read_exact(src, HEADER.size)
    if head is None:
        return None
    body = _read_exact(src, HEADER.unpack(head)[0])
    return None if body is None else loads(body)


class _Child:
    """Applies batches with the same code as the in-loop writer, synchronously."""

    def __init__(self, config: Any, chain: Any, protector: DataProtector) -> None:
        # The data keys encrypt the events the gateway deferred (it never decrypts here).
        self.protector = protector
        self.journal = SqliteJournal(config, keys=JournalKeys(protector, chain))
        self.every = CHECKPOINT_RECORDS
        self.since = 0
        self.catch_up = False
        self.checkpointing: threading.Thread | None = None

    def open(self) -> None:
        journal = self.journal
        journal._open_sync()
        # This process is the only writer of its gateway: it may wait for the lock another
        # process holds (the archive CLI) once per batch, set here once rather than per batch.
        assert journal._writer is not None
        journal._writer.execute(f"PRAGMA busy_timeout = {int(journal.config.busy_timeout_ms)}")

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
        protector = self.protector
        ops = []
        for kind, args, durable in batch:
            if kind == _APPEND:  # every event comes deferred (SqliteJournal._prepare_event)
                args = (prepare_deferred(args[0], protector), args[1])
            ops.append(Op(OpKind(kind), args, durable=durable))
        journal._commit_sync(ops, waiting=True)
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
