"""The journal in the pipeline: every terminal request and its outcome, durably, in order.

Participants and hooks (their place in the pipeline is set in ``Gateway``):

* :class:`JournalStage`, first in the pipeline, so every request that enters it is recorded
  whatever stage answers it. Its ``commit``/``abort`` run last, after the response is built and
  before the terminal sees it: ``answered`` (approvals durable), ``timed_out`` with the 0420
  that reverses what was sent (no answer, or one whose link MAC failed), ``stood_in`` with
  its 0120, and ``reversed`` on the original of a successful reversal. If an approval cannot
  be journaled the terminal gets ``96``, never an approval the books do not hold.
* :class:`JournalReceive` (after routing): ``received``, not synced (losing it on power failure
  loses nothing: nothing was sent yet); PostgreSQL only (other nodes must see the request in
  progress), on SQLite the first record is ``sent_to_issuer`` or the outcome.
* :class:`JournalIssuerHook` wraps ``QueryIssuer``'s issuer-message hook: ``sent_to_issuer`` is
  committed durably *before* the message leaves; a crash from then on is reversed at start
  (:func:`recover_in_flight`). If the journal cannot take it, nothing is sent (``96``).
* :class:`JournalCheckDuplicate` / :class:`JournalFindOriginal`: the in-memory
  ``RecentTransactions`` stays the first level; on a miss the journal answers (older than the
  process, or another node's), and its answer is cached in memory.

The transaction id is the RRN (unique per switch and node, across restarts). Payloads are ISO
fields with ``"t"`` = MTI; the journal strips PIN blocks, track data and KSNs and encrypts the
rest. The ``request`` payload is the terminal's request until the transaction is sent, then the
message the issuer got (the one a reversal must name in field 90).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING

import anyio

from gateway.flow.evicted import EvictedKeys
from gateway.flow.participants import REVERSALS, CheckDuplicate, FindOriginal, IssuerMessageHook
from gateway.flow.pipeline import BaseParticipant, Context
from gateway.flow.recent import RecentTransactions, TxnEntry
from gateway.flow.rrn import rrn_node
from gateway.flow.switch import ECHO, ECHO_REVERSAL
from gateway.journal import (
    Journal,
    JournalError,
    JournalEvent,
    NewAdvice,
    StoredTxn,
    TxnState,
)
from gateway.metrics import Metrics
from gateway.upstream.links import IssuerPool, transmission_time
from kit.logs import get_logger
from protocols.keys import DuplicateKey, duplicate_key, key_of, original_data
from protocols.message import Message
from protocols.mti import response_mti

if TYPE_CHECKING:
    from gateway.config import SafConfig

log = get_logger("gateway.flow.journal_stage")

# Issuer-message fields an advice carries (never 35/52/55 or a MAC; the SAF sender MACs it).
ADVICE_FIELDS = (
    "2", "3", "4", "12", "13", "14", "15", "18", "22", "23", "32", "37", "41", "42", "49", "95",
)  # fmt: skip
ISSUER_REQUESTS = frozenset({"0100", "0120", "0200", "0220", "0400", "0420"})
APPROVED_STATES = frozenset({TxnState.ANSWERED, TxnState.STOOD_IN, TxnState.ADVISED})
STAND_IN_NOTE = "stand_in"
_LATE_MAX = 100_000


def _digits(value: str | None, length: int) -> str | None:
    if value is not None and len(value) == length and value.isascii() and value.isdigit():
        return value
    return None


def _text(value: str | None) -> str | None:
    return value if value and len(value) <= 64 and value.isprintable() else None


def payload(msg: Message) -> dict[str, str]:
    """ISO fields of ``msg`` as a journal payload (``"t"`` = MTI)."""
    return {"t": msg.mti, **msg.fields}


def message_of(data: Mapping[str, str] | None) -> Message | None:
    """The message a payload was made from (``None`` without one)."""
    if not data or "t" not in data:
        return None
    return Message(data["t"], {k: v for k, v in data.items() if k != "t"})


def issuer_keys(stored: StoredTxn) -> tuple[str, str, str] | None:
    """(MTI, STAN, transmission) of what the issuer got for ``stored``, if it got anything."""
    sent = message_of(stored.request)
    if stored.issuer_id is None or sent is None or sent.mti not in ISSUER_REQUESTS:
        return None
    if "32" not in sent.fields or "11" not in sent.fields or "7" not in sent.fields:
        return None  # the terminal's request: never sent to the issuer
    return sent.mti, sent.fields["11"], sent.fields["7"]


def reversal_advice(
    sent: Message, *, stan: str, now: dt.datetime, acquirer_id: str, pan: str = ""
) -> Message:
    """The 0420 that undoes ``sent`` at the issuer (a reversal is repeated as an advice)."""
    fields = {k: sent.fields[k] for k in ADVICE_FIELDS if k in sent.fields}
    if "2" not in fields and pan:
        fields["2"] = pan
    fields["7"] = transmission_time(now)
    fields["11"] = stan
    if sent.mti in REVERSALS and "90" in sent.fields:
        fields["90"] = sent.fields["90"]
    else:
        fields.pop("95", None)
        fields["90"] = original_data(sent.mti, sent.fields["11"], sent.fields["7"], acquirer_id)
    return Message("0420", fields)


class JournalRuntime:
    """The journal as the pipeline sees it: ``None`` until ``Gateway.run`` has opened it.

    Also the rendezvous of the pipeline and the SAF senders: a new advice wakes its issuer's
    sender, and timed-out requests are remembered so a late approval can be reversed.
    """

    def __init__(self, acquirer_id: str, saf: SafConfig, *, window: float) -> None:
        self.acquirer_id = acquirer_id
        self.saf = saf
        self.window = window
        self.journal: Journal | None = None
        self.opened_at = 0.0
        self.known: set[DuplicateKey] | None = None
        """Duplicate keys in the journal at start (SQLite), or None: unknown, always ask."""
        self._wake: dict[str, anyio.Event] = {}
        self.late: OrderedDict[tuple[str, str, str], str] = OrderedDict()
        """(issuer, STAN, transmission) of timed-out requests -> their transaction id."""

    def attach(self, journal: Journal | None) -> None:
        self.journal = journal
        self.opened_at = anyio.current_time()
        self.known = None

    async def load_known(
        self, now: dt.datetime, limit: int, evicted: EvictedKeys | None = None
    ) -> None:
        """SQLite (one node): the duplicate keys the journal holds for the window, read once
        at start from the index's clear columns (terminal, STAN, field 7, MTI class; never
        card data). Requests since start are all in memory, so a memory miss needs the
        journal only for a key read here. PostgreSQL (other nodes write too): unknown.

        Up to ``limit`` keys are kept in a set. Beyond (a busy switch's day), with ``evicted``
        they go into its Bloom filters as keys memory no longer holds, newest first up to
        what its memory takes (older ones: the filter is blind, always asking, until they
        leave the window); without, every miss asks the journal. Before this, a restart
        with more than ``limit`` keys in the window made every request ask the journal
        for the rest of the process's life."""
        journal = self.journal
        if journal is None or journal.config.backend != "sqlite":
            return
        since = int((now - dt.timedelta(seconds=self.window)).timestamp() * 1_000_000)
        now_us = int(now.timestamp() * 1_000_000)
        mono = anyio.current_time()
        path = journal.config.path
        window = self.window

        def read() -> set[DuplicateKey] | None:
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                sql = (
                    "SELECT substr(mti, 2, 1), terminal_id, stan, transmission, created_us "
                    "FROM txns WHERE created_us >= ? AND mti IS NOT NULL ORDER BY created_us"
                )
                rows = con.execute(sql + " LIMIT ?", (since, limit + 1)).fetchall()
                if len(rows) <= limit:
                    return {key_of(r[0], r[1] or "", r[2] or "", r[3] or "") for r in rows}
                if evicted is None:
                    return None  # too many to hold: ask the journal on every miss
                first = since
                budget = evicted.key_budget()
                older = con.execute(
                    "SELECT created_us FROM txns WHERE created_us >= ? AND mti IS NOT NULL "
                    "ORDER BY created_us DESC LIMIT 1 OFFSET ?",
                    (since, budget),
                ).fetchone()
                if older is not None:  # more than the filter holds: blind for the oldest
                    first = older[0] + 1
                    evicted.blind_until = mono - (now_us - older[0]) / 1e6 + window
                cur = con.execute(sql, (first,))
                while batch := cur.fetchmany(10_000):
                    for r in batch:
                        key = key_of(r[0], r[1] or "", r[2] or "", r[3] or "")
                        evicted.add(key, mono - (now_us - r[4]) / 1e6)
                return set()
            finally:
                con.close()

        self.known = await anyio.to_thread.run_sync(read)

    def may_know(self, key: DuplicateKey) -> bool:
        """Can the journal know ``key`` when memory does not? (False only when certain.)"""
        return self.known is None or key in self.known

    # -- SAF wake-ups ----------------------------------------------------------------------

    def wake(self, issuer: str) -> None:
        """Something for ``issuer``'s sender (a new advice, a link that came up)."""
        event = self._wake.get(issuer)
        if event is None:
            event = self._wake[issuer] = anyio.Event()
        event.set()

    def take_event(self, issuer: str) -> anyio.Event:
        """A fresh event for ``issuer``'s sender; take it *before* looking at the queue, so a
        wake-up during the look is not lost."""
        event = self._wake.get(issuer)
        if event is None or event.is_set():
            event = self._wake[issuer] = anyio.Event()
        return event

    def remember_timeout(self, issuer: str, sent: Message, txn_id: str) -> None:
        key = (issuer, sent.fields.get("11", ""), sent.fields.get("7", ""))
        self.late[key] = txn_id
        while len(self.late) > _LATE_MAX:
            self.late.popitem(last=False)


def request_event(ctx: Context, state: TxnState, **extra: object) -> JournalEvent:
    """A first event of ``ctx``'s transaction, with everything the index needs."""
    f = ctx.request.fields
    f90 = f.get("90", "")
    amount = _digits(f.get("4"), 12)
    values: dict[str, object] = {
        "mti": ctx.request.mti,
        "processing_code": _digits(f.get("3"), 6),
        "amount": int(amount) if amount is not None else None,
        "currency": _digits(f.get("49"), 3),
        "terminal_id": _text(f.get("41")),
        "merchant_id": _text(f.get("42")),
        "stan": _digits(f.get("11"), 6),
        "transmission": _digits(f.get("7"), 10),
        "issuer_id": ctx.issuer,
        "rrn": ctx.rrn,
        "pan": ctx.pan or None,
        "business_date": ctx.business_date,
    }
    if "request" not in extra:  # the caller's payload (e.g. the issuer message) wins
        values["request"] = payload(ctx.request)
    if len(f90) >= 20:
        values["orig_mti"] = _digits(f90[:4], 4)
        values["orig_stan"] = _digits(f90[4:10], 6)
        values["orig_transmission"] = _digits(f90[10:20], 10)
    values.update(extra)
    return JournalEvent(txn_id=ctx.rrn, state=state, at=ctx.now, **values)  # type: ignore[arg-type]


class JournalReceive(BaseParticipant):
    """``received``: the request passed the checks and is routed (not synced).

    PostgreSQL only: there another node may see the request in progress (a repeat sent to
    it must not be processed twice). On SQLite one node holds every request in progress in
    memory, and a repeat of one a crash left ``received`` is processed anew anyway, so the
    record would change nothing: the transaction's first record is written by whichever
    comes first, ``sent_to_issuer`` (durable, before the message leaves) or the outcome,
    with everything ``received`` would have held. One record (and fsync share) less.
    """

    name = "journal-receive"

    def __init__(self, runtime: JournalRuntime, started: set[str]) -> None:
        self.runtime = runtime
        self.started = started

    async def prepare(self, ctx: Context) -> str | None:
        journal = self.runtime.journal
        if journal is None or journal.config.backend == "sqlite":
            return None
        try:
            await journal.append(request_event(ctx, TxnState.RECEIVED), durable=False)
        except JournalError as exc:
            log.error("journal_write_failed", stage="received", rrn=ctx.rrn, error=str(exc))
            return ctx.decline("96", "journal unavailable")
        self.started.add(ctx.rrn)
        return None


class JournalIssuerHook:
    """``QueryIssuer``'s hook: the inner hook (link MAC) first, then ``sent_to_issuer``,
    committed durably before the message leaves."""

    def __init__(
        self, runtime: JournalRuntime, started: set[str], inner: IssuerMessageHook | None
    ) -> None:
        self.runtime = runtime
        self.started = started
        self.inner = inner

    async def seal(self, ctx: Context, pool: IssuerPool, msg: Message) -> str | None:
        if self.inner is not None and (rc := await self.inner.seal(ctx, pool, msg)) is not None:
            return rc
        journal = self.runtime.journal
        if journal is None:
            return None
        sent = payload(msg)
        if ctx.rrn in self.started:
            event = JournalEvent(
                txn_id=ctx.rrn,
                state=TxnState.SENT_TO_ISSUER,
                at=ctx.now,
                issuer_id=pool.issuer,
                request=sent,
            )
        else:
            event = request_event(ctx, TxnState.SENT_TO_ISSUER, issuer_id=pool.issuer, request=sent)
        try:
            await journal.append(event)
        except JournalError as exc:
            log.error("journal_write_failed", stage="sent", rrn=ctx.rrn, error=str(exc))
            return ctx.decline("96", "journal unavailable: not sent")
        self.started.add(ctx.rrn)
        ctx.issuer_request = msg
        return None

    async def check_answer(self, ctx: Context, pool: IssuerPool, answer: Message) -> str | None:
        if self.inner is None:
            return None
        return await self.inner.check_answer(ctx, pool, answer)


class JournalStage(BaseParticipant):
    """First in the pipeline; records each outcome before the terminal sees it."""

    name = "journal"

    def __init__(
        self, runtime: JournalRuntime, started: set[str], pools: Mapping[str, IssuerPool]
    ) -> None:
        self.runtime = runtime
        self.started = started
        self.pools = pools

    async def commit(self, ctx: Context) -> None:
        await self._finish(ctx)

    async def abort(self, ctx: Context) -> None:
        await self._finish(ctx)

    async def _finish(self, ctx: Context) -> None:
        journal = self.runtime.journal
        first = ctx.rrn not in self.started
        self.started.discard(ctx.rrn)
        if journal is None or ctx.response is None:
            return
        try:
            await self._record(journal, ctx, first)
        except (JournalError, ValueError) as exc:
            self._withhold(ctx, exc)

    def _event(self, ctx: Context, first: bool, state: TxnState, **extra: object) -> JournalEvent:
        if first:
            return request_event(ctx, state, **extra)
        return JournalEvent(txn_id=ctx.rrn, state=state, at=ctx.now, **extra)  # type: ignore[arg-type]

    async def _record(self, journal: Journal, ctx: Context, first: bool) -> None:
        assert ctx.response is not None
        resp = ctx.response
        outcome: dict[str, object] = {
            "response_code": ctx.rc,
            "auth_code": resp.fields.get("38"),
            "response": payload(resp),
        }
        if ctx.stood_in and ctx.advice is not None and ctx.issuer is not None:
            # The 0120 is the issuer's record of this transaction: a reversal names it.
            event = self._event(
                ctx,
                first,
                TxnState.STOOD_IN,
                note=STAND_IN_NOTE,
                issuer_id=ctx.issuer,
                **outcome,
            )
            event = dataclasses.replace(event, request=payload(ctx.advice))
            await journal.append_with_advice(event, self._advice(ctx.issuer, ctx.advice, ctx))
            self.runtime.wake(ctx.issuer)
            return
        if ctx.advice is not None and ctx.issuer is not None:
            # A reversal acknowledged here and forwarded to the issuer as a 0420 advice; the
            # original is marked reversed when the issuer acknowledges it.
            original = ctx.original
            target = original.rrn if original is not None and original.rrn else ctx.rrn
            event = self._event(ctx, first, TxnState.ANSWERED, note="forwarded", **outcome)
            advice = self._advice(ctx.issuer, ctx.advice, ctx, txn_id=target)
            await journal.append_with_advice(event, advice)
            self.runtime.wake(ctx.issuer)
            return
        sent = ctx.issuer_request
        # An answer that could not be trusted (MAC) counts as none: reversed the same way.
        failure = ctx.issuer_failure or ctx.answer_rejected
        if failure is not None and sent is not None and ctx.issuer is not None:
            await self._timed_out(journal, ctx, first, sent, outcome, failure)
            return
        original = ctx.original
        if (
            ctx.approved
            and ctx.request.mti in REVERSALS
            and original is not None
            and original.rrn
            and ctx.reversed_amount
        ):
            # The original first: a crash before the reversal's own record leaves that one
            # ``sent_to_issuer``, and recovery repeats it as an 0420 (applied once). The other
            # order could lose the reversal from the books while the issuer applied it.
            # A partial reversal (field 95) leaves the original approved for what remains:
            # settlement then counts that amount, not the original one.
            await journal.append(
                JournalEvent(txn_id=original.rrn, state=TxnState.REVERSED, at=ctx.now)
                if original.reversed
                else JournalEvent(
                    txn_id=original.rrn,
                    state=TxnState.ANSWERED,
                    at=ctx.now,
                    amount=original.amount,
                )
            )
        durable = ctx.approved
        await journal.append(self._event(ctx, first, TxnState.ANSWERED, **outcome), durable=durable)

    async def _timed_out(
        self,
        journal: Journal,
        ctx: Context,
        first: bool,
        sent: Message,
        outcome: dict[str, object],
        failure: str,
    ) -> None:
        """No answer (or none to trust): whatever the issuer did with ``sent`` is undone by a
        0420 advice, queued in the same commit as the ``timed_out`` record (note
        ``issuer_`` + ``failure``: ``timeout``, ``unavailable``, ``bad_mac``, ...)."""
        assert ctx.issuer is not None
        pool = self.pools.get(ctx.issuer)
        if pool is None:
            return
        advice = reversal_advice(
            sent,
            stan=pool.next_stan(),
            now=ctx.now,
            acquirer_id=self.runtime.acquirer_id,
            pan=ctx.pan,
        )
        target = ctx.rrn
        original = ctx.original
        if sent.mti in REVERSALS and original is not None and original.rrn:
            target = original.rrn
        # A reversal that timed out is still owed: it goes on as an advice; the terminal's
        # own repeat will find the original not yet reversed and try again, which the issuer
        # applies once.
        event = self._event(ctx, first, TxnState.TIMED_OUT, note=f"issuer_{failure}")
        event = dataclasses.replace(event, **outcome)  # type: ignore[arg-type]
        delay = dt.timedelta(seconds=self.runtime.saf.reversal_delay)
        new = self._advice(ctx.issuer, advice, ctx, txn_id=target, delay=delay)
        await journal.append_with_advice(event, new)
        no_answer = ctx.issuer_failure is not None
        if no_answer and sent.mti not in REVERSALS:
            # A late approval gets a further 0420 (an untrusted answer came already: none).
            self.runtime.remember_timeout(ctx.issuer, sent, ctx.rrn)
        log.warning(
            "issuer_no_answer_reversal_queued"
            if no_answer
            else "issuer_answer_untrusted_reversal_queued",
            issuer=ctx.issuer,
            rrn=ctx.rrn,
            failure=failure,
            mti=sent.mti,
        )
        self.runtime.wake(ctx.issuer)

    @staticmethod
    def _advice(
        issuer: str,
        msg: Message,
        ctx: Context,
        *,
        txn_id: str | None = None,
        delay: dt.timedelta | None = None,
    ) -> NewAdvice:
        return NewAdvice(
            issuer_id=issuer,
            kind=msg.mti,
            txn_id=txn_id or ctx.rrn,
            fields=dict(msg.fields),
            created_at=ctx.now,
            next_attempt_at=ctx.now + delay if delay else None,
        )

    def _withhold(self, ctx: Context, exc: Exception) -> None:
        """The outcome could not be journaled: an approval is not given (the books do not
        hold it); the issuer side is reversed by start-up recovery (it stays ``sent``)."""
        log.error(
            "journal_write_failed",
            stage="outcome",
            rrn=ctx.rrn,
            rc=ctx.rc,
            error=f"{type(exc).__name__}: {exc}",
        )
        resp = ctx.response
        if resp is not None and ctx.approved:
            resp.fields.pop("38", None)
            resp.fields.pop("54", None)
            resp.fields["39"] = "96"
            ctx.rc = "96"
            if ctx.entry is not None:  # the window keeps a copy: a repeat gets this answer
                ctx.entry.response = resp


def entry_from_stored(stored: StoredTxn, created: float) -> TxnEntry:
    """A finished in-memory entry for a transaction the journal knows (restart, other node)."""
    entry = TxnEntry(created=created)
    entry.response = message_of(stored.response)
    entry.issuer = stored.issuer_id
    keys = issuer_keys(stored)
    if keys is not None:
        entry.issuer_mti, entry.issuer_stan, entry.issuer_time = keys
    entry.rrn = stored.rrn or stored.txn_id
    entry.amount = stored.amount or 0
    entry.currency = stored.currency or ""
    entry.when = stored.created_at
    entry.business_date = stored.business_date
    entry.approved = stored.response_code == "00" and stored.state in APPROVED_STATES
    entry.reversed = stored.state == TxnState.REVERSED
    entry.pan = stored.pan or ""
    entry.done.set()
    return entry


def _created(ctx: Context, stored: StoredTxn) -> float:
    """``stored``'s creation on the monotonic clock of ``ctx`` (the in-memory window)."""
    age = max((ctx.now - stored.created_at).total_seconds(), 0.0)
    return ctx.received - age


class JournalCheckDuplicate(CheckDuplicate):
    """Duplicate transmissions across restarts and nodes: memory first, then the journal."""

    def __init__(self, recent: RecentTransactions, metrics: Metrics, runtime: JournalRuntime):
        super().__init__(recent, metrics)
        self.runtime = runtime

    async def prepare(self, ctx: Context) -> str | None:
        journal = self.runtime.journal
        key = duplicate_key(ctx.request)
        if (
            journal is not None
            and self.recent.get(key, ctx.received) is None
            and self._may_know(key, ctx.received)
        ):
            f = ctx.request.fields
            try:
                stored = await journal.find_duplicate(
                    f.get("41", ""), f.get("11", ""), f.get("7", ""), ctx.now, mti=ctx.request.mti
                )
            except JournalError as exc:
                log.error("journal_read_failed", stage="duplicate", error=str(exc))
                return ctx.decline("96", "journal unavailable")
            if stored is not None and not self._retry_allowed(journal, stored):
                entry = entry_from_stored(stored, _created(ctx, stored))
                if entry.response is None and stored.state == TxnState.TIMED_OUT:
                    entry.response = _crash_answer(ctx, stored)
                _prime(self.recent, key, entry)
        return await super().prepare(ctx)

    def _may_know(self, key: DuplicateKey, now: float) -> bool:
        """Can the journal hold ``key`` when memory does not? False only when certain: not
        among the keys it held at start, and not evicted from memory within the window."""
        if self.runtime.may_know(key):
            return True
        recent = self.recent
        if recent.evicted is None:  # no record of what memory evicted: once full, ask
            return len(recent) >= recent.max_entries
        return recent.evicted.may_contain(key, now)

    @staticmethod
    def _retry_allowed(journal: Journal, stored: StoredTxn) -> bool:
        """A request a crash left ``received`` was never sent anywhere: its repeat is processed
        as new. (On PostgreSQL another node may still be working on it: there it is 94.)"""
        return stored.state == TxnState.RECEIVED and journal.config.backend == "sqlite"


def _crash_answer(ctx: Context, stored: StoredTxn) -> Message:
    """The answer owed for a request whose process died after sending it: recovery queued the
    0420, so a reversal is acknowledged (it will be applied) and anything else was not
    approved."""
    req = ctx.request
    echo = ECHO_REVERSAL if req.mti in REVERSALS else ECHO
    resp = Message(response_mti(req.mti), {k: req.fields[k] for k in echo if k in req.fields})
    resp["37"] = stored.rrn or stored.txn_id
    resp["39"] = "00" if req.mti in REVERSALS else "91"
    return resp


class JournalFindOriginal(FindOriginal):
    """Originals of reversals: memory first (waiting for one still in flight), then the
    journal (an original from before a restart)."""

    def __init__(self, recent: RecentTransactions, runtime: JournalRuntime) -> None:
        super().__init__(recent)
        self.runtime = runtime

    async def prepare(self, ctx: Context) -> str | None:
        req = ctx.request
        f90 = req.fields.get("90")
        if f90 is None or len(f90) < 20:
            return await super().prepare(ctx)
        key = key_of(f90[1], req.fields.get("41", ""), f90[4:10], f90[10:20])
        entry = self.recent.get(key, ctx.received)
        if entry is not None and not entry.done.is_set():
            # The terminal gave up on an original we are still waiting for: reverse its
            # outcome rather than answer 25.
            with anyio.move_on_after(max(ctx.deadline - time.monotonic(), 0)):
                await entry.done.wait()
        journal = self.runtime.journal
        if entry is None and journal is not None:
            try:
                stored = await journal.find_original(
                    req.fields.get("41", ""), f90[4:10], f90[10:20], orig_mti=f90[:4]
                )
            except JournalError as exc:
                log.error("journal_read_failed", stage="original", error=str(exc))
                return ctx.decline("96", "journal unavailable")
            if stored is not None:
                _prime(self.recent, key, entry_from_stored(stored, _created(ctx, stored)))
        return await super().prepare(ctx)


def _prime(recent: RecentTransactions, key: DuplicateKey, entry: TxnEntry) -> None:
    entry.done.set()
    recent.insert(key, entry)


async def recover_in_flight(
    journal: Journal,
    pools: Mapping[str, IssuerPool],
    *,
    acquirer_id: str,
    now: dt.datetime,
    node: int,
) -> int:
    """At start, before any traffic: every transaction a crash of this node left
    ``sent_to_issuer`` is marked ``timed_out`` and gets its 0420 queued (in one commit each).
    Another node's (its number in the RRN) is its own, live on a shared PostgreSQL journal:
    reversing it would reverse an approval that node is answering, so that node recovers it
    when it starts again."""
    count = 0
    for stored in await journal.in_flight():
        if rrn_node(stored.txn_id) != node:
            continue
        sent = message_of(stored.request)
        pool = pools.get(stored.issuer_id or "")
        if sent is None or pool is None or issuer_keys(stored) is None:
            log.error("recovery_cannot_reverse", txn=stored.txn_id, issuer=stored.issuer_id)
            continue
        advice = reversal_advice(
            sent, stan=pool.next_stan(), now=now, acquirer_id=acquirer_id, pan=stored.pan or ""
        )
        target = stored.txn_id
        if sent.mti in REVERSALS and stored.terminal_id and stored.orig_stan:
            original = await journal.find_original(
                stored.terminal_id,
                stored.orig_stan,
                stored.orig_transmission or "",
                orig_mti=stored.orig_mti,
            )
            if original is not None:
                target = original.txn_id
        # A reversal is owed to the terminal: acknowledged (the 0420 carries it out); anything
        # else was not approved as far as the terminal can ever learn.
        event = JournalEvent(
            txn_id=stored.txn_id,
            state=TxnState.TIMED_OUT,
            at=now,
            response_code="00" if sent.mti in REVERSALS else "91",
            note="crash_recovery",
        )
        await journal.append_with_advice(
            event,
            NewAdvice(
                issuer_id=pool.issuer,
                kind="0420",
                txn_id=target,
                fields=dict(advice.fields),
                created_at=now,
            ),
        )
        count += 1
    if count:
        log.warning("recovery_reversals_queued", count=count)
    return count
