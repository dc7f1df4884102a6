"""Per-card counters: the store interface and the in-memory backend.

One ``reserve`` call is the atomic step of the approval path: it records the attempt (velocity),
checks impossible travel, and adds amount and count to the card's daily counters only when no
blocking rule fires. Every backend implements exactly the semantics of :class:`MemoryCounterStore`
(the Redis Lua script mirrors it line by line); the test suite runs over all backends.

Counters:
- daily amount per (card, currency, local day) and daily count per (card, local day): reserved
  and confirmed transactions; a release gives back both, a reversal gives back the amount. The
  engine passes its limit currency only (amounts converted first): one total per card;
- velocity: attempt times per card (approved and declined), a sliding window;
- travel: last time the card was seen per merchant country, within the travel window;
- marks: per card and structuring pattern, the members (transactions, or days) that landed
  just below a cap, a sliding window;
- profile: running mean/variance of approved amounts and the set of countries with approvals;
  forgotten ``profile_ttl_days`` after the card's last approval (the Redis keys' TTL).

The memory store keeps a card while any of that can still matter, as the Redis keys live: its
velocity and travel state until their windows after its last attempt, its profile until the TTL
after its last approval. Idle cards are dropped lazily, a few from the least recently used end
per new card (no scan, no timer); ``memory_max_cards`` stays a hard cap.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol


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

    @property
    def plan(self) -> ReservePlan:
        return ReservePlan(
            self.daily_amount_limit,
            self.daily_amount_blocks,
            self.daily_count_limit,
            self.daily_count_blocks,
            self.velocity_count,
            self.velocity_window_ms,
            self.velocity_keep_ms,
            self.velocity_blocks,
            self.travel_window_ms,
            self.travel_blocks,
        )


class ReservePlan(NamedTuple):
    """The limits half of a :class:`ReserveRequest`: fixed per rule set and limit layers, so
    the engine builds it once per configuration instead of once per transaction."""

    daily_amount_limit: int | None
    daily_amount_blocks: bool
    daily_count_limit: int | None
    daily_count_blocks: bool
    velocity_count: int | None
    velocity_window_ms: int
    velocity_keep_ms: int
    velocity_blocks: bool
    travel_window_ms: int | None
    travel_blocks: bool


class Profile(NamedTuple):
    """Running statistics of a card's approved amounts (a tuple: cheap to build per approval)."""

    n: int = 0
    mean: float = 0.0
    var: float = 0.0


_NO_PROFILE = Profile()


def update_profile(profile: Profile, amount: int, samples: int) -> Profile:
    """Welford's update for the first ``samples`` amounts, exponentially weighted after.

    With weight a = 1/n: mean += a*d, var = (1-a)*(var + d*a*d), which is the exact population
    variance while n grows and an EWMA variance once n is capped at ``samples``.
    """
    n = min(profile.n + 1, samples)
    a = 1.0 / n
    diff = amount - profile.mean
    incr = a * diff
    return Profile(n, profile.mean + incr, (1.0 - a) * (profile.var + diff * incr))


class ReserveOutcome(NamedTuple):
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

    async def add_within(
        self,
        card_key: str,
        counter: str,
        day: str,
        day_expires_at: int,
        now_ms: int,
        amount: int,
        limit: int,
        blocks: bool,
    ) -> tuple[bool, int]:
        """Add ``amount`` to one more daily amount of a card (``counter`` in place of a
        currency; :meth:`release` with count 0 gives back) unless it would pass ``limit`` and
        ``blocks``: ``(added, the amount before)``."""

    async def mark(
        self,
        card_key: str,
        names: Sequence[str],
        members: Sequence[str],
        now_ms: int,
        window_ms: int,
    ) -> list[int]:
        """Record ``members[i]`` (at ``now_ms``; again: its time moves) in the card's sliding
        window ``names[i]``: the members within ``window_ms`` of each, this one included."""

    async def aclose(self) -> None: ...


class _Card:
    """What the store keeps per card, as small as it goes (``python -m
    benchmarks.risk_memory``): the dicts are made on first use and the countries are a
    tuple (a card has approvals in one or two; an empty set alone is 216 bytes)."""

    __slots__ = ("attempts", "countries", "marks", "profile", "profile_until", "seen", "until")

    def __init__(self) -> None:
        self.attempts: dict[str, int] | None = None
        """txn id -> time (ms), in insertion order (a retried id moves to the end, as ZADD
        moves its score); pruned by time on each reserve"""
        self.seen: dict[str, int] | None = None
        """merchant country -> last time (ms) within the travel window"""
        self.marks: dict[str, dict[str, int]] | None = None
        """structuring pattern -> member -> time (ms) within the window"""
        self.profile = _NO_PROFILE
        self.countries: tuple[str, ...] = ()
        """merchant countries with an approval, each once"""
        self.profile_until = 0
        """profile and countries are forgotten once now (ms) passes this (the Redis key's
        expiry: the TTL after the last approval)"""
        self.until = 0
        """nothing of the card matters once now (ms) passes this: the card may be dropped"""


class _Day:
    __slots__ = ("amounts", "counts", "expires_at")

    def __init__(self, expires_at: int) -> None:
        self.expires_at = expires_at
        self.amounts: dict[tuple[str, str], int] = {}
        self.counts: dict[str, int] = {}


class MemoryCounterStore:
    """Counters in this process. Exact under concurrency because no method awaits: each runs
    to completion within one scheduling step of the event loop.

    The ``*_now`` methods are the same operations as plain calls: the engine uses them
    directly (no coroutine per step) when the store is exactly this class.

    Time is the injected ``now`` of the reserves (the store's clock is the latest one seen): an
    approval's profile lives ``ttl_seconds`` (``profile_ttl_seconds`` when not given) from it.
    """

    def __init__(
        self, *, max_cards: int = 1_000_000, profile_ttl_seconds: int = 180 * 86_400
    ) -> None:
        self._max_cards = max_cards
        self._profile_ttl_ms = profile_ttl_seconds * 1000
        self._cards: OrderedDict[str, _Card] = OrderedDict()
        self._days: dict[str, _Day] = {}
        self._next_prune = 0
        self._clock = 0
        """the latest ``now`` (ms) of a reserve"""
        self._trim_at = 0
        """no card can be dropped before now (ms) passes this"""

    def _trim(self, now: int) -> None:
        """Drop up to two cards whose state is all over, from the least recently used end."""
        cards = self._cards
        for _ in range(2):
            if not cards or now <= next(iter(cards.values())).until:
                break
            cards.popitem(last=False)
        # the next new card looks again once the (then) oldest may be over: at once if it is
        self._trim_at = next(iter(cards.values())).until if cards else 0

    def _card(self, key: str, now: int) -> _Card:
        cards = self._cards
        card = cards.get(key)
        if card is None:
            # Only a new card grows the map: first drop up to two idle ones from the least
            # recently used end (each card goes at most once: O(1) amortised, no scan). Cards
            # are in order of last use and a card's state ends within the TTL (or its windows)
            # after its last use, so the oldest go first; a live one stops the trim, and
            # ``_trim_at`` (the live oldest's end) skips even the peek until it may be over.
            # A card kept a little longer changes nothing: its profile is checked on use.
            if now > self._trim_at:
                self._trim(now)
            card = cards[key] = _Card()
            if len(cards) > self._max_cards:
                cards.popitem(last=False)
        else:
            cards.move_to_end(key)
            if now > card.profile_until and card.profile_until:
                # the profile's TTL passed without an approval: forgotten, as the Redis keys
                card.profile = _NO_PROFILE
                card.countries = ()
                card.profile_until = 0
        return card

    def _prune_days(self, now_s: int) -> None:
        if now_s < self._next_prune:
            return
        for day in [d for d, b in self._days.items() if b.expires_at < now_s]:
            del self._days[day]
        self._next_prune = min((b.expires_at for b in self._days.values()), default=0)

    async def reserve(self, req: ReserveRequest) -> ReserveOutcome:
        return self.reserve_now(
            req.card_key,
            req.txn_id,
            req.currency,
            req.day,
            req.day_expires_at,
            req.now_ms,
            req.amount,
            req.country,
            req.reserve,
            req.plan,
        )

    def reserve_now(
        self,
        card_key: str,
        txn_id: str,
        currency: str,
        day: str,
        day_expires_at: int,
        now: int,
        amount: int,
        country: str,
        reserve: bool,
        plan: ReservePlan,
    ) -> ReserveOutcome:
        """:meth:`reserve` with the request's fields as arguments (see :class:`ReserveRequest`)."""
        (
            amount_limit,
            amount_blocks,
            count_limit,
            count_blocks,
            velocity_count,
            velocity_window_ms,
            keep_ms,
            velocity_blocks,
            travel_window_ms,
            travel_blocks,
        ) = plan
        if now > self._clock:
            self._clock = now
        card = self._card(card_key, now)
        # the card's velocity and travel state matter until their windows after this attempt
        span = (
            keep_ms if travel_window_ms is None or travel_window_ms < keep_ms else travel_window_ms
        )
        card.until = now + span if now + span > card.profile_until else card.profile_until
        attempts = 0
        if keep_ms > 0:
            times = card.attempts
            if times:
                cutoff = now - keep_ms
                if min(times.values()) <= cutoff:
                    times = card.attempts = {m: t for m, t in times.items() if t > cutoff}
                times.pop(txn_id, None)  # same member: its time moves (as ZADD does)
                times[txn_id] = now
                win = now - velocity_window_ms
                attempts = sum(1 for t in times.values() if t > win)
            else:
                card.attempts = {txn_id: now}
                attempts = 1 if velocity_window_ms > 0 else 0
        travel_country: str | None = None
        travel_at = 0
        if travel_window_ms is not None:
            seen = card.seen
            if seen:
                cutoff = now - travel_window_ms
                for other, t in list(seen.items()):
                    if t <= cutoff:
                        del seen[other]
                    elif other != country and (travel_country is None or t > travel_at):
                        travel_country, travel_at = other, t
                if now > seen.get(country, 0):
                    seen[country] = now
            elif now > 0:
                card.seen = {country: now}
        if now // 1000 >= self._next_prune:
            self._prune_days(now // 1000)
        bucket = self._days.get(day)
        akey = (card_key, currency)
        if bucket is not None:
            day_amount = bucket.amounts.get(akey, 0)
            day_count = bucket.counts.get(card_key, 0)
        else:
            day_amount = day_count = 0
        amount_exceeded = amount_limit is not None and day_amount + amount > amount_limit
        count_exceeded = count_limit is not None and day_count + 1 > count_limit
        velocity_exceeded = velocity_count is not None and attempts > velocity_count
        reserved = reserve and not (
            (amount_exceeded and amount_blocks)
            or (count_exceeded and count_blocks)
            or (velocity_exceeded and velocity_blocks)
            or (travel_country is not None and travel_blocks)
        )
        if reserved:
            if bucket is None:
                bucket = self._days[day] = _Day(day_expires_at)
                self._next_prune = min(self._next_prune or day_expires_at, day_expires_at)
            bucket.amounts[akey] = day_amount + amount
            bucket.counts[card_key] = day_count + 1
        return ReserveOutcome(
            reserved,
            attempts,
            day_amount,
            day_count,
            amount_exceeded,
            count_exceeded,
            velocity_exceeded,
            travel_country,
            now - travel_at if travel_country is not None else 0,
            card.profile,
            country in card.countries,
        )

    async def release(
        self, card_key: str, currency: str, day: str, amount: int, count: int
    ) -> None:
        self.release_now(card_key, currency, day, amount, count)

    def release_now(self, card_key: str, currency: str, day: str, amount: int, count: int) -> None:
        bucket = self._days.get(day)
        if bucket is None:
            return
        # A total given back to zero is dropped: a missing entry reads as zero, so nothing
        # changes for the limits, and a day's memory holds only cards that still owe it
        # something (a flood of declined made-up card numbers leaves nothing behind).
        akey = (card_key, currency)
        amounts = bucket.amounts
        held = amounts.get(akey)
        if held is not None:
            if held > amount:
                amounts[akey] = held - amount
            else:
                del amounts[akey]
        if count:
            counts = bucket.counts
            n = counts.get(card_key)
            if n is not None:
                if n > count:
                    counts[card_key] = n - count
                else:
                    del counts[card_key]

    async def record_approval(
        self, card_key: str, country: str, amount: int, samples: int, ttl_seconds: int
    ) -> None:
        self.record_approval_now(card_key, country, amount, samples, ttl_seconds)

    def record_approval_now(
        self,
        card_key: str,
        country: str,
        amount: int,
        samples: int,
        ttl_seconds: int | None = None,
    ) -> None:
        """:meth:`record_approval`; ``ttl_seconds`` None: the store's ``profile_ttl_seconds``.
        The approval happens at the store's clock (the latest reserve's ``now``)."""
        now = self._clock
        card = self._card(card_key, now)
        ttl_ms = self._profile_ttl_ms if ttl_seconds is None else ttl_seconds * 1000
        card.profile_until = now + ttl_ms
        if card.profile_until > card.until:
            card.until = card.profile_until
        card.profile = update_profile(card.profile, amount, samples)
        if country not in card.countries:
            card.countries = (*card.countries, country)

    async def add_within(
        self,
        card_key: str,
        counter: str,
        day: str,
        day_expires_at: int,
        now_ms: int,
        amount: int,
        limit: int,
        blocks: bool,
    ) -> tuple[bool, int]:
        bucket = self._days.get(day)
        akey = (card_key, counter)
        before = 0 if bucket is None else bucket.amounts.get(akey, 0)
        if blocks and before + amount > limit:
            return False, before
        if bucket is None:
            bucket = self._days[day] = _Day(day_expires_at)
            self._next_prune = min(self._next_prune or day_expires_at, day_expires_at)
        bucket.amounts[akey] = before + amount
        return True, before

    async def mark(
        self,
        card_key: str,
        names: Sequence[str],
        members: Sequence[str],
        now_ms: int,
        window_ms: int,
    ) -> list[int]:
        return self.mark_now(card_key, names, members, now_ms, window_ms)

    def mark_now(
        self,
        card_key: str,
        names: Sequence[str],
        members: Sequence[str],
        now: int,
        window_ms: int,
    ) -> list[int]:
        """:meth:`mark` as a plain call."""
        if now > self._clock:
            self._clock = now
        card = self._card(card_key, now)
        if now + window_ms > card.until:  # the marks matter for their window
            card.until = now + window_ms
        marks = card.marks
        if marks is None:
            marks = card.marks = {}
        cutoff = now - window_ms
        counts = []
        for name, member in zip(names, members, strict=True):
            times = {m: t for m, t in marks.get(name, {}).items() if t > cutoff and m != member}
            times[member] = now
            marks[name] = times
            counts.append(len(times))
        return counts

    async def usage(self, card_key: str, currency: str, day: str) -> tuple[int, int]:
        bucket = self._days.get(day)
        if bucket is None:
            return 0, 0
        return bucket.amounts.get((card_key, currency), 0), bucket.counts.get(card_key, 0)

    async def aclose(self) -> None:
        return None

    def statistics(self) -> dict[str, int]:
        return {"cards": len(self._cards), "days": len(self._days)}
