"""In-memory state of the QR API: payments with their refunds, and idempotency keys.

Payments hold the card number sealed (AES-GCM, :class:`gateway.tokens.PanCipher`), opened only to
route a refund, plus its masked form. Both stores are bounded: payments by count (oldest first),
idempotency keys by age. A durable store is the journal's business; this one lives as long as
the gateway process, like the duplicate-transmission table.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

import anyio

from gateway.qr.models import PaymentView, RefundView

Status = Literal["approved", "declined"]
T = TypeVar("T")


@dataclass(slots=True)
class Refund:
    refund_id: str
    payment_id: str
    amount: int
    currency: str
    status: Status
    response_code: str
    auth_code: str | None
    rrn: str
    created_at: str

    def view(self) -> RefundView:
        return RefundView(
            refund_id=self.refund_id,
            payment_id=self.payment_id,
            status=self.status,
            response_code=self.response_code,
            auth_code=self.auth_code,
            rrn=self.rrn,
            amount=self.amount,
            currency=self.currency,
            created_at=self.created_at,
        )


@dataclass(slots=True)
class Payment:
    payment_id: str
    acquirer: str
    merchant_id: str
    terminal_id: str
    kind: Literal["mpm", "cpm"]
    amount: int
    currency: str
    status: Status
    response_code: str
    auth_code: str | None
    rrn: str
    created_at: str
    sealed_pan: bytes = field(repr=False)
    masked_pan: str
    refunds: list[Refund] = field(default_factory=list)
    refunded: int = 0
    """Sum of approved refunds."""
    reserved: int = 0
    """Sum of refunds in flight: counted against what remains so two cannot overdraw."""

    @property
    def remaining(self) -> int:
        return self.amount - self.refunded - self.reserved

    def view(self) -> PaymentView:
        return PaymentView(
            payment_id=self.payment_id,
            status=self.status,
            response_code=self.response_code,
            auth_code=self.auth_code,
            rrn=self.rrn,
            amount=self.amount,
            currency=self.currency,
            created_at=self.created_at,
            merchant_id=self.merchant_id,
            kind=self.kind,
            masked_pan=self.masked_pan,
            refunded_amount=self.refunded,
            refunds=[r.view() for r in self.refunds],
        )


class PaymentStore:
    def __init__(self, *, max_payments: int = 1_000_000) -> None:
        self.max_payments = max_payments
        self._payments: OrderedDict[str, Payment] = OrderedDict()

    def __len__(self) -> int:
        return len(self._payments)

    def add(self, payment: Payment) -> None:
        self._payments[payment.payment_id] = payment
        while len(self._payments) > self.max_payments:
            self._payments.popitem(last=False)

    def get(self, acquirer: str, payment_id: str) -> Payment | None:
        """The payment when it exists and belongs to ``acquirer`` (others see nothing)."""
        payment = self._payments.get(payment_id)
        if payment is None or payment.acquirer != acquirer:
            return None
        return payment


class IdempotencyConflict(Exception):
    """The key was used before with a different request."""


@dataclass(slots=True)
class _Record(Generic[T]):
    fingerprint: bytes
    created: float
    done: anyio.Event = field(default_factory=anyio.Event)
    result: T | None = None


class IdempotencyStore(Generic[T]):
    """First result per (scope, key); a repeat gets it again, a different request a conflict.

    A request whose operation raises (a bad QR code, a refund too large) leaves no trace, so it
    may be retried with the same key once fixed. A repeat arriving while the first is still
    running waits for it.
    """

    def __init__(self, *, window: float = 86400.0, max_entries: int = 1_000_000) -> None:
        self.window = window
        self.max_entries = max_entries
        self._records: OrderedDict[tuple[str, str], _Record[T]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def _evict(self, now: float) -> None:
        records = self._records
        while records:
            key, oldest = next(iter(records.items()))
            expired = now - oldest.created > self.window and oldest.done.is_set()
            if not expired and len(records) <= self.max_entries:
                break
            del records[key]

    async def run(
        self,
        key: tuple[str, str],
        fingerprint: bytes,
        operation: Callable[[], Awaitable[T]],
    ) -> tuple[T, bool]:
        """``(result, replayed)``; raises :class:`IdempotencyConflict` on a different request."""
        while True:
            now = anyio.current_time()
            record = self._records.get(key)
            if record is not None and now - record.created > self.window and record.done.is_set():
                del self._records[key]
                record = None
            if record is None:
                return await self._first(key, fingerprint, operation, now), False
            if record.fingerprint != fingerprint:
                raise IdempotencyConflict
            if record.result is not None:
                return record.result, True
            await record.done.wait()  # in flight; if it fails, the key is free again

    async def _first(
        self,
        key: tuple[str, str],
        fingerprint: bytes,
        operation: Callable[[], Awaitable[T]],
        now: float,
    ) -> T:
        record: _Record[T] = _Record(fingerprint, now)
        self._records[key] = record
        self._evict(now)
        try:
            record.result = await operation()
        except BaseException:
            if self._records.get(key) is record:
                del self._records[key]
            raise
        finally:
            record.done.set()
        return record.result
