"""Group commit: many concurrent writers, one transaction per batch, each caller released
only when its own record is committed.

Writers put an :class:`Op` on a bounded memory channel and wait on the op's event. A single
committer task takes whatever is queued (up to ``max_batch``), optionally waits ``max_delay``
for more, and hands the batch to the backend's ``commit`` (one database transaction, one
fsync). While that commit runs, new records pile up and form the next batch, so under load
the cost of an fsync is shared by everyone who arrived during the previous one.

If a batch fails, each op is retried alone, so one bad record fails only its own writer.
Ops marked ``exclusive`` (archive, restore, rebuild) always run in a batch of their own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from enum import Enum, auto
from typing import Any

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from gateway.journal.errors import JournalClosedError, JournalError, JournalWriteError
from gateway.journal.model import JournalStatistics


class OpKind(Enum):
    APPEND = auto()
    ENQUEUE = auto()
    ACK = auto()
    RESCHEDULE = auto()
    CUSTOM = auto()


class Op:
    """One write waiting for its batch. ``result`` is set by the backend's commit."""

    __slots__ = ("args", "done", "durable", "error", "exclusive", "kind", "result")

    def __init__(
        self, kind: OpKind, args: Any, *, durable: bool = True, exclusive: bool = False
    ) -> None:
        self.kind = kind
        self.args = args
        self.durable = durable
        self.exclusive = exclusive
        self.done = anyio.Event()
        self.result: Any = None
        self.error: BaseException | None = None


CommitFn = Callable[[list[Op]], Awaitable[None]]


class GroupCommitter:
    def __init__(
        self, commit: CommitFn, *, max_batch: int, max_delay: float, queue_size: int
    ) -> None:
        self._commit = commit
        self._max_batch = max_batch
        self._max_delay = max_delay
        send, receive = anyio.create_memory_object_stream[Op](queue_size)
        self._send: MemoryObjectSendStream[Op] = send
        self._receive: MemoryObjectReceiveStream[Op] = receive
        self._held: Op | None = None
        self._ops = self._batches = self._largest = self._failed = 0

    def statistics(self) -> JournalStatistics:
        return JournalStatistics(self._ops, self._batches, self._largest, self._failed)

    async def submit(self, op: Op) -> Any:
        """Queue ``op`` and wait until its batch is committed; its result or an error."""
        try:
            await self._send.send(op)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise JournalClosedError("the journal is closed") from None
        await op.done.wait()
        if op.error is not None:
            if isinstance(op.error, JournalError):  # our own typed errors pass as they are
                raise op.error
            raise JournalWriteError(f"write not committed: {type(op.error).__name__}") from (
                op.error
            )
        return op.result

    def close(self) -> None:
        """No new ops; the committer drains what is queued, then returns."""
        self._send.close()

    async def _next_batch(self) -> list[Op] | None:
        first = self._held
        self._held = None
        if first is None:
            try:
                first = await self._receive.receive()
            except anyio.EndOfStream:
                return None
        batch = [first]
        if first.exclusive:
            return batch
        deadline = anyio.current_time() + self._max_delay
        while len(batch) < self._max_batch:
            op: Op | None = None
            try:
                op = self._receive.receive_nowait()
            except anyio.WouldBlock:
                remaining = deadline - anyio.current_time()
                if remaining <= 0:
                    break
                with anyio.move_on_after(remaining), contextlib.suppress(anyio.EndOfStream):
                    op = await self._receive.receive()
            except anyio.EndOfStream:
                pass
            if op is None:
                break
            if op.exclusive:
                self._held = op
                break
            batch.append(op)
        return batch

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The committer loop; returns after :meth:`close` once the queue is drained."""
        task_status.started()
        async with self._receive:
            while (batch := await self._next_batch()) is not None:
                await self._run_batch(batch)

    async def _run_batch(self, batch: list[Op]) -> None:
        self._batches += 1
        self._ops += len(batch)
        self._largest = max(self._largest, len(batch))
        try:
            await self._commit(batch)
        except Exception as exc:
            self._failed += 1
            if len(batch) == 1:
                batch[0].error = exc
            else:
                for op in batch:  # isolate the bad record: retry each alone
                    op.result = None
                    try:
                        await self._commit([op])
                    except Exception as single:
                        op.error = single
        for op in batch:
            op.done.set()
