"""Redaction: what may be shown of card data. PAN as first 6 / last 4 at most."""

from __future__ import annotations

from collections.abc import Mapping

# Fields never shown at all: track data, CVV2 (48), PIN block, KSN, EMV data, MAC, expiry,
# and 123 (an AES DUKPT terminal's KSN and PIN block).
HIDDEN_FIELDS = frozenset({"35", "36", "45", "48", "52", "53", "55", "64", "128", "14", "123"})
PAN_FIELDS = frozenset({"2"})


def mask_pan(pan: str) -> str:
    """``4761730000000011`` -> ``476173******0011``; short values are hidden entirely."""
    if len(pan) < 13:
        return "*" * len(pan)
    return f"{pan[:6]}{'*' * (len(pan) - 10)}{pan[-4:]}"


def redact_fields(fields: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in fields.items():
        if key in PAN_FIELDS:
            out[key] = mask_pan(value)
        elif key in HIDDEN_FIELDS:
            out[key] = f"<{len(value)} hidden>"
        else:
            out[key] = value
    return out
