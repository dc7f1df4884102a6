"""State of the QR API: payments with their refunds, and idempotency keys.

Two stores behind one interface (:class:`QrStore`): :class:`MemoryQrStore` (bounded, lives as
long as the process) and :class:`SqliteQrStore` (one SQLite file, WAL, ``synchronous=FULL``, so
payments, refunds and idempotent answers survive a restart). A payment's outcome and its
idempotency entry are written in one transaction before the HTTP answer goes out.

Dynamic merchant-presented QR codes this API issued are kept too (their reference, and the
payment that paid one, written with that payment): a code pays once, across restarts with the
SQLite store.

What is kept: ids, merchant, amounts, status, codes, RRN, times, the card number *sealed*
(AES-256-GCM under the QR key, bound to the payment id: a refund needs the card) and masked;
idempotency entries hold a keyed HMAC of the request body and the first answer (which shows the
masked card number only). Never a clear card number, token, track, CVV or PIN.

:class:`IdempotencyStore` coordinates requests in flight (a repeat waits for the first) on top
of a store; only completed answers are stored.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

import anyio

from gateway.flow.tokens import PanCipher
from gateway.qr.models import PaymentView, RefundView
from kit.conf import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from gateway.config import QrApiConfig

Status = Literal["approved", "declined"]
Key = tuple[str, str]
"""(acquirer, idempotency key): keys are scoped per acquirer."""
OPEN: Final = "open"
"""A dynamic code issued and not paid (:meth:`QrStore.code`); a paid one answers its payment's
id."""
R = TypeVar("R")


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
    """Sum of approved refunds (refunds in flight are reserved by the service)."""

    @property
    def remaining(self) -> int:
        return self.amount - self.refunded

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


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """What an idempotent POST answered first: replayed as is."""

    status: int
    body: bytes
    location: str | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    """An idempotency key's first answer, with the fingerprint of the request that got it."""

    fingerprint: bytes
    created: float
    """Wall-clock seconds (epoch): the window must hold across restarts."""
    response: StoredResponse


@dataclass(frozen=True, slots=True)
class Claim:
    """A key being served for the first time: what the operation stores with its outcome."""

    key: Key
    fingerprint: bytes
    created: float

    def entry(self, response: StoredResponse) -> Entry:
        return Entry(self.fingerprint, self.created, response)


class StoreKeyError(ConfigError):
    """The store was written under another QR key: its sealed cards and fingerprints are
    unreadable with this one."""


class QrStore(ABC):
    """Payments, refunds and idempotency entries; open with ``async with``."""

    def __init__(self, *, window: float = 86400.0, max_payments: int = 1_000_000) -> None:
        self.window = window
        self.max_payments = max_payments

    async def __aenter__(self) -> QrStore:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    @abstractmethod
    async def payment(self, payment_id: str) -> Payment | None: ...

    @abstractmethod
    async def entry(self, key: Key, now: float) -> Entry | None:
        """The key's entry unless unknown or older than the window."""

    @abstractmethod
    async def save_payment(
        self, payment: Payment, key: Key, entry: Entry, *, code: str | None = None
    ) -> None:
        """A new payment and its idempotency entry, together; with ``code``, the dynamic QR
        code (its reference) this payment paid is marked paid in the same write."""

    @abstractmethod
    async def save_entry(self, key: Key, entry: Entry) -> None:
        """An idempotency entry alone (a step-up challenge: no payment yet); the payment that
        completes it replaces it."""

    @abstractmethod
    async def issue_code(self, reference: str, created: float) -> None:
        """A dynamic QR code issued (open until a payment pays it). Bounded like payments:
        the oldest codes beyond ``max_payments`` are forgotten."""

    @abstractmethod
    async def code(self, reference: str) -> str | None:
        """:data:`OPEN`, the id of the payment that paid it, or ``None`` (not issued here, or
        forgotten)."""

    @abstractmethod
    async def save_refund(self, refund: Refund, key: Key, entry: Entry) -> None:
        """A refund (counted in its payment when approved) and its idempotency entry."""


class MemoryQrStore(QrStore):
    """Bounded: payments by count (oldest first), idempotency keys by age and count."""

    def __init__(
        self,
        *,
        window: float = 86400.0,
        max_payments: int = 1_000_000,
        max_entries: int = 1_000_000,
    ) -> None:
        super().__init__(window=window, max_payments=max_payments)
        self.max_entries = max_entries
        self._payments: OrderedDict[str, Payment] = OrderedDict()
        self._entries: OrderedDict[Key, Entry] = OrderedDict()
        self._codes: OrderedDict[str, str] = OrderedDict()
        """Dynamic code reference -> OPEN or the paying payment's id, oldest first."""

    def __len__(self) -> int:
        return len(self._payments)

    async def payment(self, payment_id: str) -> Payment | None:
        return self._payments.get(payment_id)

    async def entry(self, key: Key, now: float) -> Entry | None:
        found = self._entries.get(key)
        if found is not None and now - found.created > self.window:
            del self._entries[key]
            return None
        return found

    def _put_entry(self, key: Key, entry: Entry) -> None:
        entries = self._entries
        entries[key] = entry
        entries.move_to_end(key)
        while entries:
            oldest_key, oldest = next(iter(entries.items()))
            if entry.created - oldest.created <= self.window and len(entries) <= self.max_entries:
                break
            del entries[oldest_key]

    def add(self, payment: Payment) -> None:
        self._payments[payment.payment_id] = payment
        while len(self._payments) > self.max_payments:
            self._payments.popitem(last=False)

    async def save_payment(
        self, payment: Payment, key: Key, entry: Entry, *, code: str | None = None
    ) -> None:
        self.add(payment)
        self._put_entry(key, entry)
        if code is not None:
            self._put_code(code, payment.payment_id)

    async def save_entry(self, key: Key, entry: Entry) -> None:
        self._put_entry(key, entry)

    async def issue_code(self, reference: str, created: float) -> None:
        if reference not in self._codes:
            self._put_code(reference, OPEN)

    async def code(self, reference: str) -> str | None:
        return self._codes.get(reference)

    def _put_code(self, reference: str, state: str) -> None:
        self._codes[reference] = state
        while len(self._codes) > self.max_payments:
            self._codes.popitem(last=False)

    async def save_refund(self, refund: Refund, key: Key, entry: Entry) -> None:
        payment = self._payments.get(refund.payment_id)
        if payment is not None:
            payment.refunds.append(refund)
            if refund.status == "approved":
                payment.refunded += refund.amount
        self._put_entry(key, entry)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS payments (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    payment_id TEXT NOT NULL UNIQUE,
    acquirer TEXT NOT NULL,
    merchant_id TEXT NOT NULL,
    terminal_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    amount INTEGER NOT NULL,
    currency TEXT NOT NULL,
    status TEXT NOT NULL,
    response_code TEXT NOT NULL,
    auth_code TEXT,
    rrn TEXT NOT NULL,
    created_at TEXT NOT NULL,
    sealed_pan BLOB NOT NULL,
    masked_pan TEXT NOT NULL,
    refunded INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS refunds (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    refund_id TEXT NOT NULL UNIQUE,
    payment_id TEXT NOT NULL REFERENCES payments (payment_id) ON DELETE CASCADE,
    amount INTEGER NOT NULL,
    currency TEXT NOT NULL,
    status TEXT NOT NULL,
    response_code TEXT NOT NULL,
    auth_code TEXT,
    rrn TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS refunds_payment ON refunds (payment_id);
CREATE TABLE IF NOT EXISTS idempotency (
    acquirer TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint BLOB NOT NULL,
    created REAL NOT NULL,
    status INTEGER NOT NULL,
    body BLOB NOT NULL,
    location TEXT,
    PRIMARY KEY (acquirer, key)
);
CREATE INDEX IF NOT EXISTS idempotency_created ON idempotency (created);
CREATE TABLE IF NOT EXISTS qr_codes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    reference TEXT NOT NULL UNIQUE,
    payment_id TEXT,
    created REAL NOT NULL
);
"""
_PAY_CODE = (
    "INSERT INTO qr_codes (reference, payment_id, created) VALUES (?, ?, ?)"
    " ON CONFLICT (reference) DO UPDATE SET payment_id = excluded.payment_id"
)
_SELECT_PAYMENT = (
    "SELECT payment_id, acquirer, merchant_id, terminal_id, kind, amount, currency, status,"
    " response_code, auth_code, rrn, created_at, sealed_pan, masked_pan, refunded"
    " FROM payments WHERE payment_id = ?"
)
_INSERT_PAYMENT = (
    "INSERT INTO payments (payment_id, acquirer, merchant_id, terminal_id, kind, amount,"
    " currency, status, response_code, auth_code, rrn, created_at, sealed_pan, masked_pan,"
    " refunded) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SELECT_REFUNDS = (
    "SELECT refund_id, payment_id, amount, currency, status, response_code, auth_code, rrn,"
    " created_at FROM refunds WHERE payment_id = ? ORDER BY seq"
)
_INSERT_REFUND = (
    "INSERT INTO refunds (refund_id, payment_id, amount, currency, status, response_code,"
    " auth_code, rrn, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class SqliteQrStore(QrStore):
    """One SQLite file; every call runs in a worker thread (``anyio.to_thread``), one at a time.

    ``key_check`` is a value derived from the QR key (a keyed hash of a constant): stored at
    the first open, compared at each later one, so a changed key stops the start instead of
    turning every retry into a 409 and every refund into an error.
    """

    def __init__(
        self,
        path: Path,
        *,
        key_check: bytes,
        window: float = 86400.0,
        max_payments: int = 1_000_000,
    ) -> None:
        super().__init__(window=window, max_payments=max_payments)
        self.path = path
        self._key_check = key_check
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    async def __aenter__(self) -> SqliteQrStore:
        await anyio.to_thread.run_sync(self._open)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await anyio.to_thread.run_sync(self._close)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # an answer is sent only once on disk
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
            db.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('key_check', ?)",
                (self._key_check,),
            )
            (stored,) = db.execute("SELECT value FROM meta WHERE name = 'key_check'").fetchone()
            if bytes(stored) != self._key_check:
                raise StoreKeyError(
                    f"{self.path} was written under another QR key ([qr_api] store_key)"
                )
        except BaseException:
            db.close()
            raise
        self._db = db

    def _close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    async def _call(self, fn: Callable[[sqlite3.Connection], R]) -> R:
        def run() -> R:
            with self._lock:
                if self._db is None:
                    raise RuntimeError("the QR store is not open")
                return fn(self._db)

        return await anyio.to_thread.run_sync(run)

    async def payment(self, payment_id: str) -> Payment | None:
        def read(db: sqlite3.Connection) -> Payment | None:
            row = db.execute(_SELECT_PAYMENT, (payment_id,)).fetchone()
            if row is None:
                return None
            refunds = db.execute(_SELECT_REFUNDS, (payment_id,)).fetchall()
            *columns, refunded = row
            payment = Payment(*columns)
            payment.sealed_pan = bytes(payment.sealed_pan)
            payment.refunds = [Refund(*r) for r in refunds]
            payment.refunded = refunded
            return payment

        return await self._call(read)

    async def entry(self, key: Key, now: float) -> Entry | None:
        def read(db: sqlite3.Connection) -> Entry | None:
            row = db.execute(
                "SELECT fingerprint, created, status, body, location FROM idempotency"
                " WHERE acquirer = ? AND key = ?",
                key,
            ).fetchone()
            if row is None or now - row[1] > self.window:
                return None  # an expired row is purged by the next write
            fingerprint, created, status, body, location = row
            return Entry(bytes(fingerprint), created, StoredResponse(status, bytes(body), location))

        return await self._call(read)

    def _write(self, db: sqlite3.Connection, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in statements:
                db.execute(sql, params)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _entry_statements(self, key: Key, entry: Entry) -> list[tuple[str, tuple[Any, ...]]]:
        r = entry.response
        return [
            ("DELETE FROM idempotency WHERE created < ?", (entry.created - self.window,)),
            (
                "INSERT OR REPLACE INTO idempotency"
                " (acquirer, key, fingerprint, created, status, body, location)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (*key, entry.fingerprint, entry.created, r.status, r.body, r.location),
            ),
        ]

    async def save_payment(
        self, payment: Payment, key: Key, entry: Entry, *, code: str | None = None
    ) -> None:
        p = payment
        values = (
            p.payment_id,
            p.acquirer,
            p.merchant_id,
            p.terminal_id,
            p.kind,
            p.amount,
            p.currency,
            p.status,
            p.response_code,
            p.auth_code,
            p.rrn,
            p.created_at,
            p.sealed_pan,
            p.masked_pan,
            p.refunded,
        )
        # Bounded like the memory store: the oldest payments beyond max_payments go.
        trim = (
            "DELETE FROM payments WHERE seq <= (SELECT MAX(seq) FROM payments) - ?",
            (self.max_payments,),
        )
        statements = [(_INSERT_PAYMENT, values), trim, *self._entry_statements(key, entry)]
        if code is not None:
            statements.append((_PAY_CODE, (code, p.payment_id, entry.created)))
        await self._call(lambda db: self._write(db, statements))

    async def save_entry(self, key: Key, entry: Entry) -> None:
        statements = self._entry_statements(key, entry)
        await self._call(lambda db: self._write(db, statements))

    async def issue_code(self, reference: str, created: float) -> None:
        statements: list[tuple[str, tuple[Any, ...]]] = [
            (
                "INSERT OR IGNORE INTO qr_codes (reference, payment_id, created)"
                " VALUES (?, NULL, ?)",
                (reference, created),
            ),
            (
                "DELETE FROM qr_codes WHERE seq <= (SELECT MAX(seq) FROM qr_codes) - ?",
                (self.max_payments,),
            ),
        ]
        await self._call(lambda db: self._write(db, statements))

    async def code(self, reference: str) -> str | None:
        def read(db: sqlite3.Connection) -> str | None:
            row = db.execute(
                "SELECT payment_id FROM qr_codes WHERE reference = ?", (reference,)
            ).fetchone()
            if row is None:
                return None
            paid: str | None = row[0]
            return OPEN if paid is None else paid

        return await self._call(read)

    async def save_refund(self, refund: Refund, key: Key, entry: Entry) -> None:
        r = refund
        values = (
            r.refund_id,
            r.payment_id,
            r.amount,
            r.currency,
            r.status,
            r.response_code,
            r.auth_code,
            r.rrn,
            r.created_at,
        )
        statements: list[tuple[str, tuple[Any, ...]]] = [(_INSERT_REFUND, values)]
        if r.status == "approved":
            statements.append(
                (
                    "UPDATE payments SET refunded = refunded + ? WHERE payment_id = ?",
                    (r.amount, r.payment_id),
                )
            )
        statements += self._entry_statements(key, entry)
        await self._call(lambda db: self._write(db, statements))


class IdempotencyConflict(Exception):
    """The key was used before with a different request."""


class IdempotencyStore:
    """First answer per (scope, key); a repeat gets it again, a different request a conflict.

    The operation stores its outcome with the :class:`Claim`'s entry (one transaction); one that
    raises (a bad QR code, a refund too large) stores nothing, so the key may be retried once
    the request is fixed. A repeat arriving while the first is still running waits for it.
    """

    def __init__(self, store: QrStore, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self._in_flight: dict[Key, tuple[bytes, anyio.Event]] = {}

    async def run(
        self,
        key: Key,
        fingerprint: bytes,
        operation: Callable[[Claim], Awaitable[StoredResponse]],
    ) -> tuple[StoredResponse, bool]:
        """``(response, replayed)``; raises :class:`IdempotencyConflict` on a different request."""
        while True:
            flight = self._in_flight.get(key)
            if flight is not None:
                if flight[0] != fingerprint:
                    raise IdempotencyConflict
                await flight[1].wait()  # if the first fails, the key is free again
                continue
            now = self.clock()
            found = await self.store.entry(key, now)
            if key in self._in_flight:
                continue  # claimed by another request while this one read the store
            if found is not None:
                if found.fingerprint != fingerprint:
                    raise IdempotencyConflict
                return found.response, True
            done = anyio.Event()
            self._in_flight[key] = (fingerprint, done)
            try:
                return await operation(Claim(key, fingerprint, now)), False
            finally:
                del self._in_flight[key]
                done.set()


def store_from_config(
    cfg: QrApiConfig,
    base_dir: Path,
    vault: PanCipher,
    environ: Mapping[str, str] = os.environ,
) -> tuple[QrStore, PanCipher]:
    """The store ``[qr_api]`` names (not open yet) and the cipher the QR service must use with
    it: the store key for a file (the same at every start), else the token vault's."""
    if not cfg.store_file or cfg.port < 0:  # workers other than the first serve no QR API
        store = MemoryQrStore(window=cfg.idempotency_window, max_payments=cfg.max_payments)
        return store, vault
    text = cfg.store_key or environ.get(cfg.store_key_env, "")
    if not text:
        raise StoreKeyError(f"[qr_api] store_key_env: {cfg.store_key_env} is not set")
    try:
        cipher = PanCipher(bytes.fromhex(text.strip()))
    except ValueError:
        raise StoreKeyError("[qr_api] store key: 64 hex digits expected") from None
    sqlite = SqliteQrStore(
        base_dir / cfg.store_file,
        key_check=cipher.lookup_key("payswitch qr store key check v1"),
        window=cfg.idempotency_window,
        max_payments=cfg.max_payments,
    )
    return sqlite, cipher
