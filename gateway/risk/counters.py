"""Per-card counters: the store interface and the in-memory backend.

One ``reserve`` call is the atomic step of the approval path: it records the attempt (velocity),
checks impossible travel, and adds amount and count to the card's daily counters only when no
blocking rule fires. Every backend implements exactly the semantics of :class:`MemoryCounterStore`
(the Redis Lua script mirrors it line by line); the test suite runs over all backends.

Counters:
- daily amount per (card, currency, local day) and daily count per (card, local day): reserved
  and confirmed transactions; a release gives back both, a reversal gives back the amount;
- velocity: attempt times per card (approved and declined), a sliding window;
- travel: last time the card was seen per merchant country, within the travel window;
- profile: running mean/variance of approved amounts and the set of countries with approvals.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol


class StoreError(Exception):
    """The counter store cannot answer (connection, timeout, server error)."""


@dataclass(frozen=True, slots=True)
class ReserveRequest:
    card_key: str
    txn_id: str
    currency: str
    day: str
    """local calendar day, YYYYMMDD"""
    day_expires_at: int
    """epoch seconds after which the day's counters may be dropped"""
    now_ms: int
    amount: int
    country: str
    reserve: bool
    """False: a list rule already declines; record the attempt, reserve nothing"""
    daily_amount_limit: int | None = None
    daily_amount_blocks: bool = True
    daily_count_limit: int | None = None
    daily_count_blocks: bool = True
    velocity_count: int | None = None
    velocity_window_ms: int = 0
    velocity_keep_ms: int = 0
    """attempt history kept this long (the longest window configured); 0 records nothing"""
    velocity_blocks: bool = True
    travel_window_ms: int | None = None
    travel_blocks: bool = True


@dataclass(frozen=True, slots=True)
class Profile:
    """Running statistics of a card's approved amounts."""

    n: int = 0
    mean: float = 0.0
    var: float = 0.0


def update_profile(profile: Profile, amount: int, samples: int) -> Profile:
    """Welford's update for the first ``samples`` amounts, exponentially weighted after.

    With weight a = 1/n: mean += a*d, var = (1-a)*(var + d*a*d), which is the exact population
    variance while n grows and an EWMA variance once n is capped at ``samples``.
    """
    n = min(profile.n + 1, samples)
    a = 1.0 / n
    diff = amount - profile.mean
    incr = a * diff
    return Profile(n=n, mean=profile.mean + incr, var=(1.0 - a) * (profile.var + diff * incr))


@dataclass(frozen=True, slots=True)
class ReserveOutcome:
    reserved: bool
    attempts: int
    """attempts in the velocity window, this one included"""
    day_amount: int
    """the card's daily amount in this currency before this transaction"""
    day_count: int
    """the card's daily count before this transaction"""
    amount_exceeded: bool
    count_exceeded: bool
    velocity_exceeded: bool
    travel_country: str | None
    """another country the card was seen in within the travel window"""
    travel_age_ms: int
    profile: Profile
    country_known: bool
    """the merchant country already had an approval on this card"""


class CounterStore(Protocol):
    """What the engine needs from a backend. Each method is atomic on its own."""

    async def reserve(self, req: ReserveRequest) -> ReserveOutcome: ...

    async def release(
        self, card_key: str, currency: str, day: str, amount: int, count: int
    ) -> None:
        """Give back ``amount`` and ``count`` (never below zero; a dropped day is ignored)."""

    async def record_approval(
        self, card_key: str, country: str, amount: int, samples: int, ttl_seconds: int
    ) -> None:
        """Update the card's amount profile and known countries."""

    async def usage(self, card_key: str, currency: str, day: str) -> tuple[int, int]:
        """(daily amount in currency, daily count) of a card."""

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class _Card:
    attempts: list[tuple[int, str]] = field(default_factory=list)
    """(time ms, txn id), in insertion order; pruned by time on each reserve"""
    members: set[str] = field(default_factory=set)
    seen: dict[str, int] = field(default_factory=dict)
    """merchant country -> last time (ms) within the travel window"""
    profile: Profile = field(default_factory=Profile)
    countries: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Day:
    expires_at: int
    amounts: dict[tuple[str, str], int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


class MemoryCounterStore:
    """Counters in this process. Exact under concurrency because no method awaits: each runs
    to completion within one scheduling step of the event loop."""

    def __init__(self, *, max_cards: int = 1_000_000) -> None:
        self._max_cards = max_cards
        self._cards: OrderedDict[str, _Card] = OrderedDict()
        self._days: dict[str, _Day] = {}
        self._next_prune = 0

    def _card(self, key: str) -> _Card:
        card = self._cards.get(key)
        if card is None:
            card = self._cards[key] = _Card()
            if len(self._cards) > self._max_cards:
                self._cards.popitem(last=False)
        else:
            self._cards.move_to_end(key)
        return card

    def _prune_days(self, now_s: int) -> None:
        if now_s < self._next_prune:
            return
        for day in [d for d, b in self._days.items() if b.expires_at < now_s]:
            del self._days[day]
        self._next_prune = min((b.expires_at for b in self._days.values()), default=0)

    async def reserve(self, req: ReserveRequest) -> ReserveOutcome:
        now = req.now_ms
        card = self._card(req.card_key)
        attempts = 0
        if req.velocity_keep_ms > 0:
            cutoff = now - req.velocity_keep_ms
            if card.attempts and min(t for t, _ in card.attempts) <= cutoff:
                kept = [(t, m) for t, m in card.attempts if t > cutoff]
                card.members.difference_update(m for t, m in card.attempts if t <= cutoff)
                card.attempts = kept
            if req.txn_id in card.members:  # same member: its time moves (as ZADD does)
                card.attempts = [(t, m) for t, m in card.attempts if m != req.txn_id]
            card.attempts.append((now, req.txn_id))
            card.members.add(req.txn_id)
            win = now - req.velocity_window_ms
            attempts = sum(1 for t, _ in card.attempts if t > win)
        travel_country: str | None = None
        travel_at = 0
        if req.travel_window_ms is not None:
            cutoff = now - req.travel_window_ms
            for country, t in list(card.seen.items()):
                if t <= cutoff:
                    del card.seen[country]
                elif country != req.country and (travel_country is None or t > travel_at):
                    travel_country, travel_at = country, t
            if now > card.seen.get(req.country, 0):
                card.seen[req.country] = now
        self._prune_days(now // 1000)
        bucket = self._days.get(req.day)
        day_amount = bucket.amounts.get((req.card_key, req.currency), 0) if bucket else 0
        day_count = bucket.counts.get(req.card_key, 0) if bucket else 0
        amount_exceeded = (
            req.daily_amount_limit is not None and day_amount + req.amount > req.daily_amount_limit
        )
        count_exceeded = req.daily_count_limit is not None and day_count + 1 > req.daily_count_limit
        velocity_exceeded = req.velocity_count is not None and attempts > req.velocity_count
        blocked = (
            (amount_exceeded and req.daily_amount_blocks)
            or (count_exceeded and req.daily_count_blocks)
            or (velocity_exceeded and req.velocity_blocks)
            or (travel_country is not None and req.travel_blocks)
        )
        reserved = req.reserve and not blocked
        if reserved:
            if bucket is None:
                bucket = self._days[req.day] = _Day(expires_at=req.day_expires_at)
                self._next_prune = min(self._next_prune or req.day_expires_at, req.day_expires_at)
            bucket.amounts[(req.card_key, req.currency)] = day_amount + req.amount
            bucket.counts[req.card_key] = day_count + 1
        return ReserveOutcome(
            reserved=reserved,
            attempts=attempts,
            day_amount=day_amount,
            day_count=day_count,
            amount_exceeded=amount_exceeded,
            count_exceeded=count_exceeded,
            velocity_exceeded=velocity_exceeded,
            travel_country=travel_country,
            travel_age_ms=now - travel_at if travel_country is not None else 0,
            profile=card.profile,
            country_known=req.country in card.countries,
        )

    async def release(
        self, card_key: str, currency: str, day: str, amount: int, count: int
    ) -> None:
        bucket = self._days.get(day)
        if bucket is None:
            return
        akey = (card_key, currency)
        if akey in bucket.amounts:
            bucket.amounts[akey] = max(0, bucket.amounts[akey] - amount)
        if count and card_key in bucket.counts:
            bucket.counts[card_key] = max(0, bucket.counts[card_key] - count)

    async def record_approval(
        self, card_key: str, country: str, amount: int, samples: int, ttl_seconds: int
    ) -> None:
        card = self._card(card_key)
        card.profile = update_profile(card.profile, amount, samples)
        card.countries.add(country)

    async def usage(self, card_key: str, currency: str, day: str) -> tuple[int, int]:
        bucket = self._days.get(day)
        if bucket is None:
            return 0, 0
        return bucket.amounts.get((card_key, currency), 0), bucket.counts.get(card_key, 0)

    async def aclose(self) -> None:
        return None

    def statistics(self) -> dict[str, int]:
        return {"cards": len(self._cards), "days": len(self._days)}
