"""Retrieval reference numbers (field 37): 12 characters, unique per switch, across restarts.

A strictly increasing counter seeded from the wall clock in microseconds (so a restart starts
past every RRN issued before, unless more than a million were issued per second), with the node
number in the last base-36 digit so nodes never collide. Base 36 keeps it to 12 characters.
"""

from __future__ import annotations

_DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _base36(value: int, width: int) -> str:
    out = []
    for _ in range(width):
        value, rem = divmod(value, 36)
        out.append(_DIGITS[rem])
    return "".join(reversed(out))


class RrnGenerator:
    __slots__ = ("_last", "_node")

    def __init__(self, node: int, now_us: int) -> None:
        if not 0 <= node < 36:
            raise ValueError("node must be 0..35")
        self._node = node
        self._last = now_us

    def next(self, now_us: int) -> str:
        self._last = max(self._last + 1, now_us)
        return _base36(self._last * 36 + self._node, 12)
