"""BIN routing: the longest configured PAN prefix wins."""

from __future__ import annotations

from collections.abc import Iterable


class BinTable:
    __slots__ = ("_lengths", "_table")

    def __init__(self, routes: Iterable[tuple[str, str]]) -> None:
        table: dict[str, str] = {}
        for prefix, issuer in routes:
            if not prefix.isdigit():
                raise ValueError(f"BIN prefix {prefix!r} is not numeric")
            if table.get(prefix, issuer) != issuer:
                raise ValueError(f"BIN prefix {prefix} routed to two issuers")
            table[prefix] = issuer
        self._table = table
        self._lengths = sorted({len(p) for p in table}, reverse=True)

    def route(self, pan: str) -> str | None:
        table = self._table
        for n in self._lengths:
            issuer = table.get(pan[:n])
            if issuer is not None:
                return issuer
        return None
