"""The risk and limits engine the pipeline calls: assess, then confirm or release; reverse.

Approval path: :meth:`RiskEngine.assess` checks every rule and, for a counted request that no
rule declines, atomically reserves its amount and count on the card's daily counters. The caller
then :meth:`confirm`\\ s (issuer approved) or :meth:`release`\\ s (issuer declined, timed out, or
the transaction aborted). A reversal of an approved transaction :meth:`reverse`\\ s its amount;
its count stays consumed (the transaction did happen; a count that could be bought back by
reversing would make the daily count limit worthless against test-and-reverse card probing).

No clock reads: ``now`` comes in with every request. No clear PANs: cards are keyed hashes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType

import anyio
import anyio.abc
from prometheus_client import REGISTRY, CollectorRegistry, Counter

from gateway.risk.alerts import AlertEvent, AlertHub, AlertSink, WebhookSink
from gateway.risk.config import ConfigError, RiskConfig, load_config
from gateway.risk.counters import (
    CounterStore,
    MemoryCounterStore,
    ReserveOutcome,
    ReservePlan,
    ReserveRequest,
    StoreError,
)
from gateway.risk.model import Reservation, RiskDecision, RiskInput, RuleHit
from gateway.risk.redis_counters import RedisCounterStore
from gateway.risk.rules import (
    BELOW_QR_TIER,
    QR_COUNTER,
    RULE_ORDER,
    EffectiveLimits,
    Near,
    RuleSet,
)
from gateway.risk.score import Scorer
from gateway.risk.verification import step_up

# A store failure (96) ranks after the list rules, whose codes tell more, and before the
# rules the store would have decided.
_SPLIT = RULE_ORDER.index("single_amount") + 1
_ORDER = {
    name: i for i, name in enumerate((*RULE_ORDER[:_SPLIT], "counter_store", *RULE_ORDER[_SPLIT:]))
}
_RESTART_ONLY = ("backend", "redis", "alerts", "memory_max_cards")


def build_store(config: RiskConfig) -> CounterStore:
    """The counter backend named by the config."""
    if config.backend == "redis":
        return RedisCounterStore.from_url(
            config.redis.url,
            prefix=config.redis.prefix,
            pool_size=config.redis.pool_size,
            timeout=config.redis.timeout_seconds,
        )
    return MemoryCounterStore(
        max_cards=config.memory_max_cards, profile_ttl_seconds=config.profile_ttl_days * 86400
    )


@dataclass(frozen=True, slots=True)
class _Compiled:
    """Everything a reload replaces, behind one reference (swapped atomically)."""

    config: RiskConfig
    rules: RuleSet
    scorer: Scorer

    @classmethod
    def build(cls, config: RiskConfig) -> _Compiled:
        rules = RuleSet(config)
        return cls(config=config, rules=rules, scorer=Scorer(config.score, rules.tz))


class RiskEngine:
    """Inline limits and risk. One per gateway process; share a Redis prefix to scale out."""

    def __init__(
        self,
        config: RiskConfig,
        *,
        store: CounterStore | None = None,
        sinks: Iterable[AlertSink] = (),
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        self._compiled = _Compiled.build(config)
        self.store = store if store is not None else build_store(config)
        self.alerts = AlertHub(ring_size=config.alerts.ring_size, sinks=sinks, registry=registry)
        self.webhook: WebhookSink | None = None
        if config.alerts.webhook_url is not None:
            self.webhook = WebhookSink(
                config.alerts.webhook_url,
                timeout=config.alerts.webhook_timeout_seconds,
                queue_size=config.alerts.webhook_queue_size,
                registry=registry,
            )
            self.alerts.add_sink(self.webhook)
        self._decisions = Counter(
            "payswitch_risk_decisions",
            "Risk decisions by result (approve: go on, decline: answered by the risk stage)",
            ["result"],
            registry=registry,
        )
        self._approved = self._decisions.labels(result="approve")
        self._declined = self._decisions.labels(result="decline")
        self.tier_declines = Counter(
            "payswitch_risk_tier_declines",
            "Declines by a verification tier's cap: no_cvm (a tap without CVM) or the QR "
            "payment's tier (the QR API may turn one into a step-up)",
            ["tier"],
            registry=registry,
        )
        # The in-memory store never awaits, so nothing can cancel it halfway: no shield needed.
        self._shield = not isinstance(self.store, MemoryCounterStore)
        # Exactly the in-memory store (not a subclass that may override its coroutines): the
        # approval path calls its plain methods, without a coroutine or a cancel scope per step.
        self._memory = self.store if type(self.store) is MemoryCounterStore else None
        self._store_errors = Counter(
            "payswitch_risk_store_errors",
            "Counter store calls that failed, by operation",
            ["op"],
            registry=registry,
        )

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        *,
        store: CounterStore | None = None,
        sinks: Iterable[AlertSink] = (),
        registry: CollectorRegistry | None = REGISTRY,
    ) -> RiskEngine:
        """Engine from a risk TOML file (:class:`ConfigError` when invalid)."""
        return cls(load_config(path), store=store, sinks=sinks, registry=registry)

    @property
    def config(self) -> RiskConfig:
        return self._compiled.config

    # -- the approval path ------------------------------------------------------------------

    async def assess(self, inp: RiskInput) -> RiskDecision:
        """Check every rule; for a counted request that passes, hold a reservation.

        ``rc`` None means go on; the decision then holds the reservation that
        :meth:`confirm` keeps or :meth:`release` gives back.
        """
        if self._memory is not None and inp.qr is None:
            return self._assess_now(inp, self._memory)
        compiled = self._compiled  # one read: a concurrent reload never mixes two rule sets
        rules = compiled.rules
        if not inp.counts:
            hits = rules.list_hits(inp, None)
            return self._decide(inp, hits, None, None, _rc(hits))
        amount = rules.to_limit(inp.currency, inp.amount)
        if amount is None:
            return self._no_rate(inp, rules)
        limits, plan, hits, ts, day, expires_at = _plan(rules, inp, amount)
        qr_held = qr_total = 0
        if inp.qr is not None and not _declines(hits):
            qr_held, qr_total = await self._qr_reserve(
                inp, rules, amount, day, expires_at, hits, compiled
            )
        request = ReserveRequest(
            inp.card_key,
            inp.txn_id,
            rules.limit_currency,
            day,
            expires_at,
            int(ts * 1000),
            amount,
            inp.merchant_country,
            not _declines(hits),
            *plan,
        )
        outcome = await self._reserve(request, hits, compiled.config)
        score: int | None = None
        reservation: Reservation | None = None
        if outcome is not None:
            score, reservation = self._judge(compiled, inp, amount, limits, outcome, hits, day, ts)
        if rules.structuring is not None:
            marks = rules.near_caps(inp, limits, amount)
            if qr_total and inp.qr is not None:
                cap = rules.qr_caps[inp.qr.tier]
                if cap is not None and rules.near(qr_total, cap):
                    marks.append(Near(BELOW_QR_TIER, day, cap))  # a day's total: one per day
            if marks:
                hits += await self._structuring(inp, rules, marks)
        rc = _rc(hits)
        if qr_held:
            if reservation is not None:
                reservation.qr_amount = qr_held  # given back with it
            else:  # the card's own limits declined: the QR day gives back at once
                await self._release(inp.card_key, QR_COUNTER, day, qr_held, 0, "release")
        if rc is not None and reservation is not None:
            # only a score decline comes after the atomic reserve: give it back at once
            await self._give_back(reservation, count=1, op="release")
            reservation.state = "released"
            reservation = None
        return self._decide(inp, hits, score, reservation, rc)

    def _assess_now(self, inp: RiskInput, store: MemoryCounterStore) -> RiskDecision:
        """:meth:`assess` on the in-memory store: the same steps, none of them awaiting."""
        compiled = self._compiled
        rules = compiled.rules
        if not inp.counts:
            hits = rules.list_hits(inp, None)
            return self._decide(inp, hits, None, None, _rc(hits))
        amount = rules.to_limit(inp.currency, inp.amount)
        if amount is None:
            return self._no_rate(inp, rules)
        limits, plan, hits, ts, day, expires_at = _plan(rules, inp, amount)
        outcome = store.reserve_now(
            inp.card_key,
            inp.txn_id,
            rules.limit_currency,
            day,
            expires_at,
            int(ts * 1000),
            amount,
            inp.merchant_country,
            not _declines(hits),
            plan,
        )
        score, reservation = self._judge(compiled, inp, amount, limits, outcome, hits, day, ts)
        if rules.structuring is not None:
            marks = rules.near_caps(inp, limits, amount)
            if marks:
                counts = store.mark_now(
                    inp.card_key,
                    [m.pattern for m in marks],
                    [m.member for m in marks],
                    int(ts * 1000),
                    rules.structuring_window_ms,
                )
                hits += rules.structuring_hits(marks, counts)
        rc = _rc(hits)
        if rc is not None and reservation is not None:
            # only a score decline comes after the atomic reserve: give it back at once
            store.release_now(inp.card_key, rules.limit_currency, day, amount, 1)
            reservation.state = "released"
            reservation = None
        return self._decide(inp, hits, score, reservation, rc)

    def _no_rate(self, inp: RiskInput, rules: RuleSet) -> RiskDecision:
        """No rate to the limit currency: declined before any counter moves (not even the
        velocity attempt), as the amount cannot join the card's one daily total."""
        hits = rules.list_hits(inp, None)
        hits.append(rules.no_rate_hit(inp))
        return self._decide(inp, hits, None, None, _rc(hits))

    def _judge(
        self,
        compiled: _Compiled,
        inp: RiskInput,
        amount: int,
        limits: EffectiveLimits,
        outcome: ReserveOutcome,
        hits: list[RuleHit],
        day: str,
        ts: float,
    ) -> tuple[int | None, Reservation | None]:
        """Add the counter rules' and the score's hits; the reservation the store made
        (``amount``: the request's in the limit currency, what the counters hold)."""
        rules = compiled.rules
        hits += rules.counter_hits(inp, limits, outcome, amount)
        score: int | None = None
        config = compiled.config
        if config.score.enabled:
            signals, score = compiled.scorer.signals(inp, outcome, ts, amount)
            hits += signals
            score_hit = self._score_hit(score, config)
            if score_hit is not None:
                hits.append(score_hit)
        if not outcome.reserved:
            return score, None
        reservation = Reservation(
            inp.card_key,
            rules.limit_currency,
            day,
            amount,
            inp.merchant_country,
            inp.txn_id,
            inp.now,
        )
        return score, reservation

    def _decide(
        self,
        inp: RiskInput,
        hits: list[RuleHit],
        score: int | None,
        reservation: Reservation | None,
        rc: str | None,
    ) -> RiskDecision:
        """The decision, counted and (when something fired) published as an alert event."""
        decision = RiskDecision(inp.txn_id, rc, inp.masked_pan, tuple(hits), score, reservation)
        if rc is None:
            self._approved.inc()
        else:
            self._declined.inc()
            tier = _declining_tier(inp, hits)
            if tier is not None:
                self.tier_declines.labels(tier).inc()
        if hits and decision.alerted:
            self.alerts.publish(
                AlertEvent.from_decision(
                    decision,
                    merchant_id=inp.merchant_id,
                    terminal_id=inp.terminal_id,
                    amount=inp.amount,
                    currency=inp.currency,
                    at=inp.now,
                )
            )
        return decision

    async def _structuring(
        self, inp: RiskInput, rules: RuleSet, marks: list[Near]
    ) -> list[RuleHit]:
        """Mark the patterns this request lands just below; alerts for those seen often
        enough. A store failure only loses the alert (counted): it never declines."""
        try:
            with anyio.CancelScope(shield=self._shield):
                counts = await self.store.mark(
                    inp.card_key,
                    [m.pattern for m in marks],
                    [m.member for m in marks],
                    int(inp.now.timestamp() * 1000),
                    rules.structuring_window_ms,
                )
        except StoreError:
            self._store_errors.labels(op="structuring").inc()
            return []
        return rules.structuring_hits(marks, counts)

    async def _qr_reserve(
        self,
        inp: RiskInput,
        rules: RuleSet,
        amount: int,
        day: str,
        expires_at: int,
        hits: list[RuleHit],
        compiled: _Compiled,
    ) -> tuple[int, int]:
        """Hold ``amount`` (limit currency) on the QR payer's day total when the payment's
        tier allows it: what was held (0: nothing) and the day's total with it (0: no cap).
        Over the cap: a ``qr_tier`` hit, and the step-up that would lift the payment is
        written back to ``inp.qr``."""
        qr = inp.qr
        assert qr is not None
        tier = qr.tier
        cap = rules.qr_caps[tier]
        if cap is None:
            return 0, 0
        blocks = rules.blocks("qr_tier")
        try:
            with anyio.CancelScope(shield=self._shield):
                added, before = await self.store.add_within(
                    inp.card_key,
                    QR_COUNTER,
                    day,
                    expires_at,
                    int(inp.now.timestamp() * 1000),
                    amount,
                    cap,
                    blocks,
                )
        except StoreError:
            self._store_errors.labels(op="qr_reserve").inc()
            hits.append(_store_hit(compiled.config))
            return 0, 0
        total = before + amount
        if total > cap:
            hits.append(rules.qr_tier_hit(tier, total, cap))
            if blocks:
                qr.step_up = step_up(qr, total, rules.qr_caps)
        return (amount, total) if added else (0, total)

    async def _reserve(
        self, request: ReserveRequest, hits: list[RuleHit], config: RiskConfig
    ) -> ReserveOutcome | None:
        try:
            # shielded: a cancelled transaction must not leave a reservation nobody knows of
            if self._shield:
                with anyio.CancelScope(shield=True):
                    outcome = await self.store.reserve(request)
            else:
                outcome = await self.store.reserve(request)
        except StoreError:
            self._store_errors.labels(op="reserve").inc()
            hits.append(_store_hit(config))
            return None
        return outcome

    @staticmethod
    def _score_hit(score: int, config: RiskConfig) -> RuleHit | None:
        cfg = config.score
        if score >= cfg.decline_at:
            action = config.actions.score
            return RuleHit(
                name="score",
                kind="score",
                action=action,
                value=score,
                threshold=cfg.decline_at,
                rc=cfg.decline_rc if action == "decline" else None,
            )
        if score >= cfg.alert_at:
            return RuleHit(
                name="score", kind="score", action="alert", value=score, threshold=cfg.alert_at
            )
        return None

    async def confirm(self, decision: RiskDecision) -> None:
        """The issuer approved: keep the reservation, learn the card's amount and country."""
        res = decision.reservation
        if res is None or res.state != "held":
            return
        res.state = "confirmed"
        config = self._compiled.config
        if self._memory is not None:
            self._memory.record_approval_now(
                res.card_key,
                res.country,
                res.amount,
                config.score.profile_samples,
                config.profile_ttl_days * 86400,
            )
            return
        try:
            with anyio.CancelScope(shield=self._shield):
                await self.store.record_approval(
                    res.card_key,
                    res.country,
                    res.amount,
                    config.score.profile_samples,
                    config.profile_ttl_days * 86400,
                )
        except StoreError:  # the profile is best effort; the limits are already right
            self._store_errors.labels(op="confirm").inc()

    async def release(self, decision: RiskDecision) -> None:
        """The issuer declined or timed out, or the transaction aborted: give back amount and
        count. Idempotent; after :meth:`confirm` it voids the approval the same way."""
        res = decision.reservation
        if res is None or res.state == "released":
            return
        res.state = "released"
        await self._give_back(res, count=1, op="release")

    async def reverse(
        self, card_key: str, amount: int, original_time: datetime, *, currency: str
    ) -> None:
        """A (partial) reversal of an approved transaction: give back ``amount`` (in
        ``currency``, converted and rounded down) on the day of ``original_time``. The daily
        count stays consumed (see the module doc)."""
        if amount < 0:
            raise ValueError("reversal amount must be >= 0")
        if original_time.tzinfo is None:
            raise ValueError("original_time must be timezone-aware")
        rules = self._compiled.rules
        back = rules.to_limit_down(currency, amount)
        if back is None:  # its rate was removed since: the day's total stays high (safe side)
            self._store_errors.labels(op="reverse_no_rate").inc()
            return
        day, _ = rules.day_of(original_time)
        await self._release(card_key, rules.limit_currency, day, back, 0, "reverse")

    async def _give_back(self, res: Reservation, *, count: int, op: str) -> None:
        await self._release(res.card_key, res.currency, res.day, res.amount, count, op)
        if res.qr_amount:
            await self._release(res.card_key, QR_COUNTER, res.day, res.qr_amount, 0, op)

    async def _release(
        self, card_key: str, currency: str, day: str, amount: int, count: int, op: str
    ) -> None:
        if self._memory is not None:
            self._memory.release_now(card_key, currency, day, amount, count)
            return
        try:
            with anyio.CancelScope(shield=self._shield):
                await self.store.release(card_key, currency, day, amount, count)
        except StoreError:  # counted and visible in metrics; the day's counters stay high
            self._store_errors.labels(op=op).inc()

    # -- operations ---------------------------------------------------------------------------

    def reload(self, config: RiskConfig) -> tuple[str, ...]:
        """Swap rules, lists, limits, overrides, actions and score atomically; counters stay.

        Returns the names of restart-only settings that differ and were not applied. Raises
        :class:`ConfigError` (the old rules stay) when the PAN hash key differs: every card key
        and blacklist entry would change meaning.
        """
        current = self._compiled.config
        if config.pan_hash_key != current.pan_hash_key:
            raise ConfigError("pan_hash_key cannot change on reload: restart to change it")
        if config.limit_currency != current.limit_currency:
            # the day's totals (and held reservations) are amounts in the old one
            raise ConfigError("limit_currency cannot change on reload: restart to change it")
        compiled = _Compiled.build(config)
        self._compiled = compiled
        return tuple(n for n in _RESTART_ONLY if getattr(config, n) != getattr(current, n))

    def reload_file(self, path: str | Path) -> tuple[str, ...]:
        """Load, validate and apply a risk TOML file; :class:`ConfigError` keeps the old rules."""
        return self.reload(load_config(path))

    def recent_alerts(self, limit: int | None = None) -> list[dict[str, object]]:
        """Newest first, JSON-able, masked PANs only: for the admin endpoint."""
        return self.alerts.recent(limit)

    def to_limit(self, amount: int, currency: str) -> int | None:
        """``amount`` (minor units of ``currency``) in ``limit_currency`` with the rates of
        the moment, rounded up; None without a rate. For limits kept outside the engine in the
        same currency (stand-in's)."""
        return self._compiled.rules.to_limit(currency, amount)

    async def usage(self, card_key: str, currency: str, now: datetime) -> tuple[int, int]:
        """(amount in currency, count) a card has used on the local day of ``now``; amounts
        are kept in the limit currency only (any other has none)."""
        day, _ = self._compiled.rules.day_of(now)
        return await self.store.usage(card_key, currency, day)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Background work (the webhook sender); run it in a task group the gateway owns."""
        if self.webhook is None:
            task_status.started()
            await anyio.sleep_forever()
        else:
            await self.webhook.run(task_status=task_status)

    async def aclose(self) -> None:
        if self.webhook is not None:
            self.webhook.close(drain=False)
        await self.store.aclose()

    async def __aenter__(self) -> RiskEngine:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _store_hit(config: RiskConfig) -> RuleHit:
    """The counter store did not answer: 96 (``fail_mode = "closed"``) or an alert."""
    closed = config.fail_mode == "closed"
    return RuleHit(
        name="counter_store",
        kind="error",
        action="decline" if closed else "alert",
        value="unavailable",
        threshold=None,
        rc="96" if closed else None,
        detail=f"fail_mode={config.fail_mode}",
    )


NO_CVM_TIER = "no_cvm"
"""The tier label of a contactless tap declined over the no-CVM cap."""


def _declining_tier(inp: RiskInput, hits: list[RuleHit]) -> str | None:
    """The verification tier whose cap declined the request, if one did."""
    for hit in hits:
        if hit.action == "decline":
            if hit.name == "no_cvm_cap":
                return NO_CVM_TIER
            if hit.name == "qr_tier" and inp.qr is not None:
                return inp.qr.tier.value
    return None


def _declines(hits: list[RuleHit]) -> bool:
    return bool(hits) and any(h.action == "decline" for h in hits)


def _rc(hits: list[RuleHit]) -> str | None:
    """The code of the first declining hit in precedence order; None: go on."""
    if not hits:
        return None
    declines = [h for h in hits if h.action == "decline"]
    if not declines:
        return None
    return min(declines, key=lambda h: _ORDER.get(h.name, len(_ORDER))).rc


def _plan(
    rules: RuleSet, inp: RiskInput, amount: int
) -> tuple[EffectiveLimits, ReservePlan, list[RuleHit], float, str, int]:
    """What both assess paths need before the reserve: the request's limits and the store's
    plan for them, the stateless rules' hits, and its time (seconds), risk day and the day's
    expiry (seconds). ``amount`` is the request's in the limit currency."""
    limits, plan = rules.resolve(inp.pan_prefix, inp.merchant_id, inp.currency)
    hits = rules.list_hits(inp, limits, amount)
    now = inp.now
    ts = now.timestamp()
    day, expires_at = rules.day_at(ts, now)
    return limits, plan, hits, ts, day, expires_at
