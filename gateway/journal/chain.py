"""The tamper-evidence chain over the event log (pure: no I/O).

Every event row gets ``mac = HMAC-SHA256(chain_key, prev_mac || canonical(row))`` where
``canonical`` is a versioned JSON array of the row's columns in a fixed order (bytes as hex),
and ``prev_mac`` is the previous row's mac: the genesis value (32 zero bytes) for the first
row, the *anchor* after older rows were archived. Two chain-state rows are kept beside the
events, each with its own tag ``HMAC(chain_key, name || seq || mac)``:

- ``anchor``: (seq, mac) of the last archived event (0 / genesis when nothing was archived);
- ``head``: (seq, mac) of the last event, updated in the same transaction as the appends.

An edited or deleted row breaks its own mac or the sequence; a truncated tail no longer matches
the head; moving the anchor or the head needs the key. The index table is not chained: it is a
cache of the events (``rebuild_index``).
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

import orjson

from gateway.journal.keyed import HmacSha256
from gateway.journal.model import VerifyResult

GENESIS = bytes(32)
_DOMAIN = b"payswitch-journal-v1\x00"

# Columns of an event row in chain order (seq first, mac excluded: it is the output).
DATA_COLUMNS: tuple[str, ...] = (
    "mti",
    "processing_code",
    "amount",
    "currency",
    "terminal_id",
    "merchant_id",
    "stan",
    "transmission",
    "issuer_id",
    "rrn",
    "auth_code",
    "response_code",
    "orig_mti",
    "orig_stan",
    "orig_transmission",
    "note",
    "pan_hash",
    "pan_masked",
    "pan_enc",
    "request_enc",
    "response_enc",
    # Added after the first journals were written: last, so that an event without it is
    # chained exactly as before (``canonical`` leaves a trailing None of it out).
    "business_date",
)
CHAINED_COLUMNS: tuple[str, ...] = ("seq", "txn_id", "state", "at_us", *DATA_COLUMNS)
EVENT_COLUMNS: tuple[str, ...] = (*CHAINED_COLUMNS, "mac")
BLOB_COLUMNS = frozenset({"pan_enc", "request_enc", "response_enc", "mac"})


def _hex(value: object) -> str:
    """orjson's fallback: only binary values reach it (ints, strings and None are native)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    raise TypeError(f"cannot chain a {type(value).__name__}")


_CHAINED = len(CHAINED_COLUMNS)


def canonical(values: Sequence[object]) -> bytes:
    """Deterministic bytes of a row's chained values (ints, strings, None, bytes as hex).

    A row without a business date is chained without that column, as every row was before
    it existed: journals and archives written then keep verifying. orjson walks the row in C
    and calls back only for the few binary values."""
    row = values if isinstance(values, tuple | list) else list(values)
    if len(row) == _CHAINED and row[-1] is None:
        row = row[:-1]
    return _DOMAIN + orjson.dumps(row, default=_hex)


class Chain:
    """MACs and chain-state tags under the chain key (key material: never log it)."""

    __slots__ = ("_hmac", "_key")

    def __init__(self, key: bytes) -> None:
        self._hmac = HmacSha256(key)
        self._key = bytes(key)

    def __reduce__(self) -> tuple[type[Chain], tuple[bytes]]:
        # Pickled only down the pipe to the gateway's own journal writer process.
        return (Chain, (self._key,))

    def __repr__(self) -> str:
        return "Chain(<key>)"

    def mac(self, prev_mac: bytes, values: Sequence[object]) -> bytes:
        return self._hmac.digest(bytes(prev_mac) + canonical(values))

    def tag(self, name: str, seq: int, mac: bytes) -> bytes:
        message = _DOMAIN + name.encode() + b"\x00" + seq.to_bytes(8, "big") + bytes(mac)
        return self._hmac.digest(message)

    def tag_ok(self, name: str, seq: int, mac: bytes, tag: bytes) -> bool:
        return hmac.compare_digest(self.tag(name, seq, mac), bytes(tag))


class ChainVerifier:
    """Feed event rows (``EVENT_COLUMNS`` order) in seq order; stops at the first bad link."""

    def __init__(self, chain: Chain, anchor_seq: int, anchor_mac: bytes) -> None:
        self._chain = chain
        self.expected = anchor_seq + 1
        self.prev_mac = bytes(anchor_mac)
        self.count = 0
        self.first_seq: int | None = None
        self.broken_seq: int | None = None
        self.reason: str | None = None

    @property
    def broken(self) -> bool:
        return self.reason is not None

    @property
    def last_seq(self) -> int:
        return self.expected - 1

    def feed(self, row: Sequence[object]) -> bool:
        """Check one row; False (and ``broken_seq``/``reason`` set) at the first bad link."""
        if self.reason is not None:
            return False
        seq = row[0]
        if not isinstance(seq, int) or seq != self.expected:
            return self.fail(self.expected, f"sequence gap: event {self.expected} missing")
        mac = row[-1]
        if not isinstance(mac, bytes | bytearray | memoryview):
            return self.fail(seq, "mac missing")
        if not hmac.compare_digest(self._chain.mac(self.prev_mac, row[:-1]), bytes(mac)):
            return self.fail(seq, "mac mismatch: record altered")
        if self.first_seq is None:
            self.first_seq = seq
        self.prev_mac = bytes(mac)
        self.expected += 1
        self.count += 1
        return True

    def fail(self, seq: int, reason: str) -> bool:
        if self.reason is None:
            self.broken_seq, self.reason = seq, reason
        return False

    def finish(self, head_seq: int, head_mac: bytes) -> VerifyResult:
        """Compare the end of the chain with the stored head."""
        if self.reason is None and (
            head_seq != self.last_seq or not hmac.compare_digest(bytes(head_mac), self.prev_mac)
        ):
            if head_seq > self.last_seq:
                self.fail(self.last_seq + 1, f"truncated: head is at {head_seq}")
            elif head_seq < self.last_seq:
                self.fail(head_seq + 1, "events beyond the recorded head")
            else:
                self.fail(head_seq, "head mac does not match the last event")
        return self.result()

    def result(self) -> VerifyResult:
        return VerifyResult(
            ok=self.reason is None,
            count=self.count,
            first_seq=self.first_seq,
            last_seq=self.last_seq if self.count else None,
            broken_seq=self.broken_seq,
            reason=self.reason,
        )
