"""Durable, tamper-evident transaction journal and store-and-forward queue storage.

Backends: embedded SQLite (default, any async library) and PostgreSQL via asyncpg
(scale-out, asyncio only). Both expose the same API (:class:`Journal`)::

    async with open_journal(config) as journal:
        seq = await journal.append(JournalEvent(txn_id="t1", state=TxnState.RECEIVED, at=now,
                                                 pan=pan, request=fields, ...))
        dup = await journal.find_duplicate(terminal_id, stan, transmission, now)

See ``docs`` in :mod:`gateway.journal.base` (API), :mod:`.chain` (tamper evidence),
:mod:`.protect` (encryption), :mod:`.sensitive` (what is never stored), :mod:`.archive`
(retention), :mod:`.groupcommit` (durability without losing throughput).
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.journal.backoff import backoff_delay, next_attempt
from gateway.journal.base import JournalBase
from gateway.journal.config import JournalConfig, JournalKeys, KeySpec, SecretSpec, load_config
from gateway.journal.errors import (
    ArchiveFormatError,
    JournalClosedError,
    JournalConfigError,
    JournalError,
    JournalStateError,
    JournalValueError,
    JournalWriteError,
    UnsupportedBackendError,
)
from gateway.journal.model import (
    Advice,
    ArchiveResult,
    JournalEvent,
    JournalStatistics,
    NewAdvice,
    SafDepth,
    SettlementTotal,
    StoredTxn,
    TxnState,
    VerifyResult,
)
from gateway.journal.sensitive import mask_pan, strip_sensitive

Journal = JournalBase
"""The journal API (both backends implement it; use as an async context manager)."""


def open_journal(
    config: JournalConfig,
    *,
    keys: JournalKeys | None = None,
    environ: Mapping[str, str] | None = None,
) -> JournalBase:
    """The journal for ``config.backend``; enter it with ``async with``.

    Keys are resolved now (a missing key fails here, before anything opens).
    """
    if config.backend == "postgres":
        from gateway.journal.postgres import PostgresJournal

        return PostgresJournal(config, keys=keys, environ=environ)
    from gateway.journal.sqlite import SqliteJournal

    return SqliteJournal(config, keys=keys, environ=environ)


__all__ = [
    "Advice",
    "ArchiveFormatError",
    "ArchiveResult",
    "Journal",
    "JournalClosedError",
    "JournalConfig",
    "JournalConfigError",
    "JournalError",
    "JournalEvent",
    "JournalKeys",
    "JournalStateError",
    "JournalStatistics",
    "JournalValueError",
    "JournalWriteError",
    "KeySpec",
    "NewAdvice",
    "SafDepth",
    "SecretSpec",
    "SettlementTotal",
    "StoredTxn",
    "TxnState",
    "UnsupportedBackendError",
    "VerifyResult",
    "backoff_delay",
    "load_config",
    "mask_pan",
    "next_attempt",
    "open_journal",
    "strip_sensitive",
]
