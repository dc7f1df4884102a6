"""Request-matching keys.

A reversal shares its original's STAN, so keys always include what tells them apart.
"""

from __future__ import annotations

from protocols.message import Message

DuplicateKey = tuple[str, str, str, str]
LinkKey = tuple[str, str]


def duplicate_key(msg: Message) -> DuplicateKey:
    """SPEC: same terminal (41), STAN (11) and transmission date-time (7) is a duplicate;
    the MTI class keeps a reversal apart from its original."""
    f = msg.fields
    return (msg.mti[1], f.get("41", ""), f.get("11", ""), f.get("7", ""))


def link_key(msg: Message) -> LinkKey:
    """SPEC issuer link: responses match requests by STAN (11) plus transmission date-time (7)."""
    f = msg.fields
    return (f.get("11", ""), f.get("7", ""))
