"""ISO 8583 dialects, declared as data on pyiso8583 specs (one module per dialect, no logic).

Each is checked both ways against messages jPOS 2.1.10 packed itself
(``tests/protocols/test_dialects_golden.py``); README, "How to add a dialect"."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from protocols.dialects import iso87_ascii, iso87_ascii_hex, iso87_bcd, iso93_ascii, iso93_bcd

Spec = Mapping[str, Mapping[str, Any]]

DIALECTS: dict[str, Spec] = {
    "iso87-ascii": iso87_ascii.SPEC,
    "iso87-ascii-hex": iso87_ascii_hex.SPEC,
    "iso87-bcd": iso87_bcd.SPEC,
    "iso93-ascii": iso93_ascii.SPEC,
    "iso93-bcd": iso93_bcd.SPEC,
}
# The name conf and the code used before there were several: SPEC's terminal dialect.
DIALECTS["terminal"] = DIALECTS["iso87-ascii"]


def get_dialect(name: str) -> Spec:
    try:
        return DIALECTS[name]
    except KeyError:
        raise KeyError(f"unknown ISO 8583 dialect {name!r}; known: {sorted(DIALECTS)}") from None
