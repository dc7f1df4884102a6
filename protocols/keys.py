"""Request-matching keys.

A reversal shares its original's STAN, so keys always include what tells them apart.
"""

from __future__ import annotations

from protocols.message import Message

DuplicateKey = str
"""One string per (MTI class, terminal 41, STAN 11, transmission 7): see :func:`key_of`."""
LinkKey = tuple[str, str]

_FIXED = 25
"""Length of a key whose parts have their dialect widths: class 1, 41 ans 8, 11 n 6, 7 n 10."""


def key_of(mti_class: str, terminal: str, stan: str, transmission: str) -> DuplicateKey:
    """The duplicate key of (MTI class, 41, 11, 7): one string (a 25-character string costs
    about 80 bytes where a tuple of four strings costs about 270 per entry of the window).

    Equal keys iff equal parts, for any strings: parts of their dialect widths (1, 8, 6, 10:
    every request the codec accepts with all three fields) are concatenated, 25 characters,
    and widths fix where each part ends. Anything else (a field absent, a hand-made message,
    a journal row with NULL columns) is written with its parts' lengths first, ``"\\x00"
    1,0,6,10;`` then the parts, and padded to at least 26 characters: self-delimiting, so
    separators or digits inside a field cannot make two of them equal, and never 25 long, so
    never equal to a concatenated one."""
    if len(terminal) == 8 and len(stan) == 6 and len(transmission) == 10 and len(mti_class) == 1:
        return f"{mti_class}{terminal}{stan}{transmission}"
    key = (
        f"\x00{len(mti_class)},{len(terminal)},{len(stan)},{len(transmission)};"
        f"{mti_class}{terminal}{stan}{transmission}"
    )
    return key if len(key) > _FIXED else key.ljust(_FIXED + 1, "\x00")


def duplicate_key(msg: Message) -> DuplicateKey:
    """SPEC: same terminal (41), STAN (11) and transmission date-time (7) is a duplicate;
    the MTI class keeps a reversal apart from its original. Built once per request."""
    f = msg.fields
    terminal = f.get("41", "")
    stan = f.get("11", "")
    transmission = f.get("7", "")
    mti_class = msg.mti[1]
    if len(terminal) == 8 and len(stan) == 6 and len(transmission) == 10:
        # key_of's first case, inline; one f-string (one allocation) measured cheaper than +
        return f"{mti_class}{terminal}{stan}{transmission}"
    return key_of(mti_class, terminal, stan, transmission)


def original_data(mti: str, stan: str, transmission: str, acquirer_id: str = "") -> str:
    """Field 90 naming an original: its MTI, STAN (11), transmission time (7), acquiring
    institution id (11 digits, zeros when not given) and forwarding institution id (zeros)."""
    return f"{mti}{stan}{transmission}{acquirer_id:0>11}{'0' * 11}"


def link_key(msg: Message) -> LinkKey:
    """SPEC issuer link: responses match requests by STAN (11) plus transmission date-time (7)."""
    f = msg.fields
    return (f.get("11", ""), f.get("7", ""))
