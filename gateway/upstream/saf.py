"""Store-and-forward: deliver queued advices (0420 reversals, 0120 stand-in advices) to issuers.

One sender per issuer takes that issuer's queue in strict FIFO order (head-of-line: an advice
that fails is retried, with backoff, before anything behind it goes, so a 0120 is never
overtaken by the 0420 that reverses it). The queue lives in the journal's database, so it
survives restarts and is shared by the nodes of one PostgreSQL journal.

An advice cannot be declined: any answer acknowledges it, except the ones that say the issuer
did not process it (``63`` bad MAC, ``91``/``96`` issuer trouble) and an answer whose own link
MAC fails or cannot be checked (it proves nothing) — those are retried. An
acknowledged 0420 marks its original ``reversed``, a 0120 marks its transaction ``advised``;
the journal event is written before the advice is removed, so a crash in between only resends
an advice the issuer has already applied (it applies each once).

Late answers: an approval that arrives after its request timed out (the link's unmatched
answers) gets a further 0420 queued, in case the first one overtook the request at the issuer.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import time
from collections.abc import Callable, Mapping

import anyio
from anyio.abc import TaskStatus
from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.config import SafConfig
from gateway.flow.journal_stage import JournalRuntime, reversal_advice
from gateway.flow.participants import IssuerMessageHook
from gateway.flow.pipeline import Context
from gateway.journal import (
    Advice,
    Journal,
    JournalError,
    JournalEvent,
    NewAdvice,
    TxnState,
    next_attempt,
)
from gateway.upstream.links import IssuerPool, IssuerTimeout, LinkUnavailable
from kit.logs import get_logger
from protocols.errors import ProtocolError
from protocols.message import Message

log = get_logger("gateway.upstream.saf")

RETRY_CODES = frozenset({"63", "91", "96"})
"""Answers meaning the issuer did not process the advice: send it again later."""
_FAR_FUTURE = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)
_BATCH = 100


class SafMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.depth = Gauge(
            "switch_saf_depth", "Advices waiting for the issuer", ["issuer"], registry=registry
        )
        self.oldest = Gauge(
            "switch_saf_oldest_seconds",
            "Age of the oldest queued advice",
            ["issuer"],
            registry=registry,
        )
        self.sent = Counter(
            "switch_saf_sent",
            "Advice send attempts by outcome",
            ["issuer", "kind", "outcome"],
            registry=registry,
        )
        self.age_alerts = Counter(
            "switch_saf_age_alerts",
            "Alerts: the oldest advice is older than the configured age",
            ["issuer"],
            registry=registry,
        )
        self.late_reversals = Counter(
            "switch_late_approvals_reversed",
            "Approvals that arrived after the timeout and got a 0420",
            ["issuer"],
            registry=registry,
        )


class SafSender:
    """The advice queue of one issuer, sent over that issuer's pool."""

    def __init__(
        self,
        runtime: JournalRuntime,
        journal: Journal,
        pool: IssuerPool,
        cfg: SafConfig,
        metrics: SafMetrics,
        *,
        hook: IssuerMessageHook | None = None,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self.runtime = runtime
        self.journal = journal
        self.pool = pool
        self.cfg = cfg
        self.metrics = metrics
        self.hook = hook
        self.clock = clock
        self.issuer = pool.issuer
        self.delivered = 0
        self._last_alert = -math.inf

    async def run(self) -> None:
        while True:
            event = self.runtime.take_event(self.issuer)
            delay = await self._step()
            if delay > 0:
                with anyio.move_on_after(min(delay, self.cfg.poll_interval)):
                    await event.wait()

    async def _step(self) -> float:
        """Send what is due at the head of the queue; seconds to wait before the next step."""
        now = self.clock()
        try:
            await self._observe(now)
            if not self.pool.ready:
                return self.cfg.poll_interval  # woken when a link comes up
            queue = await self.journal.next_due(self.issuer, _FAR_FUTURE, _BATCH)
        except JournalError as exc:
            log.error("saf_journal_failed", issuer=self.issuer, error=str(exc))
            return self.cfg.poll_interval
        for advice in queue:
            if not self.pool.ready:
                return self.cfg.poll_interval  # woken when a link comes up
            now = self.clock()
            wait = (advice.next_attempt_at - now).total_seconds()
            if wait > 0:
                return wait  # head of line: nothing overtakes it
            try:
                # Another node's sender on the same journal may have it: one sends it.
                lease = now + dt.timedelta(seconds=2 * self.cfg.timeout + 1.0)
                mine = await self.journal.claim(advice, lease)
            except JournalError as exc:
                log.error("saf_journal_failed", issuer=self.issuer, error=str(exc))
                return self.cfg.poll_interval
            if not mine:
                return 0.0  # taken (or acknowledged) meanwhile: read the queue again
            if not await self._deliver(advice):
                return self.cfg.poll_interval
        return 0.0 if len(queue) == _BATCH else self.cfg.poll_interval

    async def _observe(self, now: dt.datetime) -> None:
        depth = await self.journal.saf_depth(self.issuer)
        self.metrics.depth.labels(self.issuer).set(depth.depth)
        age = depth.oldest_age(now)
        seconds = age.total_seconds() if age is not None else 0.0
        self.metrics.oldest.labels(self.issuer).set(seconds)
        current = anyio.current_time()
        if seconds > self.cfg.alert_age and current - self._last_alert >= self.cfg.alert_age:
            self._last_alert = current
            self.metrics.age_alerts.labels(self.issuer).inc()
            log.error(
                "saf_advice_too_old",
                issuer=self.issuer,
                depth=depth.depth,
                oldest_seconds=round(seconds, 1),
                alert_age=self.cfg.alert_age,
            )

    async def _deliver(self, advice: Advice) -> bool:
        """One attempt; True when the advice was acknowledged (and removed)."""
        msg = Message(advice.kind, dict(advice.fields))
        error = await self._send(msg)
        if isinstance(error, Message):
            return await self._acknowledged(advice, error)
        attempts = advice.attempts + 1
        when = next_attempt(
            self.clock(),
            attempts,
            base=self.cfg.backoff_base,
            cap=self.cfg.backoff_max,
            draw=random.random(),
        )
        self.metrics.sent.labels(self.issuer, advice.kind, "retry").inc()
        log.info(
            "saf_retry",
            issuer=self.issuer,
            advice=advice.advice_id,
            kind=advice.kind,
            attempts=attempts,
            error=error,
        )
        await self.journal.reschedule(advice.advice_id, when, attempts, error=error)
        return False

    async def _send(self, msg: Message) -> Message | str:
        """The issuer's answer, or why there is none (or none to trust)."""
        now = time.monotonic()
        # issuer_request: the advice is journaled (queued), so an untrusted answer to it is
        # not logged as a reversal lost; it is simply sent again.
        ctx = Context(
            request=msg,
            received=now,
            deadline=now + self.cfg.timeout,
            now=self.clock(),
            rrn="",
            issuer_request=msg,
        )
        if self.hook is not None and (rc := await self.hook.seal(ctx, self.pool, msg)) is not None:
            return f"seal_{rc}"
        try:
            answer = await self.pool.request(msg, self.cfg.timeout)
        except IssuerTimeout:
            return "timeout"
        except LinkUnavailable:
            return "unavailable"
        except ProtocolError as exc:
            return f"protocol: {exc}"
        if self.hook is not None and await self.hook.check_answer(ctx, self.pool, answer):
            # A MAC that fails (or cannot be checked) acknowledges nothing: the advice is sent
            # again, and the issuer applies it once.
            return f"answer_{ctx.answer_rejected or 'rejected'}"
        rc = answer.fields.get("39", "")
        if rc in RETRY_CODES:
            return f"rc_{rc}"
        return answer

    async def _acknowledged(self, advice: Advice, answer: Message) -> bool:
        now = self.clock()
        rc = answer.fields.get("39", "")
        if advice.kind == "0420":
            event = JournalEvent(
                txn_id=advice.txn_id, state=TxnState.REVERSED, at=now, note=f"advice_rc_{rc}"
            )
        else:
            event = JournalEvent(txn_id=advice.txn_id, state=TxnState.ADVISED, at=now)
        try:
            await self.journal.append(event)
            await self.journal.ack(advice.advice_id)
        except JournalError as exc:
            log.error("saf_journal_failed", issuer=self.issuer, error=str(exc))
            return False
        self.delivered += 1
        self.metrics.sent.labels(self.issuer, advice.kind, "acknowledged").inc()
        log.info(
            "saf_delivered", issuer=self.issuer, advice=advice.advice_id, kind=advice.kind, rc=rc
        )
        return True


class SafService:
    """Every issuer's sender, plus the late-answer handler; runs in the gateway's task group."""

    def __init__(
        self,
        runtime: JournalRuntime,
        journal: Journal,
        pools: Mapping[str, IssuerPool],
        cfg: SafConfig,
        metrics: SafMetrics,
        *,
        hook: IssuerMessageHook | None,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self.runtime = runtime
        self.journal = journal
        self.pools = pools
        self.metrics = metrics
        self.clock = clock
        self.senders = {
            issuer: SafSender(runtime, journal, pool, cfg, metrics, hook=hook, clock=clock)
            for issuer, pool in pools.items()
        }
        send, receive = anyio.create_memory_object_stream[tuple[str, Message]](1000)
        self._late_send = send
        self._late_receive = receive

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with self._late_send:
            async with anyio.create_task_group() as tg:
                for sender in self.senders.values():
                    tg.start_soon(sender.run)
                tg.start_soon(self._late_loop)
                task_status.started()

    def link_state_changed(self, pool: IssuerPool) -> None:
        if pool.ready:
            self.runtime.wake(pool.issuer)

    def late_answer(self, issuer: str, msg: Message) -> None:
        """From the link (synchronous): an answer that matched no pending request."""
        if msg.fields.get("39") != "00" or msg.mti not in ("0110", "0210"):
            return
        try:
            self._late_send.send_nowait((issuer, msg))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            log.warning("late_approval_after_stop", issuer=issuer)
        except anyio.WouldBlock:
            log.error("late_approval_dropped", issuer=issuer)

    async def _late_loop(self) -> None:
        async with self._late_receive:
            async for issuer, msg in self._late_receive:
                try:
                    await self._reverse_late(issuer, msg)
                except JournalError as exc:
                    log.error("late_approval_not_reversed", issuer=issuer, error=str(exc))

    async def _reverse_late(self, issuer: str, answer: Message) -> None:
        key = (issuer, answer.fields.get("11", ""), answer.fields.get("7", ""))
        txn_id = self.runtime.late.pop(key, None)
        pool = self.pools.get(issuer)
        if txn_id is None or pool is None:
            log.warning("late_approval_unknown", issuer=issuer)
            return
        stored = await self.journal.get(txn_id)
        sent = None if stored is None else stored.request
        if stored is None or sent is None or "t" not in sent:
            return
        original = Message(sent["t"], {k: v for k, v in sent.items() if k != "t"})
        now = self.clock()
        advice = reversal_advice(
            original,
            stan=pool.next_stan(),
            now=now,
            acquirer_id=self.runtime.acquirer_id,
            pan=stored.pan or "",
        )
        await self.journal.enqueue_advice(
            NewAdvice(
                issuer_id=issuer, kind="0420", txn_id=txn_id, fields=advice.fields, created_at=now
            )
        )
        self.metrics.late_reversals.labels(issuer).inc()
        log.warning("late_approval_reversed", issuer=issuer, rrn=txn_id)
        self.runtime.wake(issuer)
