"""Group commit: many concurrent writers, one transaction per batch, each caller released
only when its own record is committed.

Writers put an :class:`Op` on a bounded queue and wait until it is marked finished. A single
committer task takes whatever is queued (up to ``max_batch``), optionally waits ``max_delay``
for more, and hands the batch to the backend's ``commit`` (one database transaction, one
fsync). Each batch has one event, set when it is finished: a record costs a deque append
and a wait, not an event and a channel checkpoint of its own. A record waits on the event of
the batch it will be in (the one forming while it is queued), so it wakes once, when its
own batch is done, not also at the end of the batch committing when it arrived.

While that commit runs, new records pile up and form the next batch, so under load
the cost of an fsync is shared by everyone who arrived during the previous one.

If a batch fails, each op is retried alone, so one bad record fails only its own writer.
Ops marked ``exclusive`` (archive, restore, rebuild) always run in a batch of their own.

``depth`` > 1 lets that many batches be committing at once, for a backend that applies them
in the order they were handed over (the writer process: one pipe, one writer): the next
batch leaves while the one before is being written and synced, instead of waiting for its
answer to travel back through a busy event loop first. Each batch keeps its own event; an
exclusive batch waits until none is in flight.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from enum import Enum, auto
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from gateway.journal.errors import JournalClosedError, JournalError, JournalWriteError
from gateway.journal.model import JournalStatistics


class OpKind(Enum):
    APPEND = auto()
    ENQUEUE = auto()
    ACK = auto()
    RESCHEDULE = auto()
    CLAIM = auto()
    CUSTOM = auto()


class Op:
    """One write waiting for its batch. ``result`` is set by the backend's commit."""

    __slots__ = ("args", "durable", "error", "exclusive", "finished", "kind", "result")

    def __init__(
        self, kind: OpKind, args: Any, *, durable: bool = True, exclusive: bool = False
    ) -> None:
        self.kind = kind
        self.args = args
        self.durable = durable
        self.exclusive = exclusive
        self.finished = False
        self.result: Any = None
        self.error: BaseException | None = None


CommitFn = Callable[[list[Op]], Awaitable[None]]
Done = Callable[[BaseException | None], None]
SendFn = Callable[[list[Op], Done], None]
"""Starts a batch's commit now, without awaiting: ``done(None)`` once it is on disk (each
op's ``result`` set), ``done(error)`` if it is not. Called back in the order sent."""


class _Sent:
    """A batch handed to ``send`` and not yet answered."""

    __slots__ = ("batch", "settled", "taken")

    def __init__(self, batch: list[Op], taken: anyio.Event) -> None:
        self.batch = batch
        self.taken = taken
        self.settled = False


class GroupCommitter:
    def __init__(
        self,
        commit: CommitFn,
        *,
        max_batch: int,
        max_delay: float,
        queue_size: int,
        depth: int = 1,
        send: SendFn | None = None,
    ) -> None:
        self._commit = commit
        # With ``send`` (the journal writer process on asyncio), a pipelined batch is handed
        # over and answered by callback: no task per batch, no task waking up to read the
        # answer; its writers wake one loop iteration after the answer is read (two to four
        # fewer per commit, at two commits per transaction).
        self._send = send
        self._sent: deque[_Sent] = deque()
        self._tg: TaskGroup | None = None
        self._depth = depth
        self._in_flight = 0
        self._slot_free: anyio.Event | None = None  # set when a batch in flight is done
        self._max_batch = max_batch
        self._max_delay = max_delay
        self._queue_size = queue_size
        self._queue: deque[Op] = deque()
        self._closed = False
        self._wake: anyio.Event | None = None  # set when the idle committer has work
        self._batch_done: anyio.Event | None = None  # set (and replaced) after each batch
        self._forming: anyio.Event | None = None  # the next batch's: what queued ops wait on
        self._ops = self._batches = self._largest = self._failed = 0

    def statistics(self) -> JournalStatistics:
        return JournalStatistics(self._ops, self._batches, self._largest, self._failed)

    async def submit(self, op: Op) -> Any:
        """Queue ``op`` and wait until its batch is committed; its result or an error."""
        while True:
            if self._closed or self._batch_done is None:
                raise JournalClosedError("the journal is closed")
            if len(self._queue) < self._queue_size:
                break
            await self._batch_done.wait()  # back-pressure: a full queue waits for a batch
        self._queue.append(op)
        if self._wake is not None:
            self._wake.set()
        while not op.finished:
            forming = self._forming
            assert forming is not None  # set with _batch_done, never cleared
            await forming.wait()  # set when the batch taking this op is done
        if op.error is not None:
            if isinstance(op.error, JournalError):  # our own typed errors pass as they are
                raise op.error
            raise JournalWriteError(f"write not committed: {type(op.error).__name__}") from (
                op.error
            )
        return op.result

    def close(self) -> None:
        """No new ops; the committer drains what is queued, then returns."""
        self._closed = True
        if self._wake is not None:
            self._wake.set()

    async def _wait_for_work(self, timeout: float | None) -> None:
        self._wake = anyio.Event()
        try:
            if timeout is None:
                await self._wake.wait()
            else:
                with anyio.move_on_after(timeout):
                    await self._wake.wait()
        finally:
            self._wake = None

    async def _next_batch(self) -> tuple[list[Op], anyio.Event] | None:
        queue = self._queue
        while not queue:
            if self._closed:
                return None
            await self._wait_for_work(None)
        if self._max_delay > 0 and not queue[0].exclusive:
            deadline = anyio.current_time() + self._max_delay
            while len(queue) < self._max_batch and not self._closed:
                remaining = deadline - anyio.current_time()
                if remaining <= 0:
                    break
                await self._wait_for_work(remaining)
        return self._take()

    def _take(self) -> tuple[list[Op], anyio.Event]:
        queue = self._queue
        first = queue.popleft()
        batch = [first]
        if not first.exclusive:
            while queue and len(batch) < self._max_batch and not queue[0].exclusive:
                batch.append(queue.popleft())
        # Ops queued from now on form the next batch; ops left over (past max_batch) wake at
        # this batch's end and wait again on the new event.
        taken, self._forming = self._forming, anyio.Event()
        assert taken is not None  # set by run() before the first batch
        return batch, taken

    async def _retry_each(self, batch: list[Op], error: BaseException) -> None:
        if len(batch) == 1:
            batch[0].error = error
            return
        for op in batch:  # isolate the bad record: retry each alone
            op.result = None
            try:
                await self._commit([op])
            except Exception as single:
                op.error = single

    def _finish(self, batch: list[Op], taken: anyio.Event | None) -> None:
        for op in batch:
            op.finished = True
        if taken is not None:
            taken.set()
        done, self._batch_done = self._batch_done, anyio.Event()
        if done is not None:
            done.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The committer loop; returns after :meth:`close` once the queue is drained."""
        self._batch_done = anyio.Event()
        self._forming = anyio.Event()
        task_status.started()
        try:
            if self._depth <= 1:
                while (formed := await self._next_batch()) is not None:
                    await self._run_batch(*formed)
            else:
                await self._run_pipelined()
        finally:
            # Cancelled or done: nothing queued waits for a committer that is gone.
            self._closed = True
            left = list(self._queue)
            self._queue.clear()
            for op in left:
                op.error = JournalClosedError("the journal is closed")
            self._finish(left, None)
            if self._forming is not None:
                self._forming.set()  # wake whoever still waits on a batch that never forms

    async def _run_pipelined(self) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                while True:
                    # A free slot first, then the batch: ops keep piling up while none is free.
                    while self._in_flight >= self._depth:
                        await self._wait_slot()
                    formed = await self._next_batch()
                    if formed is None:
                        break
                    if formed[0][0].exclusive:
                        while self._in_flight:
                            await self._wait_slot()
                        await self._run_batch(*formed)
                        continue
                    self._in_flight += 1
                    if self._send is not None:
                        self._send_batch(*formed)
                    else:
                        tg.start_soon(self._run_slot, *formed)
                while self._in_flight:  # drained: the batches sent are answered first
                    await self._wait_slot()
            finally:
                # Cancelled: no writer waits for an answer that will not be read any more.
                while self._sent:
                    sent = self._sent.popleft()
                    sent.settled = True
                    self._closed_during_write(sent.batch)
                    self._finish(sent.batch, sent.taken)
                self._tg = None

    def _send_batch(self, batch: list[Op], taken: anyio.Event) -> None:
        assert self._send is not None
        tg = self._tg
        assert tg is not None  # set for as long as batches are sent (see _run_pipelined)
        self._count(batch)
        sent = _Sent(batch, taken)
        self._sent.append(sent)

        def done(error: BaseException | None) -> None:
            if sent.settled:
                return  # already failed at close
            sent.settled = True
            self._sent.remove(sent)  # the oldest: answers come in the order sent
            if error is None:
                self._finish(batch, taken)
                self._slot_done()
                self._send_next()
                return
            self._failed += 1
            # The committer's task group outlives every batch it sent: at its end those not
            # answered are settled (failed) above, and a late answer returns at ``settled``.
            tg.start_soon(self._isolate, batch, taken, error)

        try:
            self._send(batch, done)
        except Exception as exc:  # not even sent (the writer is gone)
            done(exc)

    def _send_next(self) -> None:
        """From an answer's callback: what queued while every slot was busy leaves now,
        not one loop iteration later when the committer task would wake up for it."""
        queue = self._queue
        if (
            queue
            and self._in_flight < self._depth
            and self._tg is not None
            and not self._closed
            and not self._max_delay
            and not queue[0].exclusive
        ):
            self._in_flight += 1
            self._send_batch(*self._take())

    async def _isolate(self, batch: list[Op], taken: anyio.Event, error: BaseException) -> None:
        """A failed batch: each op again alone, so one bad record fails only its writer."""
        try:
            await self._retry_each(batch, error)
        except BaseException:
            self._closed_during_write(batch)
            raise
        finally:
            self._finish(batch, taken)
            self._slot_done()

    def _count(self, batch: list[Op]) -> None:
        self._batches += 1
        self._ops += len(batch)
        self._largest = max(self._largest, len(batch))

    @staticmethod
    def _closed_during_write(batch: list[Op]) -> None:
        for op in batch:  # cancelled mid-write: no writer may take it as committed
            if op.error is None:
                op.error = JournalClosedError("the journal closed during the write")

    def _slot_done(self) -> None:
        self._in_flight -= 1
        if self._slot_free is not None:
            self._slot_free.set()

    async def _wait_slot(self) -> None:
        self._slot_free = event = anyio.Event()
        await event.wait()

    async def _run_slot(self, batch: list[Op], taken: anyio.Event) -> None:
        try:
            await self._run_batch(batch, taken)
        finally:
            self._slot_done()

    async def _run_batch(self, batch: list[Op], taken: anyio.Event | None = None) -> None:
        self._count(batch)
        try:
            try:
                await self._commit(batch)
            except Exception as exc:
                self._failed += 1
                await self._retry_each(batch, exc)
        except BaseException:
            self._closed_during_write(batch)
            raise
        finally:
            self._finish(batch, taken)
