"""Where an ISO 8583 message's MAC goes and what it covers: pure, shared by the switch, the
issuer simulator and the terminal simulator (the MAC itself is computed by the HSM or a pin pad).

The MAC is field 64 when the message has no secondary bitmap; with fields 65-128 present (a
reversal's field 90, for example) ISO 8583:1987 puts it in field 128 instead. Either way it is
the last 8 bytes of the encoded message, and the MAC covers everything before them.
"""

from __future__ import annotations

from collections.abc import Mapping

from protocols.codec import Codec
from protocols.message import Message, WireMessage

MAC_LENGTH = 8

_SECONDARY = frozenset(str(n) for n in range(65, 128))
_CANONICAL = frozenset(str(n) for n in range(129))


def mac_field(fields: Mapping[str, str]) -> str:
    """``"64"``, or ``"128"`` when the message has a secondary bitmap (fields 65-127)."""
    if not _SECONDARY.isdisjoint(fields):
        return "128"
    if _CANONICAL.issuperset(fields):
        return "64"  # the usual case, decided by two set operations in C
    return "128" if any(64 < int(k) < 128 for k in fields if k.isdigit()) else "64"


def mac_input(codec: Codec, msg: Message, field: str | None = None) -> bytes:
    """What the MAC of ``msg`` covers: its encoding with the MAC field set, minus the MAC.

    The MAC field (``field``, found from the message when not given) is the last one encoded,
    so this is the encoding with 8 placeholder bytes, without its last 8 bytes. Decoding and
    re-encoding with the same dialect is exact, so for a received message this equals the
    bytes on the wire before the MAC. A message translated from a link's dialect
    (:class:`WireMessage`) is not re-encoded: its MAC covers the bytes that came (header
    excluded), which is what the peer MACed.
    """
    if isinstance(msg, WireMessage) and msg.wire:
        return msg.wire[:-MAC_LENGTH]
    fields = dict(msg.fields)
    fields[field or mac_field(fields)] = "00" * MAC_LENGTH
    return codec.encode_body(Message(msg.mti, fields))[:-MAC_LENGTH]
