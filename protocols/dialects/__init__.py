"""ISO 8583 dialects, declared as data on pyiso8583 specs (one module per dialect, no logic)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from protocols.dialects import terminal

Spec = Mapping[str, Mapping[str, Any]]

DIALECTS: dict[str, Spec] = {"terminal": terminal.SPEC}


def get_dialect(name: str) -> Spec:
    try:
        return DIALECTS[name]
    except KeyError:
        raise KeyError(f"unknown ISO 8583 dialect {name!r}; known: {sorted(DIALECTS)}") from None
