"""The rules compiled from a :class:`RiskConfig`: lists as sets, overrides as lookup tables.

A :class:`RuleSet` is immutable; hot reload builds a new one and swaps one reference.

Which rules apply to what (documented in gateway/risk/README.md):
- every assessed request: PAN, terminal and merchant blacklists;
- every request except refunds: blocked MCC;
- counted requests only (purchase, cash, authorization): single amount, impossible travel,
  velocity, daily count, daily amount, score.

Limit overrides are layered field by field: base < currency < merchant < card range (longest
matching prefix); a field an override leaves out is inherited from the layer below.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from gateway.risk.config import Action, Limits, RiskConfig, Velocity
from gateway.risk.counters import ReserveOutcome
from gateway.risk.model import RiskInput, RuleHit, TxnKind

RULE_RC: dict[str, str] = {
    "pan_blacklist": "59",
    "terminal_blacklist": "59",
    "merchant_blacklist": "59",
    "blocked_mcc": "57",
    "single_amount": "61",
    "impossible_travel": "59",
    "velocity": "65",
    "daily_count": "65",
    "daily_amount": "61",
}
"""Response code of each rule (SPEC); the score's code is configurable."""

RULE_ORDER: tuple[str, ...] = (*RULE_RC, "score")
"""Precedence: the first declining rule in this order gives the response code."""

DAY_GRACE = timedelta(days=1)
"""Daily counters outlive their day by this much, so late reversals still give back."""


@dataclass(frozen=True, slots=True)
class EffectiveLimits:
    max_single_amount: int | None
    daily_amount: int | None
    daily_count: int | None
    velocity: Velocity | None
    layers: str
    """which layers applied, e.g. ``base+currency:840+range:541333``"""


def _merge(base: EffectiveLimits, over: Limits, layer: str) -> EffectiveLimits:
    return EffectiveLimits(
        max_single_amount=over.max_single_amount
        if over.max_single_amount is not None
        else base.max_single_amount,
        daily_amount=over.daily_amount_per_card
        if over.daily_amount_per_card is not None
        else base.daily_amount,
        daily_count=over.daily_count_per_card
        if over.daily_count_per_card is not None
        else base.daily_count,
        velocity=over.velocity if over.velocity is not None else base.velocity,
        layers=f"{base.layers}+{layer}",
    )


class RuleSet:
    """Compiled rules of one configuration (immutable but for a one-day cache of day_of)."""

    def __init__(self, config: RiskConfig) -> None:
        self.config = config
        self.tz = ZoneInfo(config.timezone)
        self.actions = config.actions
        self._pans = frozenset(config.blacklist_pan_hashes)
        self._terminals = frozenset(config.blacklist_terminals)
        self._merchants = frozenset(config.blacklist_merchants)
        self._mccs = frozenset(config.blocked_mccs)
        self._base = EffectiveLimits(
            max_single_amount=config.max_single_amount,
            daily_amount=config.daily_amount_per_card,
            daily_count=config.daily_count_per_card,
            velocity=config.velocity,
            layers="base",
        )
        self._by_currency = {o.currency: o for o in config.currency_limits}
        self._by_merchant = {o.merchant_id: o for o in config.merchant_limits}
        self._by_prefix = {o.prefix: o for o in config.card_ranges}
        windows = [config.score.velocity_seconds if config.score.enabled else 0]
        windows += [
            o.velocity.seconds
            for o in (config, *config.currency_limits, *config.merchant_limits, *config.card_ranges)
            if o.velocity is not None
        ]
        self.velocity_keep_ms = max(windows) * 1000
        self._day_cache: tuple[float, float, str, int] = (0.0, 0.0, "", 0)
        minutes = config.impossible_travel_minutes
        self.travel_window_ms = None if minutes is None else minutes * 60_000

    def action(self, rule: str) -> Action:
        action: Action = getattr(self.actions, rule)
        return action

    def limits_for(self, pan_prefix: str, merchant_id: str, currency: str) -> EffectiveLimits:
        limits = self._base
        over: Limits | None = self._by_currency.get(currency)
        if over is not None:
            limits = _merge(limits, over, f"currency:{currency}")
        over = self._by_merchant.get(merchant_id)
        if over is not None:
            limits = _merge(limits, over, f"merchant:{merchant_id}")
        for n in range(len(pan_prefix), 0, -1):
            over = self._by_prefix.get(pan_prefix[:n])
            if over is not None:
                return _merge(limits, over, f"range:{pan_prefix[:n]}")
        return limits

    def day_of(self, now: datetime) -> tuple[str, int]:
        """Local calendar day (YYYYMMDD) and when its counters may be dropped (epoch s)."""
        ts = now.timestamp()
        start, end, day, expires_at = self._day_cache
        if start <= ts < end:
            return day, expires_at
        local = now.astimezone(self.tz)
        midnight = datetime.combine(local.date(), time(0), self.tz)
        next_midnight = datetime.combine(local.date() + timedelta(days=1), time(0), self.tz)
        day = local.strftime("%Y%m%d")
        expires_at = int((next_midnight + DAY_GRACE).timestamp())
        # one day cached: all but the first request of a day skip the zone arithmetic
        self._day_cache = (midnight.timestamp(), next_midnight.timestamp(), day, expires_at)
        return day, expires_at

    def _hit(
        self,
        rule: str,
        value: int | float | str,
        threshold: int | float | str | None,
        detail: str | None = None,
    ) -> RuleHit:
        return RuleHit(
            name=rule,
            kind="rule",
            action=self.action(rule),
            value=value,
            threshold=threshold,
            rc=RULE_RC[rule],
            detail=detail,
        )

    def list_hits(self, inp: RiskInput, limits: EffectiveLimits | None) -> list[RuleHit]:
        """Stateless rules: lists, MCC and (for counted requests) the single-amount limit."""
        hits: list[RuleHit] = []
        if inp.card_key in self._pans:
            hits.append(self._hit("pan_blacklist", inp.masked_pan, "blacklist"))
        if inp.terminal_id in self._terminals:
            hits.append(self._hit("terminal_blacklist", inp.terminal_id, "blacklist"))
        if inp.merchant_id in self._merchants:
            hits.append(self._hit("merchant_blacklist", inp.merchant_id, "blacklist"))
        if inp.kind != TxnKind.REFUND and inp.mcc in self._mccs:
            hits.append(self._hit("blocked_mcc", inp.mcc, "blocked_mccs"))
        if (
            limits is not None
            and limits.max_single_amount is not None
            and inp.amount > limits.max_single_amount
        ):
            hits.append(
                self._hit("single_amount", inp.amount, limits.max_single_amount, limits.layers)
            )
        return hits

    def counter_hits(
        self, inp: RiskInput, limits: EffectiveLimits, outcome: ReserveOutcome
    ) -> list[RuleHit]:
        """Rules the counter store evaluated atomically, as hits."""
        hits: list[RuleHit] = []
        if outcome.travel_country is not None and self.travel_window_ms is not None:
            minutes = round(outcome.travel_age_ms / 60_000, 1)
            hits.append(
                self._hit(
                    "impossible_travel",
                    minutes,
                    self.travel_window_ms // 60_000,
                    f"seen in {outcome.travel_country}, now in {inp.merchant_country}",
                )
            )
        if outcome.velocity_exceeded and limits.velocity is not None:
            hits.append(
                self._hit(
                    "velocity",
                    outcome.attempts,
                    limits.velocity.count,
                    f"attempts in {limits.velocity.seconds}s; {limits.layers}",
                )
            )
        if outcome.count_exceeded and limits.daily_count is not None:
            hits.append(
                self._hit("daily_count", outcome.day_count + 1, limits.daily_count, limits.layers)
            )
        if outcome.amount_exceeded and limits.daily_amount is not None:
            hits.append(
                self._hit(
                    "daily_amount",
                    outcome.day_amount + inp.amount,
                    limits.daily_amount,
                    f"{inp.currency}; {limits.layers}",
                )
            )
        return hits
