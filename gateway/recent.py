"""Recent transactions in memory: duplicate transmissions and originals of reversals.

Keyed by (MTI class, terminal, STAN, transmission date-time). Bounded in count and age; the
durable journal answers beyond that window.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from dataclasses import dataclass, field

import anyio

from protocols.keys import DuplicateKey
from protocols.message import Message


class Done:
    """An ``anyio.Event`` made only when someone waits: every transaction has one, almost
    none is ever waited on (only a duplicate arriving while its original is in flight), and
    creating an AnyIO event costs an async-library lookup."""

    __slots__ = ("_event", "_flag")

    def __init__(self) -> None:
        self._flag = False
        self._event: anyio.Event | None = None

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        self._flag = True
        if self._event is not None:
            self._event.set()

    async def wait(self) -> None:
        if self._flag:
            return
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()


@dataclass(slots=True)
class TxnEntry:
    created: float
    done: Done = field(default_factory=Done)
    response: Message | None = None
    issuer: str | None = None
    issuer_mti: str = ""
    issuer_stan: str = ""
    issuer_time: str = ""
    rrn: str = ""
    amount: int = 0
    currency: str = ""
    when: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    """Wall-clock time of the request (the risk day a reversal gives back to)."""
    approved: bool = False
    reversed: bool = False
    pan: str = field(default="", repr=False)


class RecentTransactions:
    def __init__(self, *, window: float, max_entries: int = 500_000) -> None:
        self.window = window
        self.max_entries = max_entries
        self._entries: OrderedDict[DuplicateKey, TxnEntry] = OrderedDict()
        self._head_created = 0.0
        """``created`` of the oldest entry: nothing is due for eviction before it is."""

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: DuplicateKey, now: float) -> TxnEntry | None:
        entry = self._entries.get(key)
        if entry is not None and now - entry.created > self.window:
            return None
        return entry

    def begin(self, key: DuplicateKey, now: float, when: dt.datetime | None = None) -> TxnEntry:
        """A new entry created at ``now`` (monotonic) for a request of wall-clock time
        ``when`` (default: the current time)."""
        entries = self._entries
        entry = TxnEntry(created=now) if when is None else TxnEntry(created=now, when=when)
        if key in entries or not entries:
            entries[key] = entry
            entries.move_to_end(key)  # the head may have moved: look again below
        else:
            entries[key] = entry
            if len(entries) <= self.max_entries and now - self._head_created <= self.window:
                return entry  # the head stays: nothing to evict
        # Evict by age, then by count (oldest first).
        while entries:
            oldest_key, oldest = next(iter(entries.items()))
            if len(entries) > self.max_entries or now - oldest.created > self.window:
                del entries[oldest_key]
            else:
                self._head_created = oldest.created
                break
        return entry
