"""The issuer's posting file: what it posted, one CSV line per posting, for reconciliation.

A real issuer sends its acquirer a settlement (clearing) file; the simulator writes the
same from ``IssuerHost.postings``: every posting it still holds (bounded by ``max_records``),
keyed as the issuer saw it (STAN 11 + transmission 7 of the request, or of the 0120 for a
stand-in advice). The PAN is written masked (first 6 / last 4), never in clear.

A running simulator writes it on ``SIGUSR1`` when ``postings_file`` is configured (see
:class:`issuer_sim.server.IssuerServer`): ``kill -USR1 <pid>``. The file is replaced
atomically (written next to it, then renamed), so a reader never sees half a file.
``gateway journal reconcile --file`` reads it.
"""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

from issuer_sim.host import IssuerHost, Posting
from protocols.postings import POSTING_COLUMNS
from protocols.redact import mask_pan

# The file's header line: the switch's reconciliation defines the format it reads.
COLUMNS = POSTING_COLUMNS

Snapshot = list[tuple[str, str, str, str, int, str, bool, bool, str]]


Items = list[tuple[tuple[str, str], Posting]]


def rows_of(items: Items) -> Snapshot:
    """``(key, posting)`` items as plain tuples (clear PANs stay in memory: :func:`write_csv`
    masks them)."""
    return [
        (p.mti, stan, when, p.kind, p.amount, p.auth_code, p.approved, p.reversed, p.pan)
        for (stan, when), p in items
    ]


def snapshot(host: IssuerHost) -> Snapshot:
    """The host's postings as plain tuples, taken at once (run it on the host's thread: the
    postings change under the event loop; the server takes it in chunks, see
    ``IssuerServer._export_on_signal``)."""
    return rows_of(list(host.postings.items()))


def write_csv(rows: Snapshot, path: str | Path) -> int:
    """Write ``rows`` (see :func:`snapshot`) to ``path`` atomically; returns the count."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="ascii") as out:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(COLUMNS)
            for mti, stan, when, kind, amount, auth, approved, reversed_, pan in rows:
                writer.writerow(
                    (
                        mti,
                        stan,
                        when,
                        kind,
                        amount,
                        auth,
                        int(approved),
                        int(reversed_),
                        mask_pan(pan),
                    )
                )
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(rows)


def write_postings(host: IssuerHost, path: str | Path) -> int:
    """Snapshot and write in one go (tests, tools); returns the number of postings."""
    return write_csv(snapshot(host), path)
