"""Retrieval reference numbers (field 37): 12 characters, unique per switch, across restarts.

A strictly increasing counter seeded from the wall clock in microseconds (so a restart starts
past every RRN issued before, unless more than a million were issued per second), with the node
number in the last base-36 digit so nodes never collide. Base 36 keeps it to 12 characters.
"""

from __future__ import annotations

_DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_PAIRS = tuple(a + b for a in _DIGITS for b in _DIGITS)
"""Two base-36 digits for each value below 36 ** 2."""
_HALF = 36**6


def _base36(value: int, width: int) -> str:
    out = []
    for _ in range(width):
        value, rem = divmod(value, 36)
        out.append(_DIGITS[rem])
    return "".join(reversed(out))


def rrn_node(rrn: str) -> int | None:
    """The node that issued ``rrn`` (its last base-36 digit); None for a malformed one."""
    node = _DIGITS.find(rrn[-1:])
    return node if node >= 0 and len(rrn) == 12 else None


class RrnGenerator:
    __slots__ = ("_high", "_high_text", "_last", "_node")

    def __init__(self, node: int, now_us: int) -> None:
        if not 0 <= node < 36:
            raise ValueError("node must be 0..35")
        self._node = node
        self._last = now_us
        self._high = -1
        self._high_text = ""

    def next(self, now_us: int) -> str:
        last = self._last + 1
        if now_us > last:
            last = now_us
        self._last = last
        # _base36(value, 12) in pieces: the high six digits change about once a minute and
        # are kept; the low six come from a table of digit pairs.
        high, low = divmod(last * 36 + self._node, _HALF)
        if high != self._high:
            self._high = high
            self._high_text = _base36(high, 6)
        mid, right = divmod(low, 1296)
        left, mid = divmod(mid, 1296)
        return self._high_text + _PAIRS[left] + _PAIRS[mid] + _PAIRS[right]
