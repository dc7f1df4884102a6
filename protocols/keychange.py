"""Dynamic key exchange on an issuer link: the 0800 that carries a new working key (sans-IO).

Either side may send it; the other imports the key through its HSM and answers 0810:

* field 70 (network management information code): ``161`` new ZPK, ``162`` new ZAK;
* field 48: the new key as a TR-31 / ANSI X9.143 key block under the link's ZMK (the block's
  text, version ``B`` under a TDES ZMK, ``D`` under an AES one), nothing else;
* field 53 (security related control information, 20 characters): the key's check value (6 hex)
  then the sender's key generation number (6 digits) then ``00000000``.

The answer echoes 7, 11, 70 and 53 with field 39 ``00`` (imported, its KCV matched: new
messages from now on use it) or ``63`` (refused: the block did not authenticate under the ZMK,
its usage is not the key's, or the KCV differs; both sides keep the old key). Messages already
in flight finish under the key they started with; the receiver keeps the previous generation
for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from protocols.errors import RemoteProtocolError
from protocols.message import Message

ZPK_CHANGE: Final = "161"
ZAK_CHANGE: Final = "162"
CODES: Final = {ZPK_CHANGE: "zpk", ZAK_CHANGE: "zak"}
KINDS: Final = {kind: code for code, kind in CODES.items()}
ACCEPTED: Final = "00"
REFUSED: Final = "63"
_HEX = frozenset("0123456789ABCDEF")
_BLOCK_CHARS = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")


class KeyChangeError(RemoteProtocolError):
    """A key-change message that cannot be used (answered ``63``); the reason names no key
    material."""


@dataclass(frozen=True, slots=True)
class KeyChange:
    kind: str
    """``zpk`` or ``zak``."""
    key_block: str
    """TR-31 key block under the link's ZMK (no ``S`` prefix)."""
    kcv: str
    generation: int


def is_key_change(msg: Message) -> bool:
    return msg.mti == "0800" and msg.fields.get("70") in CODES


def request(kind: str, key_block: str, kcv: str, generation: int) -> dict[str, str]:
    """Fields 70, 48 and 53 of a key-change 0800 (the caller adds 7 and 11)."""
    if kind not in KINDS:
        raise KeyChangeError("key kind must be zpk or zak", field="70")
    if len(kcv) != 6 or not _HEX.issuperset(kcv) or not 0 <= generation <= 999999:
        raise KeyChangeError("KCV must be 6 hex and the generation 0-999999", field="53")
    return {"70": KINDS[kind], "48": key_block, "53": f"{kcv}{generation:06d}00000000"}


def parse(msg: Message) -> KeyChange:
    """The key change an 0800 carries, or :class:`KeyChangeError`."""
    kind = CODES.get(msg.fields.get("70", ""))
    if msg.mti != "0800" or kind is None:
        raise KeyChangeError("not a key-change 0800", field="70")
    block = msg.fields.get("48", "")
    control = msg.fields.get("53", "")
    if not 16 < len(block) <= 999 or not _BLOCK_CHARS.issuperset(block):
        raise KeyChangeError("field 48 is not a key block", field="48")
    if (
        len(control) != 20
        or not _HEX.issuperset(control[:6])
        or not control[6:12].isdigit()
        or not control[6:12].isascii()
        or control[12:] != "00000000"
    ):
        raise KeyChangeError("field 53 is not a KCV, a generation and zeros", field="53")
    return KeyChange(kind, block, control[:6], int(control[6:12]))


def answer(msg: Message, rc: str) -> Message:
    """The 0810 to a key-change 0800."""
    fields = {k: v for k, v in msg.fields.items() if k in ("7", "11", "53", "70")}
    fields["39"] = rc
    return Message("0810", fields)
