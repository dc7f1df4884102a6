"""Conversions between records and table rows, shared by both backends (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from itertools import compress, repeat
from operator import is_not
from typing import Any

from gateway.journal.chain import DATA_COLUMNS
from gateway.journal.model import Advice, JournalEvent, NewAdvice, StoredTxn, TxnState
from gateway.journal.protect import DataProtector

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# A prepared event: (txn_id, state, at_us, *DATA_COLUMNS), encrypted, ready to be chained.
Prepared = tuple[Any, ...]


def to_us(moment: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (exact integer arithmetic)."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def aad(purpose: str, txn_id: str) -> bytes:
    return (purpose + "|" + txn_id).encode()


def advice_aad(issuer_id: str, kind: str, txn_id: str) -> bytes:
    return f"advice|{issuer_id}|{kind}|{txn_id}".encode()


def defer_event(event: JournalEvent) -> Prepared:
    """``event`` as a plain tuple for the gateway's own journal writer process to prepare
    (:func:`prepare_deferred`): a pickled tuple costs the loop a tenth of the encryption it
    replaces. Holds the clear PAN and payloads (already stripped of sensitive authentication
    data by :class:`JournalEvent`): it only ever travels down that process's pipe."""
    return (
        event.txn_id,
        event.state.value,
        to_us(event.at),
        event.mti,
        event.processing_code,
        event.amount,
        event.currency,
        event.terminal_id,
        event.merchant_id,
        event.stan,
        event.transmission,
        event.issuer_id,
        event.rrn,
        event.auth_code,
        event.response_code,
        event.orig_mti,
        event.orig_stan,
        event.orig_transmission,
        event.note,
        None if event.business_date is None else event.business_date.isoformat(),
        event.pan,
        event.request,
        event.response,
    )


def prepare_deferred(deferred: Prepared, protector: DataProtector) -> Prepared:
    """The row of the event :func:`defer_event` made ``deferred`` of: its PAN hashed, masked
    and encrypted, its payloads encrypted, the rest as is."""
    txn_id = deferred[0]
    pan, request, response = deferred[-3:]
    pan_hash = pan_masked = pan_enc = request_enc = response_enc = None
    if pan is not None:
        pan_hash, pan_masked, pan_enc = protector.protect_pan(pan, aad("pan", txn_id))
    if request is not None:
        request_enc = protector.encrypt_fields(request, aad("request", txn_id))
    if response is not None:
        response_enc = protector.encrypt_fields(response, aad("response", txn_id))
    return (
        *deferred[:19],
        pan_hash,
        pan_masked,
        pan_enc,
        request_enc,
        response_enc,
        deferred[19],
    )


def prepare_event(event: JournalEvent, protector: DataProtector) -> Prepared:
    """Encrypt and hash what must not be stored in clear; clear values pass through, in
    ``DATA_COLUMNS`` order (checked by the tests). In the process that owns the journal
    when it writes itself; the writer process does the same in two halves."""
    return prepare_deferred(defer_event(event), protector)


def txn_params(event_row: Sequence[Any]) -> tuple[Any, ...]:
    """Index upsert parameters of an event row (EVENT_COLUMNS order, mac last)."""
    seq, txn_id, state, at_us = event_row[:4]
    return (txn_id, state, at_us, at_us, seq, *event_row[4:-1])


def upsert_groups(event_rows: Sequence[Sequence[Any]]) -> list[tuple[tuple[bool, ...], list[Any]]]:
    """Index upserts of event rows grouped by shape (which data columns are set), each with
    only its set columns: ``[(present, [params, ...]), ...]`` in an order that applies each
    transaction's events in sequence (shapes are merged only when no transaction repeats)."""
    groups: dict[tuple[bool, ...], list[Any]] = {}
    ordered: list[tuple[tuple[bool, ...], list[Any]]] = []
    merge = len({row[1] for row in event_rows}) == len(event_rows)
    last: tuple[bool, ...] | None = None
    for row in event_rows:
        seq, txn_id, state, at_us = row[0], row[1], row[2], row[3]
        data = row[4:-1]
        present = tuple(map(is_not, data, repeat(None)))  # C loops: this runs per record
        params = (txn_id, state, at_us, at_us, seq, *compress(data, present))
        if merge:
            bucket = groups.get(present)
            if bucket is None:
                bucket = groups[present] = []
                ordered.append((present, bucket))
            bucket.append(params)
        elif present == last:
            ordered[-1][1].append(params)
        else:
            ordered.append((present, [params]))
        last = present
    return ordered


def stored_txn(row: Sequence[Any], protector: DataProtector) -> StoredTxn:
    """A ``txns`` row (TXN_COLUMNS order) with its PAN and payloads decrypted."""
    txn_id, state, created_us, updated_us, last_seq = row[:5]
    data = dict(zip(DATA_COLUMNS, row[5:], strict=True))
    pan_enc, request_enc, response_enc = data["pan_enc"], data["request_enc"], data["response_enc"]
    return StoredTxn(
        txn_id=txn_id,
        state=TxnState(state),
        created_at=from_us(created_us),
        updated_at=from_us(updated_us),
        last_seq=last_seq,
        mti=data["mti"],
        processing_code=data["processing_code"],
        amount=data["amount"],
        currency=data["currency"],
        terminal_id=data["terminal_id"],
        merchant_id=data["merchant_id"],
        stan=data["stan"],
        transmission=data["transmission"],
        issuer_id=data["issuer_id"],
        rrn=data["rrn"],
        auth_code=data["auth_code"],
        response_code=data["response_code"],
        orig_mti=data["orig_mti"],
        orig_stan=data["orig_stan"],
        orig_transmission=data["orig_transmission"],
        note=data["note"],
        business_date=None
        if data["business_date"] is None
        else date.fromisoformat(data["business_date"]),
        pan_masked=data["pan_masked"],
        pan=None if pan_enc is None else protector.reveal_pan(bytes(pan_enc), aad("pan", txn_id)),
        request=None
        if request_enc is None
        else protector.decrypt_fields(bytes(request_enc), aad("request", txn_id)),
        response=None
        if response_enc is None
        else protector.decrypt_fields(bytes(response_enc), aad("response", txn_id)),
    )


def prepare_advice(advice: NewAdvice, protector: DataProtector) -> tuple[Any, ...]:
    """Insert parameters of an advice (issuer, kind, txn, payload, created, next attempt)."""
    payload = protector.encrypt_fields(
        advice.fields, advice_aad(advice.issuer_id, advice.kind, advice.txn_id)
    )
    created = to_us(advice.created_at)
    due = created if advice.next_attempt_at is None else to_us(advice.next_attempt_at)
    return (advice.issuer_id, advice.kind, advice.txn_id, payload, created, due)


def stored_advice(row: Sequence[Any], protector: DataProtector) -> Advice:
    advice_id, issuer_id, kind, txn_id, payload, created, due, attempts, last_error = row
    return Advice(
        advice_id=advice_id,
        issuer_id=issuer_id,
        kind=kind,
        txn_id=txn_id,
        created_at=from_us(created),
        next_attempt_at=from_us(due),
        attempts=attempts,
        last_error=last_error,
        fields=protector.decrypt_fields(bytes(payload), advice_aad(issuer_id, kind, txn_id)),
    )
