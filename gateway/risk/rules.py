"""The rules compiled from a :class:`RiskConfig`: lists as sets, overrides as lookup tables.

A :class:`RuleSet` is immutable; hot reload builds a new one and swaps one reference.

Which rules apply to what (documented in gateway/risk/README.md):
- every assessed request: PAN, terminal and merchant blacklists;
- every request except refunds: blocked MCC;
- counted requests only (purchase, cash, authorization): single amount, impossible travel,
  velocity, daily count, daily amount, score.

Limit overrides are layered field by field: base < currency < merchant < card range (longest
matching prefix); a field an override leaves out is inherited from the layer below. Amounts are
in the limit currency (a request's converted with the rate table), but for a currency layer's
``max_single_amount``, which is in its own currency.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo

from gateway.risk.config import Action, Limits, RiskConfig, Velocity
from gateway.risk.counters import ReserveOutcome, ReservePlan
from gateway.risk.model import RiskInput, RuleHit, TxnKind
from gateway.risk.verification import Cvm, QrTier
from protocols.currency import MinorRate, minor_rate

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
    # after the limits a step-up cannot lift: with one of those, more verification is no use
    "qr_tier": "61",
    "no_cvm_cap": "65",
}
"""Response code of each rule (SPEC); the score's code is configurable."""

PIN_REQUIRED = "PIN required"
"""The detail of a ``no_cvm_cap`` hit: a soft decline, the terminal retries with the PIN."""
QR_COUNTER = "qr"
"""The payer's QR day total sits beside the card's daily amounts under this name (not a
currency code: never one of the card's totals)."""

RULE_ORDER: tuple[str, ...] = (*RULE_RC, "score")
"""Precedence: the first declining rule in this order gives the response code."""

NO_RATE = "currency_without_rate"
"""A counted request in a currency with no rate to the limit currency: declined ``12`` before
any counter moves (its amount cannot be added to the card's one daily total)."""

STRUCTURING = "structuring"
"""The anti-structuring rule: an alert only (no code), its pattern first in the hit's detail."""
BELOW_SINGLE_AMOUNT = "below_single_amount"
BELOW_NO_CVM_CAP = "below_no_cvm_cap"
BELOW_QR_TIER = "below_qr_tier"


class Near(NamedTuple):
    """A counted request just below one of its caps: one mark of a structuring pattern."""

    pattern: str
    member: str
    """what one mark is: the transaction (a retry marks once), or the day for a QR tier"""
    cap: int


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
    single_in_currency: bool = False
    """``max_single_amount`` came from the currency layer: it is in the request's currency,
    not in the limit currency"""


def _merge(
    base: EffectiveLimits, over: Limits, layer: str, in_currency: bool = False
) -> EffectiveLimits:
    single = over.max_single_amount is not None
    return EffectiveLimits(
        max_single_amount=over.max_single_amount if single else base.max_single_amount,
        daily_amount=over.daily_amount_per_card
        if over.daily_amount_per_card is not None
        else base.daily_amount,
        daily_count=over.daily_count_per_card
        if over.daily_count_per_card is not None
        else base.daily_count,
        velocity=over.velocity if over.velocity is not None else base.velocity,
        layers=f"{base.layers}+{layer}",
        single_in_currency=in_currency if single else base.single_in_currency,
    )


class RuleSet:
    """Compiled rules of one configuration (immutable but for its caches: the day of
    :meth:`day_of` and the limits resolved per override combination)."""

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
        self.limit_currency = config.limit_currency
        self._rates: dict[str, MinorRate] = {
            code: minor_rate(code, config.limit_currency, rate)
            for code, rate in config.rates.items()
        }
        self._by_currency = {o.currency: o for o in config.currency_limits}
        self._by_merchant = {o.merchant_id: o for o in config.merchant_limits}
        self._by_prefix = {o.prefix: o for o in config.card_ranges}
        # longest first: the first prefix length that matches wins
        self._prefix_lengths = tuple(sorted({len(p) for p in self._by_prefix}, reverse=True))
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
        # Per-rule decisions read on every request, resolved once per configuration.
        self._decline = {rule: self.action(rule) == "decline" for rule in RULE_RC}
        self._rule_hit_base = {rule: (self.action(rule), RULE_RC[rule]) for rule in RULE_RC}
        contactless = config.contactless
        # (currency or None, MCC or None) -> (cap, cap is in that currency): taps without CVM
        self._no_cvm: dict[tuple[str | None, str | None], tuple[int, bool]] = {
            (c.currency, c.mcc): (c.max_amount, c.currency is not None)
            for c in contactless.no_cvm_limits
        }
        if contactless.no_cvm_max_amount is not None:
            self._no_cvm[None, None] = (contactless.no_cvm_max_amount, False)
        tiers = config.qr_tiers
        self.qr_caps: dict[QrTier, int | None] = {
            QrTier.STATIC: tiers.static,
            QrTier.ONE_FACTOR: tiers.one_factor,
            QrTier.TWO_FACTOR: tiers.two_factor,
            QrTier.CERTIFIED: tiers.certified,
        }
        structuring = config.structuring
        self.structuring = structuring if structuring.enabled else None
        """None: the anti-structuring alert is off"""
        self.structuring_window_ms = structuring.window_seconds * 1000
        self._floor_percent = 100 - structuring.margin_percent
        # (currency, merchant, prefix) override keys that applied -> limits and reserve plan;
        # bounded by the combinations the configuration can produce.
        self._resolved: dict[
            tuple[str | None, str | None, str | None], tuple[EffectiveLimits, ReservePlan]
        ] = {}

    def action(self, rule: str) -> Action:
        action: Action = getattr(self.actions, rule)
        return action

    def blocks(self, rule: str) -> bool:
        """The rule's action is ``decline``."""
        return self._decline[rule]

    def to_limit(self, currency: str, amount: int) -> int | None:
        """``amount`` (minor units of ``currency``) in the limit currency, rounded up; None
        without a rate."""
        if currency == self.limit_currency:
            return amount
        rate = self._rates.get(currency)
        return None if rate is None else rate.up(amount)

    def to_limit_down(self, currency: str, amount: int) -> int | None:
        """:meth:`to_limit` rounded down, for amounts given back (never more than taken)."""
        if currency == self.limit_currency:
            return amount
        rate = self._rates.get(currency)
        return None if rate is None else rate.down(amount)

    def no_rate_hit(self, inp: RiskInput) -> RuleHit:
        return RuleHit(
            NO_RATE, "rule", "decline", inp.currency, self.limit_currency, "12", 0, "no rate"
        )

    def limits_for(self, pan_prefix: str, merchant_id: str, currency: str) -> EffectiveLimits:
        return self.resolve(pan_prefix, merchant_id, currency)[0]

    def resolve(
        self, pan_prefix: str, merchant_id: str, currency: str
    ) -> tuple[EffectiveLimits, ReservePlan]:
        """Effective limits of a counted request and the counter store's plan for them."""
        cur = currency if currency in self._by_currency else None
        mer = merchant_id if merchant_id in self._by_merchant else None
        rng: str | None = None
        if self._prefix_lengths:
            by_prefix = self._by_prefix
            for n in self._prefix_lengths:
                if n <= len(pan_prefix) and pan_prefix[:n] in by_prefix:
                    rng = pan_prefix[:n]
                    break
        key = (cur, mer, rng)
        found = self._resolved.get(key)
        if found is None:
            found = self._resolved[key] = self._build(cur, mer, rng)
        return found

    def _build(
        self, currency: str | None, merchant_id: str | None, prefix: str | None
    ) -> tuple[EffectiveLimits, ReservePlan]:
        limits = self._base
        if currency is not None:
            limits = _merge(limits, self._by_currency[currency], f"currency:{currency}", True)
        if merchant_id is not None:
            limits = _merge(limits, self._by_merchant[merchant_id], f"merchant:{merchant_id}")
        if prefix is not None:
            limits = _merge(limits, self._by_prefix[prefix], f"range:{prefix}")
        velocity = limits.velocity
        window_s = velocity.seconds if velocity is not None else self.config.score.velocity_seconds
        plan = ReservePlan(
            daily_amount_limit=limits.daily_amount,
            daily_amount_blocks=self._decline["daily_amount"],
            daily_count_limit=limits.daily_count,
            daily_count_blocks=self._decline["daily_count"],
            velocity_count=velocity.count if velocity is not None else None,
            velocity_window_ms=window_s * 1000,
            velocity_keep_ms=self.velocity_keep_ms,
            velocity_blocks=self._decline["velocity"],
            travel_window_ms=self.travel_window_ms,
            travel_blocks=self._decline["impossible_travel"],
        )
        return limits, plan

    def day_of(self, now: datetime) -> tuple[str, int]:
        """Local calendar day (YYYYMMDD) and when its counters may be dropped (epoch s)."""
        return self.day_at(now.timestamp(), now)

    def day_at(self, ts: float, now: datetime) -> tuple[str, int]:
        """:meth:`day_of` for a caller that already has ``now.timestamp()``."""
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
        action, rc = self._rule_hit_base[rule]
        return RuleHit(rule, "rule", action, value, threshold, rc, 0, detail)

    def list_hits(
        self, inp: RiskInput, limits: EffectiveLimits | None, amount: int | None = None
    ) -> list[RuleHit]:
        """Stateless rules: lists, MCC and (for counted requests) the single-amount limit;
        ``amount`` is the request's in the limit currency (None: ``inp.amount`` is)."""
        hits: list[RuleHit] = []
        if inp.card_key in self._pans:
            hits.append(self._hit("pan_blacklist", inp.masked_pan, "blacklist"))
        if inp.terminal_id in self._terminals:
            hits.append(self._hit("terminal_blacklist", inp.terminal_id, "blacklist"))
        if inp.merchant_id in self._merchants:
            hits.append(self._hit("merchant_blacklist", inp.merchant_id, "blacklist"))
        if inp.mcc in self._mccs and inp.kind != TxnKind.REFUND:
            hits.append(self._hit("blocked_mcc", inp.mcc, "blocked_mccs"))
        if limits is not None and limits.max_single_amount is not None:
            single = inp.amount if amount is None or limits.single_in_currency else amount
            if single > limits.max_single_amount:
                hits.append(
                    self._hit("single_amount", single, limits.max_single_amount, limits.layers)
                )
        if inp.cvm is Cvm.NONE and limits is not None and self._no_cvm:
            hit = self.no_cvm_hit(inp, inp.amount if amount is None else amount)
            if hit is not None:
                hits.append(hit)
        return hits

    def near(self, value: int, cap: int) -> bool:
        """``value`` is within the structuring margin under ``cap`` (the cap included)."""
        return value <= cap and value * 100 >= cap * self._floor_percent

    def near_caps(self, inp: RiskInput, limits: EffectiveLimits, amount: int) -> list[Near]:
        """The single-amount limit and no-CVM cap this request lands just below (``amount``:
        in the limit currency). The QR tier's is the engine's: it needs the day's total."""
        found: list[Near] = []
        cap = limits.max_single_amount
        if cap is not None:
            single = inp.amount if limits.single_in_currency else amount
            if self.near(single, cap):
                found.append(Near(BELOW_SINGLE_AMOUNT, inp.txn_id, cap))
        if inp.cvm is Cvm.NONE:
            no_cvm = self.no_cvm_cap(inp.currency, inp.mcc)
            if no_cvm is not None:
                cap, in_currency = no_cvm
                if self.near(inp.amount if in_currency else amount, cap):
                    found.append(Near(BELOW_NO_CVM_CAP, inp.txn_id, cap))
        return found

    def structuring_hits(self, marks: list[Near], counts: list[int]) -> list[RuleHit]:
        """Patterns marked ``count`` times or more within the window: alerts, never codes."""
        cfg = self.config.structuring
        return [
            RuleHit(
                STRUCTURING,
                "rule",
                "alert",
                n,
                cfg.count,
                None,
                0,
                f"{near.pattern}: {n} within {cfg.margin_percent}% under {near.cap} "
                f"in {cfg.window_seconds}s",
            )
            for near, n in zip(marks, counts, strict=True)
            if n >= cfg.count
        ]

    def qr_tier_hit(self, tier: QrTier, total: int, cap: int) -> RuleHit:
        """The QR payer's day total (this payment included) over its tier's cap."""
        return self._hit("qr_tier", total, cap, f"tier {tier.value}; {self.limit_currency}")

    def no_cvm_cap(self, currency: str, mcc: str) -> tuple[int, bool] | None:
        """The cap of a tap without CVM and whether it is in ``currency`` (else in the limit
        currency): currency and MCC, then the MCC, then the currency, then the base."""
        caps = self._no_cvm
        return (
            caps.get((currency, mcc))
            or caps.get((None, mcc))
            or caps.get((currency, None))
            or caps.get((None, None))
        )

    def no_cvm_hit(self, inp: RiskInput, amount: int) -> RuleHit | None:
        """A tap without CVM above its cap (``amount``: in the limit currency)."""
        found = self.no_cvm_cap(inp.currency, inp.mcc)
        if found is None:
            return None
        cap, in_currency = found
        value = inp.amount if in_currency else amount
        if value <= cap:
            return None
        return self._hit("no_cvm_cap", value, cap, PIN_REQUIRED)

    def counter_hits(
        self, inp: RiskInput, limits: EffectiveLimits, outcome: ReserveOutcome, amount: int
    ) -> list[RuleHit]:
        """Rules the counter store evaluated atomically, as hits (``amount``: the request's in
        the limit currency)."""
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
                    outcome.day_amount + amount,
                    limits.daily_amount,
                    f"{self.limit_currency}; {limits.layers}",
                )
            )
        return hits
