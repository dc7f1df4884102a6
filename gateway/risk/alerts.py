"""Alert events: every alert and risk decline, to sinks, a Prometheus counter and a ring.

Sinks are plain callables that must not block (the gateway's sink logs through structlog and
counts); a sink that raises is counted and skipped, never fails the transaction. The optional
webhook sink only enqueues; its own task POSTs, bounded, and counts what it drops.
"""

from __future__ import annotations

import http.client
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

import anyio
import anyio.abc
import orjson
from prometheus_client import REGISTRY, CollectorRegistry, Counter

from gateway.risk.model import RiskDecision, RuleHit


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One structured event: ``risk.decline`` (rc set) or ``risk.alert`` (alert rules only)."""

    event: str
    txn_id: str
    rc: str | None
    masked_pan: str
    score: int | None
    hits: tuple[RuleHit, ...]
    merchant_id: str
    terminal_id: str
    amount: int
    currency: str
    at: datetime

    @classmethod
    def from_decision(
        cls,
        decision: RiskDecision,
        *,
        merchant_id: str,
        terminal_id: str,
        amount: int,
        currency: str,
        at: datetime,
    ) -> AlertEvent:
        return cls(
            event="risk.decline" if decision.rc is not None else "risk.alert",
            txn_id=decision.txn_id,
            rc=decision.rc,
            masked_pan=decision.masked_pan,
            score=decision.score,
            hits=decision.hits,
            merchant_id=merchant_id,
            terminal_id=terminal_id,
            amount=amount,
            currency=currency,
            at=at,
        )

    @property
    def rules(self) -> tuple[str, ...]:
        """Names of the rules (not score signals) that fired."""
        return tuple(h.name for h in self.hits if h.kind != "signal")

    def to_dict(self) -> dict[str, object]:
        return {
            "event": self.event,
            "txn_id": self.txn_id,
            "rc": self.rc,
            "masked_pan": self.masked_pan,
            "score": self.score,
            "rules": list(self.rules),
            "hits": [h.to_dict() for h in self.hits],
            "merchant_id": self.merchant_id,
            "terminal_id": self.terminal_id,
            "amount": self.amount,
            "currency": self.currency,
            "at": self.at.isoformat(),
        }


AlertSink = Callable[[AlertEvent], None]


class AlertHub:
    """Fans an event out to the ring, the counter and the sinks."""

    def __init__(
        self,
        *,
        ring_size: int = 1000,
        sinks: Iterable[AlertSink] = (),
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        self._ring: deque[AlertEvent] = deque(maxlen=ring_size)
        self._sinks = list(sinks)
        self.sink_errors = 0
        self.events = Counter(
            "payswitch_risk_events",
            "Rules and score thresholds that fired, by rule and action (decline or alert)",
            ["rule", "action"],
            registry=registry,
        )

    def add_sink(self, sink: AlertSink) -> None:
        self._sinks.append(sink)

    def publish(self, event: AlertEvent) -> None:
        self._ring.append(event)
        for hit in event.hits:
            if hit.kind != "signal":
                self.events.labels(rule=hit.name, action=hit.action).inc()
        for sink in self._sinks:
            try:
                sink(event)
            except Exception:  # a broken sink must never fail a transaction
                self.sink_errors += 1

    def recent(self, limit: int | None = None) -> list[dict[str, object]]:
        """Newest first, JSON-able."""
        events = list(self._ring)[::-1]
        return [e.to_dict() for e in (events if limit is None else events[:limit])]


class WebhookSink:
    """POSTs events as JSON from a background task; ``__call__`` never blocks.

    Run :meth:`run` in a task group the gateway owns. Full queue: the event is dropped and
    counted. A failed POST is counted and not retried (alerts are also in logs and metrics).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 2.0,
        queue_size: int = 1000,
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError("webhook URL must be http:// or https://")
        self.url = url
        self.timeout = timeout
        self._send, self._receive = anyio.create_memory_object_stream[AlertEvent](queue_size)
        self._running = False
        self.sent = 0
        self.failed = 0
        self.dropped = Counter(
            "payswitch_risk_webhook_dropped",
            "Risk alert events not sent to the webhook (queue full or POST failed)",
            ["reason"],
            registry=registry,
        )

    def __call__(self, event: AlertEvent) -> None:
        try:
            self._send.send_nowait(event)
        except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            self.dropped.labels(reason="queue_full").inc()

    def _post(self, body: bytes) -> int:
        request = urllib.request.Request(  # noqa: S310 - scheme checked in __init__
            self.url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
            status: int = response.status
            return status

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Deliver queued events until cancelled (or :meth:`close` and the queue drains)."""
        self._running = True
        async with self._receive:
            task_status.started()
            async for event in self._receive:
                body = orjson.dumps(event.to_dict())
                try:
                    status = await anyio.to_thread.run_sync(
                        self._post, body, abandon_on_cancel=True
                    )
                except (OSError, ValueError, http.client.HTTPException):
                    status = 0
                if 200 <= status < 300:
                    self.sent += 1
                else:
                    self.failed += 1
                    self.dropped.labels(reason="post_failed").inc()

    def close(self, *, drain: bool = True) -> None:
        """No more events; :meth:`run` returns once the queue is drained. ``drain=False``
        also drops what is queued when :meth:`run` never started (shutdown)."""
        self._send.close()
        if not drain and not self._running:
            self._receive.close()
