"""Keys the in-memory window evicted by count while still inside its time window.

Once ``RecentTransactions`` is full (past 500,000 entries it evicts by count: any switch above
about 6 TPS with a 24-hour window), a new request's key missing from memory no longer proves
it new: the journal may hold it. Asking the journal on every miss (what the switch did) costs
a SQLite lookup in a thread per transaction, and the first 1-hour soak collapsed from 717 to
18 TPS when the cap was reached. The journal is needed only for keys memory *evicted*: this
remembers them in Bloom filters (about 1.5 bytes per key, no false negatives; a false
positive, about 0.3 %, costs only the lookup the switch did before), in generations so that
keys older than the window are forgotten wholesale.

Each generation holds up to its capacity; the next one is twice as large (up to
``MAX_GENERATION_KEYS``), so a busy switch has a few large filters to test, not hundreds of
small ones. Memory is bounded by ``max_bytes``: when a generation still inside the window
would have to go, the filter goes *blind* until that generation's newest key has left the
window, and answers "maybe" for every key meanwhile (correct, only slower; logged once).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kit.logs import get_logger

log = get_logger("gateway.flow.evicted")

BITS_PER_KEY = 12
HASHES = 8
"""12 bits and 8 hashes per key: a false positive rate of about 0.3 % when full."""
MAX_GENERATION_KEYS = 8_000_000
_MASK32 = 0xFFFFFFFF


@dataclass(eq=False)
class _Generation:
    capacity: int
    bits: bytearray = field(init=False)
    nbits: int = field(init=False)
    count: int = 0
    newest: float = float("-inf")
    """``created`` (monotonic) of the newest key added."""

    def __post_init__(self) -> None:
        self.nbits = max(64, self.capacity * BITS_PER_KEY)
        self.bits = bytearray((self.nbits + 7) // 8)

    def add(self, h1: int, h2: int) -> None:
        bits, nbits = self.bits, self.nbits
        for i in range(HASHES):
            p = (h1 + i * h2) % nbits
            bits[p >> 3] |= 1 << (p & 7)
        self.count += 1

    def has(self, h1: int, h2: int) -> bool:
        bits, nbits = self.bits, self.nbits
        for i in range(HASHES):
            p = (h1 + i * h2) % nbits
            if not bits[p >> 3] & (1 << (p & 7)):
                return False
        return True


def _hashes(key: str) -> tuple[int, int]:
    # Python's str hash (SipHash, 64 bits, salted per process) split in two for double
    # hashing (Kirsch-Mitzenmacher); h2 odd so its multiples cover every position.
    h = hash(key)
    return h & _MASK32, ((h >> 32) & _MASK32) | 1


class EvictedKeys:
    """Keys evicted from memory within the last ``window`` seconds (monotonic clock)."""

    def __init__(self, *, window: float, first_capacity: int, max_bytes: int) -> None:
        self.window = window
        self.first_capacity = max(1, first_capacity)
        self.max_bytes = max_bytes
        self._gens: list[_Generation] = []
        self.blind_until = float("-inf")
        """Until then (monotonic), every key may be evicted: a generation inside the window
        was dropped for memory."""
        self.dropped_for_memory = 0

    def __len__(self) -> int:
        return sum(g.count for g in self._gens)

    def key_budget(self) -> int:
        """Keys these filters take before memory runs out (with room for the doubling)."""
        return int(self.max_bytes * 8 / BITS_PER_KEY * 0.8)

    def add(self, key: str, created: float) -> None:
        """``key`` (made at ``created``) left memory while still inside the window."""
        gen = self._gens[-1] if self._gens else None
        if gen is None or gen.count >= gen.capacity:
            self._expire(created)
            gens = self._gens
            capacity = self.first_capacity
            if gens:
                capacity = min(max(gens[-1].capacity * 2, capacity), MAX_GENERATION_KEYS)
            gen = _Generation(capacity)
            gens.append(gen)
            self._fit(created)
        h1, h2 = _hashes(key)
        gen.add(h1, h2)
        if created > gen.newest:
            gen.newest = created

    def may_contain(self, key: str, now: float) -> bool:
        """False only when ``key`` was certainly not evicted within the window."""
        if now < self.blind_until:
            return True
        h1, h2 = _hashes(key)
        horizon = now - self.window
        return any(g.newest >= horizon and g.has(h1, h2) for g in self._gens)

    def _expire(self, now: float) -> None:
        horizon = now - self.window
        self._gens = [g for g in self._gens if g.newest >= horizon]

    def _fit(self, now: float) -> None:
        # Oldest first while over budget (the newest generation always stays).
        gens = self._gens
        while len(gens) > 1 and sum(len(g.bits) for g in gens) > self.max_bytes:
            old = gens.pop(0)
            until = old.newest + self.window
            if until > now and until > self.blind_until:
                if now >= self.blind_until:
                    log.warning(
                        "duplicate_filter_full",
                        max_bytes=self.max_bytes,
                        blind_seconds=round(until - now, 1),
                        reason="more evicted keys inside the duplicate window than the"
                        " filter's memory holds: every memory miss asks the journal",
                    )
                self.blind_until = until
                self.dropped_for_memory += 1
