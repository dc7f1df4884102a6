"""What never reaches the journal: sensitive authentication data (PCI DSS 3.3).

Payloads handed to the journal (the response to replay for a duplicate, the request kept for
crash recovery, an advice to resend) are ISO fields keyed by field number; binary fields are
hex. :func:`strip_sensitive` removes, before anything else sees the payload:

- ``35`` track 2, ``36`` track 3, ``45`` track 1: full track data;
- ``52`` PIN block, and ``53`` security control information (the DUKPT KSN: not secret, but
  useless after the transaction and in other dialects a carrier of key data);
- ``123``, an AES DUKPT terminal's KSN and format 4 PIN block (SPEC: the PIN block of 52 by
  another road);
- from ``55`` (EMV, BER-TLV), at any nesting depth: ``56`` track 1, ``57`` track 2 equivalent,
  ``99`` PIN data, ``9F1F`` track 1 / ``9F20`` track 2 discretionary data, ``9F6B`` track 2
  (contactless). The ARQC, ARPC (tag 91), counters and amounts stay. A ``55`` that is not valid
  hex BER-TLV is dropped whole: the journal cannot prove it clean.

The PAN itself (field ``2``, tag ``5A``) may stay in a payload because every payload is stored
AES-GCM encrypted; the PAN column is encrypted, hashed and masked separately.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from gateway.journal.errors import JournalValueError
from protocols import redact

# 48 carries the CVV2 (subelement 92) on manual entry: never stored.
DROPPED_FIELDS = frozenset({"35", "36", "45", "48", "52", "53", "123"})
SENSITIVE_EMV_TAGS = frozenset({"56", "57", "99", "9F1F", "9F20", "9F6B"})

# Field numbers 1-999 without leading zeros ("035" must not dodge "35"), and pyiso8583's
# "t"/"p": a set lookup per key instead of a regex match.
_KEYS = frozenset({"t", "p", *(str(n) for n in range(1, 1000))})
_PAN = re.compile(r"^[0-9]{12,19}$")


def check_pan(pan: str) -> None:
    """Raise :class:`JournalValueError` unless ``pan`` is 12-19 digits (message has no PAN)."""
    if not isinstance(pan, str) or not _PAN.match(pan):
        raise JournalValueError("pan must be 12-19 digits")


def mask_pan(pan: str) -> str:
    """First 6 and last 4 digits, the rest as ``*`` (PCI DSS display rule)."""
    check_pan(pan)
    return redact.mask_pan(pan)


class _TlvError(Exception):
    pass


def _read_tlv(data: bytes, pos: int) -> tuple[bytes, bool, bytes, int]:
    """One TLV at ``pos``: (tag bytes, constructed, value, next position)."""
    start = pos
    if pos >= len(data):
        raise _TlvError
    first = data[pos]
    pos += 1
    if first & 0x1F == 0x1F:
        while True:
            if pos >= len(data):
                raise _TlvError
            pos += 1
            if not data[pos - 1] & 0x80:
                break
    tag = data[start:pos]
    if pos >= len(data):
        raise _TlvError
    length = data[pos]
    pos += 1
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 3 or pos + count > len(data):
            raise _TlvError
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise _TlvError
    return tag, bool(first & 0x20), data[pos : pos + length], pos + length


def _encode_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _filter_tlv(data: bytes) -> bytes:
    out = bytearray()
    pos = 0
    while pos < len(data):
        if data[pos] in (0x00, 0xFF):  # padding between TLVs (EMV Book 3, 5.2)
            pos += 1
            continue
        tag, constructed, value, pos = _read_tlv(data, pos)
        if tag.hex().upper() in SENSITIVE_EMV_TAGS:
            continue
        if constructed:
            value = _filter_tlv(value)
        out += tag + _encode_length(len(value)) + value
    return bytes(out)


def strip_emv(field55_hex: str) -> str | None:
    """Field 55 without sensitive tags (upper-case hex), or ``None`` if it is not BER-TLV."""
    try:
        return _filter_tlv(bytes.fromhex(field55_hex)).hex().upper()
    except (ValueError, _TlvError):
        return None


def strip_sensitive(fields: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``fields`` without sensitive authentication data (see module docstring).

    Keys must be ISO field numbers as strings (or pyiso8583's ``t``/``p``), values strings.
    """
    # Checked in C (a set comparison, a join) and copied in one comprehension: this runs
    # for every payload on the event loop. The join fails on the first non-string value.
    if not _KEYS.issuperset(fields.keys()):
        raise JournalValueError("payload keys must be ISO field numbers as strings")
    try:
        "".join(fields.values())
    except TypeError:
        bad = next(k for k, v in fields.items() if not isinstance(v, str))
        raise JournalValueError(f"payload field {bad} must be a string") from None
    clean = {k: v for k, v in fields.items() if k not in DROPPED_FIELDS}
    emv = clean.get("55")
    if emv is not None:
        filtered = strip_emv(emv)
        if filtered is None:
            del clean["55"]
        else:
            clean["55"] = filtered
    return clean
