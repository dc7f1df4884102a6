"""Recent transactions in memory: duplicate transmissions and originals of reversals.

Keyed by (MTI class, terminal, STAN, transmission date-time) as one string
(:func:`protocols.keys.key_of`). Bounded in count and age; the
durable journal answers beyond that window.

The window holds up to ``max_entries`` (500,000) transactions for 24 hours, so an entry keeps
only what the duplicate check, a reversal's original and the replay of an answer need, in
compact form (``python -m benchmarks.recent``: bytes per entry, CPU per transaction):

* the answer as its MTI and its fields as one JSON text (orjson: the cheapest exact form
  measured, about 3,000 instructions; decoded to text, as orjson's own bytes object kept per
  entry measured several times slower), rebuilt into a
  :class:`Message` only to replay it: the same fields and values, so the same bytes on the wire;
* the request's wall-clock time as the ``datetime`` the request already has (a float would
  save 24 bytes, but ``datetime.timestamp()`` costs about 2,000 instructions per transaction,
  callgrind);
* the completion flag and the event a duplicate in flight waits on in one slot (the entry is
  its own ``done`` event; the event is made only when someone waits);
* the entry's MTI and currency strings interned (a handful of values, shared by all);
* a plain dict plus a deque in creation order instead of an ``OrderedDict``.
* the key as one string of 25 characters (:func:`protocols.keys.key_of`) instead of a tuple of
  four strings: 950 -> 822 bytes per entry (tracemalloc), and cheaper to build and hash.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections import deque

import anyio
import orjson

from gateway.flow.evicted import EvictedKeys
from protocols.keys import DuplicateKey
from protocols.message import Message

_intern = sys.intern
_NO_KEY: DuplicateKey = ""
_utcnow = dt.datetime.now
_UTC = dt.UTC
_last = ["", ""]
"""The currency and the issuer MTI of the last entry finished (interned)."""
_dumps = orjson.dumps
_loads = orjson.loads


def _compact(answer: Message) -> tuple[str, str | Message]:
    """(MTI, fields as JSON text) of ``answer``: one string instead of a message, a dict and a
    string per field, and exact (any text round-trips). A value JSON cannot hold (a lone
    surrogate) keeps a copy of the message instead."""
    try:
        return answer.mti, _dumps(answer.fields).decode()
    except TypeError:
        return answer.mti, Message(answer.mti, dict(answer.fields))


class TxnEntry:
    """One transaction of the window. ``done`` is the entry itself: ``done.is_set()``,
    ``done.set()`` and ``await done.wait()`` (an ``anyio.Event`` made only when someone waits).

    ``response`` is kept compact (see the module's docstring): reading it builds a new
    :class:`Message` with the answer's fields, so whoever changes an answer after it was
    recorded sets it again (``JournalStage._withhold``).
    """

    __slots__ = (
        "_answer",
        "_answer_mti",
        "_state",
        "amount",
        "approved",
        "business_date",
        "created",
        "currency",
        "issuer",
        "issuer_mti",
        "issuer_stan",
        "issuer_time",
        "key",
        "pan",
        "reversed",
        "rrn",
        "when",
    )

    def __init__(
        self, created: float, when: dt.datetime | None = None, key: DuplicateKey = _NO_KEY
    ) -> None:
        """``created``: monotonic time of the request; ``when``: its wall-clock time (default:
        now); ``key``: where the window keeps it (set by :meth:`RecentTransactions.insert` for
        an entry made outside)."""
        self.key = key
        self.created = created
        self.when = _utcnow(_UTC) if when is None else when
        """Wall-clock time of the request, UTC (the risk day a reversal gives back to)."""
        self._state: anyio.Event | bool | None = None
        """``None`` in flight, an ``anyio.Event`` in flight with someone waiting, ``True``
        done."""
        self._answer_mti = ""
        self._answer: str | Message | None = None
        """The answer's fields as JSON text (or, rarely, a copy of the answer)."""
        self.issuer: str | None = None
        self.issuer_mti = ""
        self.issuer_stan = ""
        self.issuer_time = ""
        self.rrn = ""
        self.amount = 0
        self.currency = ""
        self.approved = False
        self.reversed = False
        self.pan = ""
        self.business_date: dt.date | None = None
        """The business date fixed when the request was received (its reversal keeps it)."""

    def __repr__(self) -> str:
        # Never the card number or the answer's values.
        return (
            f"TxnEntry(created={self.created!r}, done={self._state is True}, "
            f"issuer={self.issuer!r}, rrn={self.rrn!r}, approved={self.approved}, "
            f"reversed={self.reversed})"
        )

    # -- completion: the entry is its own event ------------------------------------------------

    @property
    def done(self) -> TxnEntry:
        return self

    def is_set(self) -> bool:
        return self._state is True

    def set(self) -> None:
        state = self._state
        self._state = True
        if state is not None and isinstance(state, anyio.Event):
            state.set()

    async def wait(self) -> None:
        state = self._state
        if state is True:
            return
        if not isinstance(state, anyio.Event):
            state = self._state = anyio.Event()
        await state.wait()

    def finish(self, answer: Message | None, approved: bool) -> None:
        """The transaction's outcome: keep its answer (compact) and whether it was approved,
        then wake whoever waits for it. Once: a finished entry stays as it is."""
        state = self._state
        if state is True:
            return
        if answer is not None:
            self._answer_mti = answer.mti
            try:  # _compact, inline: once per transaction
                self._answer = _dumps(answer.fields).decode()
            except TypeError:
                self._answer = Message(answer.mti, dict(answer.fields))
        self.approved = approved
        # A handful of values each: one string shared by every entry (the last one seen is
        # compared first, which costs less than interning).
        currency = self.currency
        if currency != _last[0]:
            _last[0] = _intern(currency)
        self.currency = _last[0]
        mti = self.issuer_mti
        if mti != _last[1]:
            _last[1] = _intern(mti)
        self.issuer_mti = _last[1]
        self._state = True
        if state is not None and isinstance(state, anyio.Event):
            state.set()

    # -- compact fields ------------------------------------------------------------------------

    @property
    def response(self) -> Message | None:
        """The answer given (a new message each time), ``None`` before there is one."""
        answer = self._answer
        if answer is None:
            return None
        if isinstance(answer, Message):
            return Message(answer.mti, dict(answer.fields))
        fields: dict[str, str] = _loads(answer)
        return Message(self._answer_mti, fields)

    @response.setter
    def response(self, answer: Message | None) -> None:
        if answer is None:
            self._answer = None
        else:
            mti, self._answer = _compact(answer)
            self._answer_mti = _intern(mti)


class RecentTransactions:
    """Entries by key in a dict, and in a deque in the order they were made (each entry knows
    its key): the oldest is evicted first. An entry made again under its key leaves its old
    one in the deque, skipped when it comes first."""

    def __init__(
        self, *, window: float, max_entries: int = 500_000, evicted: EvictedKeys | None = None
    ) -> None:
        self.window = window
        self.max_entries = max_entries
        self.evicted = evicted
        """Where keys evicted by count (still inside the window) are remembered, if anywhere:
        the journal is asked about a key memory lacks only when it may be one of them."""
        self._entries: dict[DuplicateKey, TxnEntry] = {}
        self._order: deque[TxnEntry] = deque()
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
        entry = TxnEntry(now, when, key)
        entries = self._entries
        size = len(entries)
        entries[key] = entry
        self._order.append(entry)
        if size >= self.max_entries or now - self._head_created > self.window or not size:
            self._evict(now)
        return entry

    def insert(self, key: DuplicateKey, entry: TxnEntry) -> None:
        """Put a made entry (one the journal knows) under ``key``, as made at its ``created``."""
        entry.key = key
        self._entries[key] = entry
        self._order.append(entry)
        self._evict(entry.created)

    def _evict(self, now: float) -> None:
        """By age, then by count (oldest first)."""
        entries, order = self._entries, self._order
        while order:
            oldest = order[0]
            key = oldest.key
            if entries.get(key) is not oldest:
                order.popleft()  # made again since: its entry is further on
            elif (aged := now - oldest.created > self.window) or len(entries) > self.max_entries:
                order.popleft()
                del entries[key]
                if not aged and self.evicted is not None:  # by count, still inside the window
                    self.evicted.add(key, oldest.created)
            else:
                self._head_created = oldest.created
                return
