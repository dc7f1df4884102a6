"""Archive files: gzip JSON lines that verify on their own (synchronous file I/O).

Layout, one JSON object per line::

    {"format": "payswitch-journal-archive", "version": 1, "prev_seq": N, "prev_mac": hex, ...}
    {"seq": N+1, "txn_id": ..., ..., "mac": hex}          # one line per event, columns as stored
    ...
    {"end": true, "count": C, "first_seq": N+1, "last_seq": M, "last_mac": hex, "tag": hex}

Encrypted columns stay encrypted (hex), so an archive holds no clear PAN either. The chain
runs from ``prev_mac`` through every row; the trailer's tag (HMAC under the chain key) makes a
truncated or re-cut file detectable. The database keeps ``(M, last_mac)`` as its anchor, so
the remaining chain still verifies, and ``restore`` only accepts the archive that ends exactly
at the anchor (restore newest archives first).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from gateway.journal.chain import BLOB_COLUMNS, EVENT_COLUMNS, Chain, ChainVerifier
from gateway.journal.errors import ArchiveFormatError, JournalStateError
from gateway.journal.model import VerifyResult

FORMAT = "payswitch-journal-archive"
VERSION = 1


@dataclass(frozen=True, slots=True)
class ArchiveInfo:
    """Header and trailer of an archive file."""

    prev_seq: int
    prev_mac: bytes
    count: int
    first_seq: int
    last_seq: int
    last_mac: bytes


def _row_json(row: Sequence[Any]) -> bytes:
    obj = {
        col: (bytes(v).hex() if col in BLOB_COLUMNS and v is not None else v)
        for col, v in zip(EVENT_COLUMNS, row, strict=True)
    }
    return orjson.dumps(obj) + b"\n"


def _row_from_json(obj: dict[str, Any]) -> tuple[Any, ...]:
    try:
        obj.setdefault("business_date", None)  # archives written before the column
        return tuple(
            bytes.fromhex(obj[c]) if c in BLOB_COLUMNS and obj[c] is not None else obj[c]
            for c in EVENT_COLUMNS
        )
    except (KeyError, ValueError, TypeError):
        raise ArchiveFormatError("archive row has missing or malformed columns") from None


class ArchiveWriter:
    """Writes rows to a temporary file, checking the chain as it goes; ``finish`` renames.

    A broken link stops the run: archiving tampered rows would launder them.
    """

    def __init__(self, out_dir: Path, chain: Chain, prev_seq: int, prev_mac: bytes) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self._dir = out_dir
        self._chain = chain
        self._verifier = ChainVerifier(chain, prev_seq, prev_mac)
        self._tmp = out_dir / f".journal-archive-{os.getpid()}-{prev_seq}.tmp"
        self._raw: IO[bytes] = self._tmp.open("wb")
        self._gz = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=6, mtime=0)
        header = {"format": FORMAT, "version": VERSION, "prev_seq": prev_seq}
        self._gz.write(orjson.dumps({**header, "prev_mac": prev_mac.hex()}) + b"\n")

    @property
    def count(self) -> int:
        return self._verifier.count

    def add_many(self, rows: Iterable[Sequence[Any]]) -> None:
        for row in rows:
            if not self._verifier.feed(row):
                self.abort()
                raise JournalStateError(
                    f"chain broken at seq {self._verifier.broken_seq} "
                    f"({self._verifier.reason}): run verify; nothing archived"
                )
            self._gz.write(_row_json(row))

    def finish(self) -> tuple[Path, int, int, bytes]:
        """Close, fsync and rename: (path, first_seq, last_seq, last_mac)."""
        v = self._verifier
        if v.first_seq is None:
            self.abort()
            raise JournalStateError("nothing to archive")
        last_mac = v.prev_mac
        trailer = {
            "end": True,
            "count": v.count,
            "first_seq": v.first_seq,
            "last_seq": v.last_seq,
            "last_mac": last_mac.hex(),
            "tag": self._chain.tag("archive", v.last_seq, last_mac).hex(),
        }
        self._gz.write(orjson.dumps(trailer) + b"\n")
        self._gz.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        path = self._dir / f"journal-{v.first_seq:012d}-{v.last_seq:012d}.jsonl.gz"
        if path.exists():
            self._tmp.unlink()
            raise JournalStateError(f"{path.name} already exists")
        self._tmp.rename(path)
        dir_fd = os.open(self._dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return path, v.first_seq, v.last_seq, last_mac

    def abort(self) -> None:
        try:
            self._gz.close()
            self._raw.close()
        finally:
            self._tmp.unlink(missing_ok=True)


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    try:
        with gzip.open(path, "rb") as fh:
            for line in fh:
                obj = orjson.loads(line)
                if not isinstance(obj, dict):
                    raise ArchiveFormatError("archive line is not an object")
                yield obj
    except FileNotFoundError:
        raise ArchiveFormatError(f"{path}: no such file") from None
    except (OSError, EOFError, orjson.JSONDecodeError) as exc:
        raise ArchiveFormatError(f"{path}: unreadable archive ({type(exc).__name__})") from None


def read_rows(path: Path) -> Iterator[tuple[Any, ...]]:
    """The event rows of an archive (no verification: call :func:`verify_archive` first)."""
    for obj in _lines(path):
        if "format" in obj or "end" in obj:
            continue
        yield _row_from_json(obj)


def verify_archive(path: Path, chain: Chain) -> tuple[VerifyResult, ArchiveInfo | None]:
    """Check an archive on its own: header, every link, trailer count and tag."""
    lines = _lines(path)
    header = next(lines, None)
    if header is None or header.get("format") != FORMAT or header.get("version") != VERSION:
        raise ArchiveFormatError(f"{path}: not a journal archive (version {VERSION})")
    try:
        prev_seq = int(header["prev_seq"])
        prev_mac = bytes.fromhex(header["prev_mac"])
    except (KeyError, ValueError, TypeError):
        raise ArchiveFormatError(f"{path}: bad archive header") from None
    verifier = ChainVerifier(chain, prev_seq, prev_mac)
    trailer: dict[str, Any] | None = None
    for obj in lines:
        if obj.get("end") is True:
            trailer = obj
            continue
        if trailer is not None:
            verifier.fail(verifier.expected, "rows after the trailer")
            break
        if not verifier.feed(_row_from_json(obj)):
            break
    if verifier.broken:
        return verifier.result(), None
    if trailer is None:
        verifier.fail(verifier.expected, "archive truncated: no trailer")
        return verifier.result(), None
    try:
        last_mac = bytes.fromhex(trailer["last_mac"])
        tag = bytes.fromhex(trailer["tag"])
        count, last_seq = int(trailer["count"]), int(trailer["last_seq"])
    except (KeyError, ValueError, TypeError):
        raise ArchiveFormatError(f"{path}: bad archive trailer") from None
    if (
        count != verifier.count
        or last_seq != verifier.last_seq
        or last_mac != verifier.prev_mac
        or not chain.tag_ok("archive", last_seq, last_mac, tag)
    ):
        verifier.fail(verifier.last_seq, "archive trailer does not match its rows")
        return verifier.result(), None
    info = ArchiveInfo(
        prev_seq=prev_seq,
        prev_mac=prev_mac,
        count=count,
        first_seq=prev_seq + 1,
        last_seq=last_seq,
        last_mac=last_mac,
    )
    return verifier.result(), info
