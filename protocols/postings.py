"""The issuer's posting file for reconciliation: an interface between two organisations, like
the wire. The issuer simulator writes it (``issuer_sim/postings.py``), ``gateway journal
reconcile`` reads it (``gateway/journal/reconcile.py``): CSV with this header, one line per
posting, masked PAN only."""

from __future__ import annotations

POSTING_COLUMNS = (
    "mti",
    "stan",
    "transmission",
    "kind",
    "amount",
    "auth_code",
    "approved",
    "reversed",
    "pan_masked",
)
"""The header line's columns (the reader accepts them in any order)."""
