"""Typed errors of the journal. Messages never carry a PAN, a payload or key material."""

from __future__ import annotations


class JournalError(Exception):
    """Base of every error raised by :mod:`gateway.journal`."""


class JournalConfigError(JournalError):
    """The journal configuration is invalid (missing key, bad key length, bad backend...)."""


class JournalValueError(JournalError, ValueError):
    """A record handed to the journal is invalid (bad PAN, naive datetime, bad field...)."""


class JournalClosedError(JournalError):
    """The journal is not open (used outside its ``async with`` block)."""


class JournalWriteError(JournalError):
    """A write could not be committed; the record is NOT durable. The cause is chained."""


class JournalStateError(JournalError):
    """The stored chain state does not allow the operation (e.g. restoring a non-adjacent
    archive, or a chain anchor that moved under a concurrent archive run)."""


class UnsupportedBackendError(JournalError):
    """The backend cannot run on the current async library (asyncpg needs asyncio)."""


class ArchiveFormatError(JournalError):
    """An archive file is unreadable, truncated or fails its own chain verification."""
