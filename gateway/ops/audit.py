"""Audit trail of the admin API: one record per request that needs a role, allowed or denied.

Each record goes to the structured log (logger ``audit``) and, when ``[admin] audit_file`` is
set, is appended to that file: one JSON object per line, written and fsync'd before the answer
leaves. The file is a hash chain: every line carries ``prev``, the hex SHA-256 of the previous
line's bytes (without its newline; 64 zeros for the first line), so an edited, inserted or
deleted line breaks the chain at the line after it (:func:`verify_file`,
``gateway audit verify FILE``). The chain cannot show a change to the *last* line or lines cut
from the end: the log record of each line carries its ``line_sha256``, an independent copy of
the head to compare with.

Records hold a token's id, never the token; writes run in a worker thread (an fsync never
stalls the event loop that carries payments) under a lock that keeps the chain in order.

A failed file write is logged at error level and reported to ``on_write_failure`` (the
gateway counts it in ``switch_audit_write_failures_total``); :meth:`AuditLog.record` returns
False then, so a caller can refuse an operator action it could not record beforehand. The
same file format serves the rule reload on SIGHUP (events ``signal_intent``,
``signal_reload``) and the ``gateway journal`` commands (``--audit-file``,
:meth:`AuditLog.append_sync`: file only, their stdout is the command's JSON).
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import os
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import anyio.to_thread
import orjson

from kit.logs import get_logger

GENESIS: Final = "0" * 64
_RESERVED: Final = frozenset({"event", "logger", "line_sha256", "file_error"})
log = get_logger("audit")


def line_hash(line: bytes) -> str:
    """Hex SHA-256 of one line, its trailing newline excluded."""
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def _last_line(path: Path) -> bytes | None:
    """The file's last line (without newline) read from the end, or None for an empty or
    missing file."""
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return None
    with fh:
        end = fh.seek(0, os.SEEK_END)
        if end == 0:
            return None
        chunk = 4096
        pos = end
        tail = b""
        while pos > 0:
            step = min(chunk, pos)
            pos -= step
            fh.seek(pos)
            tail = fh.read(step) + tail
            body = tail[:-1] if tail.endswith(b"\n") else tail
            cut = body.rfind(b"\n")
            if cut >= 0:
                return body[cut + 1 :]
        return tail.rstrip(b"\n")


def os_user() -> str:
    """The OS user running this process (login name, else ``uid:N``), for records with no
    token (a signal, a command line)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (a bare container)
        return f"uid:{os.getuid()}"


class AuditLog:
    """Audit records to the ``audit`` logger and, given a path, to a hash-chained file."""

    def __init__(
        self, path: Path | None = None, on_write_failure: Callable[[], None] | None = None
    ) -> None:
        self.path = path
        self.on_write_failure = on_write_failure
        self._lock = threading.Lock()
        self._prev: str | None = None  # read from the file at the first write
        self.written = 0
        self.failures = 0

    def _append(self, record: dict[str, Any]) -> str:
        assert self.path is not None
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torn = False
            if self._prev is None:
                last = _last_line(self.path)
                self._prev = GENESIS if last is None else line_hash(last)
                if last is not None:
                    with self.path.open("rb") as fh:
                        fh.seek(-1, os.SEEK_END)
                        torn = fh.read(1) != b"\n"  # a crash mid-line: the verifier flags it
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                if torn:
                    os.write(fd, b"\n")
                line = orjson.dumps({**record, "prev": self._prev})
                os.write(fd, line + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            self._prev = line_hash(line)
            self.written += 1
            return self._prev

    def check_writable(self) -> None:
        """Raise OSError unless the file can be opened for appending (nothing is written):
        a command that must be audited checks this before it runs."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640))

    async def record(self, fields: Mapping[str, Any], *, event: str = "admin_access") -> bool:
        """Write one record (``time`` is added); the file write is done when this returns.
        False: the file write failed (logged at error level, counted)."""
        record = self._stamp(fields)
        extra: dict[str, Any] = {}
        if self.path is not None:
            try:
                extra["line_sha256"] = await anyio.to_thread.run_sync(self._append, record)
            except OSError as exc:
                self._failed(exc, extra)
        return self._log(event, record, extra)

    def append_sync(self, fields: Mapping[str, Any]) -> str:
        """For a command line: append one record (``time`` added) in this thread, without
        the structured log (its stdout is the command's output). Returns the line's hash;
        raises OSError when the file cannot be written (the caller reports it)."""
        if self.path is None:
            raise ValueError("append_sync needs an audit file")
        try:
            return self._append(self._stamp(fields))
        except OSError:
            self.failures += 1
            if self.on_write_failure is not None:
                self.on_write_failure()
            raise

    @staticmethod
    def _stamp(fields: Mapping[str, Any]) -> dict[str, Any]:
        return {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), **fields}

    def _failed(self, exc: OSError, extra: dict[str, Any]) -> None:
        self.failures += 1
        if self.on_write_failure is not None:
            self.on_write_failure()
        log.error("audit_file_write_failed", file=str(self.path), error=str(exc))
        extra["file_error"] = True

    @staticmethod
    def _log(event: str, record: dict[str, Any], extra: dict[str, Any]) -> bool:
        # logger="audit" in every record: a log shipper routes them to the audit store.
        flat = {(f"{k}_" if k in _RESERVED else k): v for k, v in record.items()}
        log.info(event, logger="audit", **flat, **extra)
        return "file_error" not in extra


@dataclass(frozen=True, slots=True)
class ChainReport:
    ok: bool
    lines: int
    """Lines that verified (all of them when ok)."""
    head: str
    """Hash of the last good line: record it elsewhere to detect a cut or edited tail."""
    broken_line: int | None = None
    """1-based number of the first line that does not verify."""
    reason: str = ""


def verify_lines(lines: list[bytes]) -> ChainReport:
    prev = GENESIS
    for number, raw in enumerate(lines, start=1):
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return ChainReport(False, number - 1, prev, number, "not a JSON object")
        if not isinstance(obj, dict):
            return ChainReport(False, number - 1, prev, number, "not a JSON object")
        if obj.get("prev") != prev:
            why = (
                "prev is not the hash of the previous line (that line was edited or deleted, "
                "or this one was inserted)"
                if number > 1
                else "first line does not start the chain (lines before it were deleted?)"
            )
            return ChainReport(False, number - 1, prev, number, why)
        prev = line_hash(raw)
    return ChainReport(True, len(lines), prev)


def verify_file(path: Path) -> ChainReport:
    """Check the hash chain of an audit file; the report names the first broken line."""
    data = path.read_bytes()
    if not data:
        return ChainReport(True, 0, GENESIS)
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    else:
        # No final newline: a torn write at the end.
        report = verify_lines(lines[:-1])
        if not report.ok:
            return report
        return ChainReport(False, len(lines) - 1, report.head, len(lines), "last line incomplete")
    return verify_lines(lines)


def run(argv: list[str]) -> int:
    """``gateway audit verify FILE``: 0 chain intact, 1 broken, 2 unreadable file."""
    parser = argparse.ArgumentParser(prog="gateway audit", description="admin audit log tools")
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="check the hash chain of an audit file")
    verify.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    try:
        report = verify_file(args.file)
    except OSError as exc:
        print(f"gateway audit: {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    out: dict[str, Any] = {"file": str(args.file), "ok": report.ok, "lines": report.lines}
    out["head"] = report.head
    if not report.ok:
        out["broken_line"] = report.broken_line
        out["reason"] = report.reason
    sys.stdout.write(orjson.dumps(out).decode() + "\n")
    return 0 if report.ok else 1
