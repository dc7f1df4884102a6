"""The issuer-link MAC's arithmetic, with its cipher contexts built once per key.

:func:`hsm_sim.mac.retail_mac` builds a new TDES-CBC context for every MAC (≈10 µs of the
≈12 µs a MAC costs); an alpha-range transaction needs two (check the request, seal the answer).
:class:`RetailMac` keeps one CBC encryptor under K1 for good: a CBC context carries on from its
last output block, so XOR-ing that block into the first input block makes every MAC start from
a zero IV again. Same algorithm (ISO 9797-1 MAC algorithm 3, padding method 1, the SPEC's link
and terminal MAC), same bytes: the tests compare it with ``retail_mac``.
"""

from __future__ import annotations

from binascii import a2b_hex
from collections.abc import Mapping

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from hsm_sim.errors import KeyLengthError
from protocols.codec import Codec
from protocols.mac import MAC_LENGTH, mac_field
from protocols.message import Message, WireMessage

_CANONICAL = frozenset(str(n) for n in range(1, 129))
_SECONDARY = frozenset(str(n) for n in range(65, 128))
_ZERO_MAC = "00" * MAC_LENGTH


class RetailMac:
    """ISO 9797-1 MAC algorithm 3 (padding method 1) under one double-length TDES key.

    Not thread-safe (one live cipher context): one instance per key and event loop."""

    __slots__ = ("_cbc", "_chain", "_k1", "_k2")

    def __init__(self, key: bytes) -> None:
        if len(key) != 16:
            raise KeyLengthError("retail MAC needs a double-length key")
        k1, k2 = key[:8], key[8:]
        # Single DES is TDES with K1K1K1, as in hsm_sim.tdes.
        self._cbc = Cipher(TripleDES(k1 * 3), modes.CBC(bytes(8))).encryptor()
        self._chain = 0
        """The CBC context's last output block (its IV for the next call), as an int."""
        self._k1 = Cipher(TripleDES(k1 * 3), modes.ECB()).encryptor()  # noqa: S305 - one block
        self._k2 = Cipher(TripleDES(k2 * 3), modes.ECB()).decryptor()  # noqa: S305 - one block

    def mac(self, data: bytes) -> bytes:
        """The 8-byte MAC of ``data``."""
        padded = data + bytes(-len(data) % 8) if data else bytes(8)
        first = (int.from_bytes(padded[:8], "big") ^ self._chain).to_bytes(8, "big")
        last = self._cbc.update(first + padded[8:])[-8:]
        self._chain = int.from_bytes(last, "big")
        return self._k1.update(self._k2.update(last))


def link_mac_field(fields: Mapping[str, str]) -> str:
    """:func:`protocols.mac.mac_field` with a set test instead of an ``int()`` per key
    (every key a decoded message or an issuer answer has is a canonical field number)."""
    if fields.keys() <= _CANONICAL:
        return "64" if _SECONDARY.isdisjoint(fields) else "128"
    return mac_field(fields)


def _binary8(fspec: Mapping[str, object] | None) -> bool:
    return (
        fspec is not None
        and fspec.get("data_enc") == "b"
        and fspec.get("len_type") == 0
        and fspec.get("max_len") == MAC_LENGTH
    )


class LinkMac:
    """MACs of messages in one dialect under one key (the issuer's ZAK, clear)."""

    __slots__ = ("_mac", "_tail", "codec")

    def __init__(self, codec: Codec, key: bytes) -> None:
        self.codec = codec
        self._mac = RetailMac(key)
        # The shortcut in data() needs the MAC fields to be 8 binary bytes on the wire.
        self._tail = _binary8(codec.spec.get("64")) and _binary8(codec.spec.get("128"))

    def mac(self, data: bytes) -> bytes:
        return self._mac.mac(data)

    def _last(self, fields: Mapping[str, str], field: str) -> bool:
        """True when ``field`` is encoded last and its 8 bytes end the message."""
        return (
            self._tail
            and fields.keys() <= _CANONICAL
            and (field == "128" or ("128" not in fields and _SECONDARY.isdisjoint(fields)))
        )

    def data(self, msg: Message, field: str) -> bytes:
        """:func:`protocols.mac.mac_input` for a message whose MAC goes in ``field``.

        When that field holds 8 bytes of hex and is the last one encoded, the message's own
        encoding without its last 8 bytes is the same thing (a field's value only changes its
        own bytes), and needs no copy of the message."""
        if isinstance(msg, WireMessage) and msg.wire:
            return msg.wire[:-MAC_LENGTH]  # translated on arrival: the MAC covers what came
        fields = msg.fields
        value = fields.get(field)
        if value is not None and len(value) == 2 * MAC_LENGTH and self._last(fields, field):
            try:
                a2b_hex(value)
            except ValueError:
                pass
            else:
                return self.codec.encode_body(msg)[:-MAC_LENGTH]
        copy = dict(fields)
        copy[field] = _ZERO_MAC
        return self.codec.encode_body(Message(msg.mti, copy))[:-MAC_LENGTH]

    def seal(self, msg: Message, field: str) -> bytes:
        """Put the MAC of ``msg`` in ``field``; returns the message encoded (MAC included).

        The MAC covers the encoding with ``field`` set (to zeros) but for its last 8 bytes; when
        the field is encoded last, that encoding plus the MAC is the whole message."""
        fields = msg.fields
        if not self._last(fields, field):
            mac = self.mac(self.data(msg, field))
            fields[field] = mac.hex().upper()
            return self.codec.encode(msg)
        previous = fields.get(field)
        fields[field] = _ZERO_MAC
        try:
            # The MAC covers the message, not a link's static header (protocols.mac).
            head = self.codec.encode_body(msg)[:-MAC_LENGTH]
        except BaseException:
            if previous is None:
                del fields[field]
            else:
                fields[field] = previous
            raise
        mac = self.mac(head)
        fields[field] = mac.hex().upper()
        return self.codec.header + head + mac
