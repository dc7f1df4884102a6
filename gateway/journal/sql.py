# ruff: noqa: S608  (identifiers are constants or the validated schema name; values are
# always bound parameters, never formatted into the SQL)
"""SQL shared by the SQLite and PostgreSQL backends, written once with ``?`` placeholders.

Tables (prefix = PostgreSQL schema):

- ``events``: the append-only, chained event log (``seq`` primary key, no other index so an
  append costs one B-tree insert);
- ``txns``: the current-state index, one row per transaction, an upsert per event
  (``COALESCE`` keeps earlier values where the event has none); rebuildable from ``events``;
- ``chain_state``: the ``anchor`` and ``head`` rows of the chain (see :mod:`.chain`);
- ``advices``: the store-and-forward queue (mutable, not chained; FIFO by ``advice_id``).
"""

from __future__ import annotations

import re
from typing import Literal

from gateway.journal.chain import DATA_COLUMNS, EVENT_COLUMNS

TXN_COLUMNS: tuple[str, ...] = (
    "txn_id",
    "state",
    "created_us",
    "updated_us",
    "last_seq",
    *DATA_COLUMNS,
)
ADVICE_COLUMNS: tuple[str, ...] = (
    "advice_id",
    "issuer_id",
    "kind",
    "txn_id",
    "payload_enc",
    "created_us",
    "next_attempt_us",
    "attempts",
    "last_error",
)
_INT_COLUMNS = frozenset({"seq", "at_us", "amount", "created_us", "updated_us", "last_seq"})
_BLOB_COLUMNS = frozenset({"pan_enc", "request_enc", "response_enc", "mac"})
_NOT_NULL = frozenset({"txn_id", "state", "at_us", "created_us", "updated_us", "last_seq", "mac"})

Dialect = Literal["sqlite", "postgres"]


class Sql:
    """Every statement of the journal, rendered for one dialect and table prefix."""

    def __init__(self, dialect: Dialect, schema: str = "") -> None:
        self.dialect = dialect
        self.schema = schema
        self.prefix = f'"{schema}".' if dialect == "postgres" else ""
        self.int_type = "BIGINT" if dialect == "postgres" else "INTEGER"
        self.blob_type = "BYTEA" if dialect == "postgres" else "BLOB"
        p = self.prefix
        cols = ", ".join(EVENT_COLUMNS)
        tcols = ", ".join(TXN_COLUMNS)
        acols = ", ".join(ADVICE_COLUMNS)

        self.insert_event = self._q(
            f"INSERT INTO {p}events ({cols}) VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"
        )
        updates = ", ".join(
            [
                "state = excluded.state",
                "updated_us = excluded.updated_us",
                "last_seq = excluded.last_seq",
                *(f"{c} = COALESCE(excluded.{c}, t.{c})" for c in DATA_COLUMNS),
            ]
        )
        self.upsert_txn = self._q(
            f"INSERT INTO {p}txns AS t ({tcols}) VALUES ({', '.join('?' * len(TXN_COLUMNS))}) "
            f"ON CONFLICT (txn_id) DO UPDATE SET {updates}"
        )
        self._partial_upserts: dict[tuple[bool, ...], str] = {}
        lock = " FOR UPDATE" if dialect == "postgres" else ""
        self.get_state = self._q(f"SELECT seq, mac, tag FROM {p}chain_state WHERE name = ?{lock}")
        self.read_state = self._q(f"SELECT seq, mac, tag FROM {p}chain_state WHERE name = ?")
        self.set_state = self._q(
            f"UPDATE {p}chain_state SET seq = ?, mac = ?, tag = ? WHERE name = ?"
        )
        self.init_state = self._q(
            f"INSERT INTO {p}chain_state (name, seq, mac, tag) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (name) DO NOTHING"
        )
        self.count_events = self._q(f"SELECT COUNT(*) FROM {p}events")

        select_txn = f"SELECT {tcols} FROM {p}txns"
        self.get_txn = self._q(f"{select_txn} WHERE txn_id = ?")
        dup = (
            f"{select_txn} WHERE terminal_id = ? AND stan = ? AND transmission = ? "
            "AND created_us >= ?"
        )
        self.find_duplicate = self._q(f"{dup} ORDER BY created_us DESC, last_seq DESC LIMIT 1")
        self.find_duplicate_mti = self._q(
            f"{dup} AND substr(mti, 1, 3) = ? ORDER BY created_us DESC, last_seq DESC LIMIT 1"
        )
        orig = (
            f"{select_txn} WHERE terminal_id = ? AND stan = ? AND transmission = ? "
            "AND created_us >= ? AND (mti IS NULL OR substr(mti, 1, 2) <> '04')"
        )
        self.find_original = self._q(f"{orig} ORDER BY created_us DESC, last_seq DESC LIMIT 1")
        self.find_original_mti = self._q(
            f"{orig} AND mti = ? ORDER BY created_us DESC, last_seq DESC LIMIT 1"
        )
        self.in_state = self._q(f"{select_txn} WHERE state = ? ORDER BY created_us, txn_id")
        # A literal state lets the partial index serve the start-up recovery query.
        self.in_flight = self._q(
            f"{select_txn} WHERE state = 'sent_to_issuer' ORDER BY created_us, txn_id"
        )
        self.by_pan = self._q(
            f"{select_txn} WHERE pan_hash = ? AND created_us >= ? AND created_us < ? "
            "ORDER BY created_us LIMIT ?"
        )
        # Keyset pages of one day's transactions (reconciliation): (created_us, txn_id) after
        # the last row of the previous page, on the txns_created index.
        page = (
            f"{select_txn} WHERE created_us >= ? AND created_us < ? "
            "AND (created_us > ? OR (created_us = ? AND txn_id > ?))"
        )
        self.txns_page = self._q(f"{page} ORDER BY created_us, txn_id LIMIT ?")
        self.txns_page_issuer = self._q(
            f"{page} AND issuer_id = ? ORDER BY created_us, txn_id LIMIT ?"
        )
        debit = "substr(processing_code, 1, 2) IN ('00', '01')"
        credit = "substr(processing_code, 1, 2) = '20'"
        totals = (
            "SELECT COALESCE(issuer_id, ''), COALESCE(currency, ''), "
            f"CAST(SUM(CASE WHEN {debit} THEN 1 ELSE 0 END) AS BIGINT), "
            f"CAST(SUM(CASE WHEN {debit} THEN COALESCE(amount, 0) ELSE 0 END) AS BIGINT), "
            f"CAST(SUM(CASE WHEN {credit} THEN 1 ELSE 0 END) AS BIGINT), "
            f"CAST(SUM(CASE WHEN {credit} THEN COALESCE(amount, 0) ELSE 0 END) AS BIGINT) "
            f"FROM {p}txns WHERE created_us >= ? AND created_us < ? AND response_code = '00' "
            "AND state <> 'reversed' AND substr(mti, 1, 2) = '02' "
        )
        group = "GROUP BY COALESCE(issuer_id, ''), COALESCE(currency, '') ORDER BY 1, 2"
        self.settlement = self._q(f"{totals}{group}")
        # By business date: the date column, within a window of creation times around it (the
        # txns_created index; a business day lies within a day either side of its date in
        # any zone, and its 02xx requests are created when received).
        self.settlement_business = self._q(f"{totals}AND business_date = ? {group}")

        self.events_range = self._q(
            f"SELECT {cols} FROM {p}events WHERE seq > ? AND seq <= ? ORDER BY seq"
        )
        self.events_after = self._q(f"SELECT {cols} FROM {p}events WHERE seq > ? ORDER BY seq")
        self.first_seq_at = self._q(f"SELECT MIN(seq) FROM {p}events WHERE at_us >= ?")
        self.max_seq = self._q(f"SELECT MAX(seq) FROM {p}events")
        self.delete_events_upto = self._q(f"DELETE FROM {p}events WHERE seq <= ?")
        self.delete_txns_upto = self._q(f"DELETE FROM {p}txns WHERE last_seq <= ?")
        self.delete_all_txns = self._q(f"DELETE FROM {p}txns")
        self.delete_txns_of_range = self._q(
            f"DELETE FROM {p}txns WHERE txn_id IN "
            f"(SELECT txn_id FROM {p}events WHERE seq > ? AND seq <= ?)"
        )
        self.events_of_range_txns = self._q(
            f"SELECT {cols} FROM {p}events WHERE txn_id IN "
            f"(SELECT txn_id FROM {p}events WHERE seq > ? AND seq <= ?) ORDER BY seq"
        )
        # Keyset pages for replays that run statements between pages (PostgreSQL).
        self.events_page = self._q(
            f"SELECT {cols} FROM {p}events WHERE seq > ? ORDER BY seq LIMIT ?"
        )
        self.events_of_range_txns_page = self._q(
            f"SELECT {cols} FROM {p}events WHERE txn_id IN "
            f"(SELECT txn_id FROM {p}events WHERE seq > ? AND seq <= ?) AND seq > ? "
            "ORDER BY seq LIMIT ?"
        )

        self.insert_advice = self._q(
            f"INSERT INTO {p}advices (issuer_id, kind, txn_id, payload_enc, created_us, "
            "next_attempt_us, attempts, last_error) VALUES (?, ?, ?, ?, ?, ?, 0, NULL) "
            "RETURNING advice_id"
        )
        self.next_due = self._q(
            f"SELECT {acols} FROM {p}advices WHERE issuer_id = ? AND next_attempt_us <= ? "
            "ORDER BY advice_id LIMIT ?"
        )
        self.get_advice = self._q(f"SELECT {acols} FROM {p}advices WHERE advice_id = ?")
        self.ack = self._q(f"DELETE FROM {p}advices WHERE advice_id = ?")
        # A lease: moves an advice's next attempt only if nobody moved it since it was read
        # (another node's SAF sender on the same database), so exactly one node sends it.
        self.claim_advice = self._q(
            f"UPDATE {p}advices SET next_attempt_us = ? WHERE advice_id = ? AND next_attempt_us = ?"
        )
        self.reschedule = self._q(
            f"UPDATE {p}advices SET next_attempt_us = ?, attempts = ?, last_error = ? "
            "WHERE advice_id = ?"
        )
        depth = f"SELECT issuer_id, COUNT(*), MIN(created_us) FROM {p}advices"
        self.depth_all = self._q(f"{depth} GROUP BY issuer_id ORDER BY issuer_id")
        self.depth_one = self._q(f"{depth} WHERE issuer_id = ? GROUP BY issuer_id")

    def partial_upsert(self, present: tuple[bool, ...]) -> str:
        """The index upsert of an event that sets only the data columns flagged in ``present``
        (``DATA_COLUMNS`` order): the same result as :attr:`upsert_txn` for an event whose
        other columns are None, but an update leaves the untouched columns, and the indexes
        over them, alone (fewer B-tree writes and dirty pages per commit). Cached per shape.
        """
        sql = self._partial_upserts.get(present)
        if sql is None:
            cols = [c for c, set_ in zip(DATA_COLUMNS, present, strict=True) if set_]
            names = ", ".join(("txn_id", "state", "created_us", "updated_us", "last_seq", *cols))
            updates = ", ".join(
                [
                    "state = excluded.state",
                    "updated_us = excluded.updated_us",
                    "last_seq = excluded.last_seq",
                    *(f"{c} = excluded.{c}" for c in cols),
                ]
            )
            sql = self._q(
                f"INSERT INTO {self.prefix}txns AS t ({names}) "
                f"VALUES ({', '.join('?' * (5 + len(cols)))}) "
                f"ON CONFLICT (txn_id) DO UPDATE SET {updates}"
            )
            self._partial_upserts[present] = sql
        return sql

    def _q(self, sql: str) -> str:
        if self.dialect == "sqlite":
            return sql
        counter = iter(range(1, 10_000))
        return re.sub(r"\?", lambda _: f"${next(counter)}", sql)

    def _column(self, name: str) -> str:
        kind = (
            self.int_type
            if name in _INT_COLUMNS
            else self.blob_type
            if name in _BLOB_COLUMNS
            else "TEXT"
        )
        return f"{name} {kind}{' NOT NULL' if name in _NOT_NULL else ''}"

    # Columns added after the first journals were written: (table, column), added at open to
    # a journal that lacks them (NULL in existing rows).
    ADDED_COLUMNS: tuple[tuple[str, str], ...] = (
        ("events", "business_date"),
        ("txns", "business_date"),
    )

    def add_column(self, table: str, column: str) -> str:
        """The migration adding ``column`` to ``table`` (PostgreSQL: if it is not there)."""
        guard = "IF NOT EXISTS " if self.dialect == "postgres" else ""
        return f"ALTER TABLE {self.prefix}{table} ADD COLUMN {guard}{self._column(column)}"

    def ddl(self) -> list[str]:
        p = self.prefix
        events = ", ".join(self._column(c) for c in EVENT_COLUMNS[1:])
        txns = ", ".join(self._column(c) for c in TXN_COLUMNS[1:])
        advice_id = (
            "advice_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
            if self.dialect == "postgres"
            else "advice_id INTEGER PRIMARY KEY AUTOINCREMENT"  # ids never reused: FIFO order
        )
        statements = []
        if self.dialect == "postgres":
            statements.append(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
        statements += [
            f"CREATE TABLE IF NOT EXISTS {p}events (seq {self.int_type} PRIMARY KEY, {events})",
            f"CREATE TABLE IF NOT EXISTS {p}txns (txn_id TEXT PRIMARY KEY, {txns})",
            f"CREATE TABLE IF NOT EXISTS {p}chain_state (name TEXT PRIMARY KEY, "
            f"seq {self.int_type} NOT NULL, mac {self.blob_type} NOT NULL, "
            f"tag {self.blob_type} NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {p}advices ({advice_id}, issuer_id TEXT NOT NULL, "
            f"kind TEXT NOT NULL, txn_id TEXT NOT NULL, payload_enc {self.blob_type} NOT NULL, "
            f"created_us {self.int_type} NOT NULL, next_attempt_us {self.int_type} NOT NULL, "
            f"attempts {self.int_type} NOT NULL, last_error TEXT)",
            "CREATE INDEX IF NOT EXISTS txns_dup ON "
            f"{p}txns (terminal_id, stan, transmission, created_us)",
            f"CREATE INDEX IF NOT EXISTS txns_created ON {p}txns (created_us)",
            f"CREATE INDEX IF NOT EXISTS txns_pan ON {p}txns (pan_hash, created_us)",
            f"CREATE INDEX IF NOT EXISTS txns_in_flight ON {p}txns (created_us) "
            "WHERE state = 'sent_to_issuer'",
            f"CREATE INDEX IF NOT EXISTS advices_issuer ON {p}advices (issuer_id, advice_id)",
        ]
        return statements
