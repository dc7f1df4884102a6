"""The spine's participants: check fields, duplicate check, find original, route, query issuer."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Protocol

import anyio

from gateway.flow.pipeline import WAIT, BaseParticipant, Context
from gateway.flow.recent import RecentTransactions, TxnEntry
from gateway.flow.routing import BinTable
from gateway.metrics import Metrics
from gateway.upstream.links import IssuerPool, IssuerTimeout, LinkUnavailable, transmission_time
from kit.dataset import Dataset, Merchant, Terminal
from kit.logs import get_logger
from protocols.business_day import settlement_mmdd
from protocols.keys import DuplicateKey, duplicate_key, key_of, original_data
from protocols.message import Message
from protocols.validate import card_of, check_request

log = get_logger("gateway.flow.pipeline")

# Terminal fields passed on to the issuer unchanged; 52 only as translated by the HSM
# (Context.pin_block), 53 and 64 never.
# What goes on to the issuer: never 52 as received, 53 or 123 (the terminal's PIN data; the
# translated block is added as 52).
ISSUER_FIELDS = (
    "2", "3", "4", "12", "13", "14", "22", "23", "35", "41", "42", "48", "49", "55", "95",
)  # fmt: skip
REVERSALS = frozenset({"0400", "0420"})


class CheckFields(BaseParticipant):
    name = "check-fields"

    def __init__(self, dataset: Dataset) -> None:
        self.terminals: Mapping[str, Terminal] = {t.id: t for t in dataset.terminals}
        self.merchants: Mapping[str, Merchant] = {m.id: m for m in dataset.merchants}

    async def prepare(self, ctx: Context) -> str | None:
        return self.prepare_now(ctx)

    def prepare_now(self, ctx: Context) -> str | None:
        req = ctx.request
        issue = check_request(req)
        if issue is not None:
            return ctx.decline(issue.rc, f"field {issue.field}: {issue.reason}")
        terminal = self.terminals.get(req.fields["41"])
        if terminal is None:
            return ctx.decline("58", "unknown terminal")
        ctx.terminal = terminal
        ctx.merchant = self.merchants.get(terminal.merchant)
        if req.mti not in REVERSALS or "2" in req.fields or "35" in req.fields:
            ctx.pan, ctx.expiry = card_of(req)
        return None


class CheckDuplicate(BaseParticipant):
    """SPEC: same 41 + 11 + 7 within 24 h gets the original answer; the issuer sees one."""

    name = "check-duplicate"

    def __init__(self, recent: RecentTransactions, metrics: Metrics) -> None:
        self.recent = recent
        self.metrics = metrics

    async def prepare(self, ctx: Context) -> str | None:
        key = duplicate_key(ctx.request)
        entry = self.recent.get(key, ctx.received)
        if entry is None:
            return self._begin(ctx, key)
        if not entry.done.is_set():
            with anyio.move_on_after(max(ctx.deadline - time.monotonic(), 0)):
                await entry.done.wait()
        return self._replay(ctx, entry)

    def prepare_now(self, ctx: Context) -> str | None:
        key = duplicate_key(ctx.request)
        entry = self.recent.get(key, ctx.received)
        if entry is None:
            return self._begin(ctx, key)
        if not entry.done.is_set():
            return WAIT  # a duplicate of one in flight waits for its answer
        return self._replay(ctx, entry)

    def _replay(self, ctx: Context, entry: TxnEntry) -> str:
        self.metrics.duplicates.inc()
        if entry.response is None:
            return ctx.decline("94", "duplicate of a request still in flight")
        ctx.replay = entry.response
        return "replay"

    def _begin(self, ctx: Context, key: DuplicateKey) -> str | None:
        ctx.entry = entry = self.recent.begin(key, ctx.received, ctx.now)
        entry.pan = ctx.pan
        entry.currency = ctx.request.fields.get("49", "")
        entry.business_date = ctx.business_date
        return None

    def _finish(self, ctx: Context) -> None:
        entry = ctx.entry
        if entry is not None:
            entry.finish(ctx.response, ctx.approved)  # once: commit and abort may both run

    async def commit(self, ctx: Context) -> None:
        self._finish(ctx)

    async def abort(self, ctx: Context) -> None:
        self._finish(ctx)

    commit_now = _finish
    abort_now = _finish


class FindOriginal(BaseParticipant):
    """Reversals (and completions carrying field 90) name their original in field 90."""

    name = "find-original"

    def __init__(self, recent: RecentTransactions) -> None:
        self.recent = recent

    async def prepare(self, ctx: Context) -> str | None:
        return self.prepare_now(ctx)

    def prepare_now(self, ctx: Context) -> str | None:
        req = ctx.request
        f90 = req.fields.get("90")
        if f90 is None:
            return None
        key = key_of(f90[1], req.fields["41"], f90[4:10], f90[10:20])
        original = self.recent.get(key, ctx.received)
        if original is None or not original.done.is_set():
            if req.mti in REVERSALS or req.mti == "0220":
                return ctx.decline("25", "original not found")
            return None
        ctx.original = original
        if not ctx.pan:
            ctx.pan = original.pan
        if original.business_date is not None:
            # A reversal or completion belongs to its original's business day, whichever
            # side of the cutover it arrives: the transaction lands in exactly one day.
            ctx.business_date = original.business_date
            if ctx.entry is not None:
                ctx.entry.business_date = original.business_date
        return None


class Route(BaseParticipant):
    name = "route"

    def __init__(self, bins: BinTable, pools: Mapping[str, IssuerPool]) -> None:
        self.bins = bins
        self.pools = pools

    async def prepare(self, ctx: Context) -> str | None:
        return self.prepare_now(ctx)

    def prepare_now(self, ctx: Context) -> str | None:
        if ctx.original is not None and ctx.request.mti in REVERSALS:
            ctx.issuer = ctx.original.issuer
        else:
            ctx.issuer = self.bins.route(ctx.pan)
        if ctx.issuer is None:
            if ctx.request.mti in REVERSALS:
                return None  # the original never reached an issuer: acknowledged locally
            return ctx.decline("15", "no route for the BIN")
        ctx.pool = self.pools.get(ctx.issuer)
        return None


class IssuerMessageHook(Protocol):
    """Security of the issuer link (gateway.flow.security.IssuerLinkMac): ``seal`` runs on the
    complete request before it is sent, ``check_answer`` on the answer before it is used; a
    response code from either stops the transaction with that code."""

    async def seal(self, ctx: Context, pool: IssuerPool, msg: Message) -> str | None: ...

    async def check_answer(self, ctx: Context, pool: IssuerPool, answer: Message) -> str | None: ...


class QueryIssuer(BaseParticipant):
    name = "query-issuer"

    def __init__(
        self, acquirer_id: str, metrics: Metrics, hook: IssuerMessageHook | None = None
    ) -> None:
        self.acquirer_id = acquirer_id
        self.metrics = metrics
        self.hook = hook

    def _issuer_request(self, ctx: Context, pool: IssuerPool) -> Message:
        req = ctx.request
        src = req.fields
        fields = {k: src[k] for k in ISSUER_FIELDS if k in src}
        if "2" not in fields and "35" not in fields and ctx.pan:
            fields["2"] = ctx.pan
        fields["7"] = transmission_time(ctx.now)
        fields["11"] = pool.next_stan()
        fields["32"] = self.acquirer_id
        fields["37"] = ctx.rrn
        if ctx.merchant is not None:
            fields["18"] = ctx.merchant.mcc
        if ctx.pin_block is not None:
            fields["52"] = ctx.pin_block
        if ctx.business_date is not None and pool.cfg.send_settlement_date:
            fields["15"] = settlement_mmdd(ctx.business_date)
        original = ctx.original
        if original is not None and original.issuer_stan:
            fields["37"] = original.rrn
            fields["90"] = original_data(
                original.issuer_mti, original.issuer_stan, original.issuer_time, self.acquirer_id
            )
        return Message(req.mti, fields)

    async def prepare(self, ctx: Context) -> str | None:
        mti = ctx.request.mti
        original = ctx.original
        if mti in REVERSALS:
            if original is None or not original.approved or original.issuer is None:
                ctx.rc = "00"  # nothing was authorised: nothing to give back
                return None
            if original.reversed:
                ctx.rc = "00"  # applied once already
                return None
        pool = ctx.pool
        if pool is None:
            return ctx.decline("91", f"no link configured for issuer {ctx.issuer}")
        msg = self._issuer_request(ctx, pool)
        if self.hook is not None and (rc := await self.hook.seal(ctx, pool, msg)) is not None:
            return rc
        entry = ctx.entry
        if entry is not None:
            entry.issuer = pool.issuer
            entry.issuer_mti = msg.mti
            entry.issuer_stan = msg.fields["11"]
            entry.issuer_time = msg.fields["7"]
            entry.rrn = ctx.rrn
            entry.amount = int(ctx.request.fields.get("4", "0"))
        started = time.monotonic()
        timeout = min(pool.cfg.timeout, ctx.deadline - started)
        try:
            answer = await pool.request(msg, max(timeout, 0.0))
        except IssuerTimeout:
            self.metrics.issuer_failures.labels(pool.issuer, "timeout").inc()
            ctx.issuer_failure = "timeout"  # the journal stage queues the 0420
            return ctx.decline("91", "issuer timed out")
        except LinkUnavailable:
            self.metrics.issuer_failures.labels(pool.issuer, "unavailable").inc()
            ctx.issuer_failure = "unavailable"  # it may have been sent: reversed too
            return ctx.decline("91", "issuer unavailable")
        self.metrics.observe_issuer(pool.issuer, time.monotonic() - started)
        if self.hook is not None:
            rc = await self.hook.check_answer(ctx, pool, answer)
            if rc is not None:
                return rc
        ctx.issuer_response = answer
        rc = answer.fields.get("39", "")
        if len(rc) != 2:
            return ctx.decline("96", "issuer answer without a valid field 39")
        ctx.rc = rc
        if rc == "00" and mti in REVERSALS and original is not None:
            ctx.reversed_amount = reversal_amount(ctx.request, original.amount)
            original.amount -= ctx.reversed_amount
            original.reversed = original.amount == 0
        return None


def reversal_amount(req: Message, original_amount: int) -> int:
    """Field 95 (replacement amounts) makes a reversal partial: its first 12 digits are the
    amount that stays; without it the whole remaining amount is reversed."""
    f95 = req.fields.get("95", "")
    if len(f95) >= 12 and f95[:12].isdigit():
        return max(0, original_amount - int(f95[:12]))
    return original_amount
