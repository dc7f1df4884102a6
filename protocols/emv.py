"""EMV BER-TLV codec for ISO 8583 field 55 (EMV 4.4 Book 3 Annex B, ISO/IEC 8825-1 subset).

Tags are uppercase hex strings (``"9F26"``), values are ``bytes``. Decoding is strict, so that
``decode(b).encode() == b`` for every input that decodes:

* tags of one to three bytes (ISO/IEC 7816-4); ``00`` and ``FF`` are not tags (EMV allows ``00``
  padding between objects in card records, but a terminal has no reason to send it in field 55,
  and dropping it would break byte-exact re-encoding);
* definite lengths only, in the minimal form: short (``00``-``7F``), ``81 xx`` for 128-255,
  ``82 xx xx`` for 256-65535; the indefinite form ``80`` and longer forms are refused;
* nothing may follow the last object (trailing bytes that do not form a whole object fail as
  truncated data).

Every defect raises :class:`TlvError`, a :class:`~protocols.errors.RemoteProtocolError` with
``rc="30"`` whose ``field`` names where the bytes came from (``"55"`` unless the caller says
otherwise). Messages carry tags and offsets, never values.

Repeated tags are kept in order; :meth:`Tlv.get` answers the first, :meth:`Tlv.get_all` all of
them. Constructed objects (bit 6 of the first tag byte) keep their raw value; their children are
decoded when asked (``decode(..., recursive=True)`` or :meth:`Tlv.template`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Final, NamedTuple, TypeAlias

from protocols.emv_tags import TAGS, tag_info
from protocols.errors import LocalProtocolError, RemoteProtocolError
from protocols.redact import mask_pan

__all__ = [
    "ARQC_TAGS",
    "CONTACTLESS_TAGS",
    "RedactedTlv",
    "Tlv",
    "TlvError",
    "TlvItem",
    "arqc_input",
    "bcd_decode",
    "bcd_encode",
    "check_lengths",
    "decode",
    "encode",
    "encode_issuer_auth",
    "mask_pan_digits",
    "missing_tags",
    "redact",
    "template",
]

MAX_TAG_BYTES: Final = 3
MAX_DEPTH: Final = 8  # EMV nests two or three levels; a bound keeps recursion safe on junk

# Field 55 data mandatory for chip and contactless transactions (SPEC, "Security of terminal
# messages").
CONTACTLESS_TAGS: Final[tuple[str, ...]] = (
    "9F26",
    "9F27",
    "9F10",
    "9F37",
    "9F36",
    "95",
    "9A",
    "9C",
    "9F02",
    "9F03",
    "5F2A",
    "82",
    "9F1A",
)

# Input of the ARQC MAC, in this order (SPEC; the EMV Book 2 recommended minimum set plus 9F10).
ARQC_TAGS: Final[tuple[str, ...]] = (
    "9F02",
    "9F03",
    "9F1A",
    "95",
    "5F2A",
    "9A",
    "9C",
    "9F37",
    "82",
    "9F36",
    "9F10",
)


class TlvError(RemoteProtocolError):
    """Malformed or incomplete BER-TLV data from a peer (response code 30)."""

    def __init__(
        self,
        reason: str,
        *,
        field: str = "55",
        tag: str | None = None,
        offset: int | None = None,
    ) -> None:
        where = "" if tag is None else f"tag {tag}: "
        at = "" if offset is None else f" at offset {offset}"
        super().__init__(f"{where}{reason}{at}", field=field, rc="30")
        self.tag = tag
        self.offset = offset


class TlvItem(NamedTuple):
    """One data object. ``children`` is set for constructed objects decoded recursively."""

    tag: str
    value: bytes
    children: Tlv | None = None

    @property
    def constructed(self) -> bool:
        """Bit 6 of the first tag byte: the value is itself a sequence of data objects."""
        return bool(int(self.tag[:2], 16) & 0x20)

    def __repr__(self) -> str:
        # Values may be a PAN or track data: a repr must be safe to log.
        return f"TlvItem({self.tag}, <{len(self.value)} bytes>)"


# Tag bytes -> tag string for the tags we know, so decoding skips hex() + upper() for them.
# Only known tags are cached: remote input must not grow a module-level dict.
_TAG_NAMES: Final[dict[bytes, str]] = {bytes.fromhex(t): t for t in TAGS}
_TAG_BYTES: Final[dict[str, bytes]] = {t: bytes.fromhex(t) for t in TAGS}
_SHORT_LENGTHS: Final[tuple[bytes, ...]] = tuple(bytes((n,)) for n in range(0x80))
# NamedTuple.__new__ is a Python function; tuple.__new__ builds the same object 3x faster.
_new_tuple: Final = tuple.__new__


class Tlv:
    """An ordered, immutable sequence of :class:`TlvItem` with lookup by tag.

    Build one from decoded bytes (:func:`decode`) or from ``(tag, value)`` pairs; iterating
    yields :class:`TlvItem`. ``repr`` shows tags and lengths only.
    """

    __slots__ = ("_first", "_items")

    def __init__(self, items: Iterable[TlvItem | tuple[str, bytes]] = ()) -> None:
        checked: list[TlvItem] = []
        for entry in items:
            if isinstance(entry, TlvItem):
                tag, value, children = entry
            else:
                tag, value = entry
                children = None
            tag = tag.upper()
            _tag_bytes(tag)  # validates
            if not isinstance(value, bytes | bytearray | memoryview):
                raise LocalProtocolError(f"tag {tag}: value must be bytes")
            checked.append(TlvItem(tag, bytes(value), children))
        self._items: tuple[TlvItem, ...] = tuple(checked)
        self._first = _index(self._items)

    @classmethod
    def _trusted(cls, items: list[TlvItem]) -> Tlv:
        """Wrap items the decoder produced (already validated) without copying them again."""
        self = cls.__new__(cls)
        self._items = tuple(items)
        self._first = _index(self._items)
        return self

    # Lookup ---------------------------------------------------------------------------------

    def get(self, tag: str, default: bytes | None = None) -> bytes | None:
        """Value of the first object with ``tag``, or ``default``."""
        item = self._first.get(tag) or self._first.get(tag.upper())
        return default if item is None else item.value

    def get_all(self, tag: str) -> list[bytes]:
        """Values of every object with ``tag``, in order."""
        tag = tag.upper()
        return [item.value for item in self._items if item.tag == tag]

    def item(self, tag: str) -> TlvItem | None:
        """The first object with ``tag``."""
        return self._first.get(tag) or self._first.get(tag.upper())

    def template(self, tag: str, *, field: str = "55") -> Tlv | None:
        """Children of the first constructed object with ``tag``, decoded now if need be."""
        item = self.item(tag)
        if item is None:
            return None
        if item.children is not None:
            return item.children
        if not item.constructed:
            raise TlvError("is not a constructed object", field=field, tag=item.tag)
        return decode(item.value, field=field)

    def tags(self) -> list[str]:
        return [item.tag for item in self._items]

    def pairs(self) -> list[tuple[str, bytes]]:
        return [(item.tag, item.value) for item in self._items]

    # Building --------------------------------------------------------------------------------

    def extended(self, items: Iterable[TlvItem | tuple[str, bytes]]) -> Tlv:
        """A new :class:`Tlv` with ``items`` appended."""
        return Tlv((*self._items, *items))

    def encode(self) -> bytes:
        return _encode_items(self._items)

    # Container protocol ----------------------------------------------------------------------

    def __iter__(self) -> Iterator[TlvItem]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, tag: object) -> bool:
        return isinstance(tag, str) and (tag in self._first or tag.upper() in self._first)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tlv):
            return NotImplemented
        return self.pairs() == other.pairs()

    def __hash__(self) -> int:
        return hash(tuple(self.pairs()))

    def __repr__(self) -> str:
        inner = ", ".join(f"{item.tag}:{len(item.value)}" for item in self._items)
        return f"Tlv({inner})"


def _index(items: tuple[TlvItem, ...]) -> dict[str, TlvItem]:
    first: dict[str, TlvItem] = {}
    for item in items:
        first.setdefault(item.tag, item)
    return first


# Decoding -----------------------------------------------------------------------------------


def decode(
    data: bytes | bytearray | memoryview, *, recursive: bool = False, field: str = "55"
) -> Tlv:
    """Decode a sequence of BER-TLV data objects; raise :class:`TlvError` on any defect."""
    buf = bytes(data)
    return Tlv._trusted(_decode(buf, 0, len(buf), recursive, field, 0))


def _decode(
    buf: bytes, pos: int, end: int, recursive: bool, field: str, depth: int
) -> list[TlvItem]:
    items: list[TlvItem] = []
    append = items.append
    while pos < end:
        start = pos
        b0 = buf[pos]
        if b0 == 0x00 or b0 == 0xFF:
            raise TlvError(f"byte {b0:02X} is not a tag", field=field, offset=pos)
        pos += 1
        if b0 & 0x1F == 0x1F:
            # Subsequent tag bytes: bit 8 set means another one follows (ISO/IEC 8825-1 8.1.2.4).
            while True:
                if pos >= end:
                    raise TlvError("truncated tag", field=field, offset=start)
                b = buf[pos]
                pos += 1
                if not b & 0x80:
                    break
                if pos - start >= MAX_TAG_BYTES:
                    raise TlvError("tag longer than 3 bytes", field=field, offset=start)
        raw_tag = buf[start:pos]
        tag = _TAG_NAMES.get(raw_tag) or raw_tag.hex().upper()
        if pos >= end:
            raise TlvError("length missing", field=field, tag=tag, offset=pos)
        length = buf[pos]
        pos += 1
        if length & 0x80:
            if length == 0x81:
                if pos >= end:
                    raise TlvError("truncated length", field=field, tag=tag, offset=pos)
                length = buf[pos]
                pos += 1
                if length < 0x80:
                    raise TlvError("non-minimal length 81", field=field, tag=tag, offset=pos - 2)
            elif length == 0x82:
                if pos + 2 > end:
                    raise TlvError("truncated length", field=field, tag=tag, offset=pos)
                length = (buf[pos] << 8) | buf[pos + 1]
                pos += 2
                if length < 0x100:
                    raise TlvError("non-minimal length 82", field=field, tag=tag, offset=pos - 3)
            elif length == 0x80:
                raise TlvError("indefinite length", field=field, tag=tag, offset=pos - 1)
            else:
                raise TlvError(
                    f"unsupported length form {length:02X}", field=field, tag=tag, offset=pos - 1
                )
        vend = pos + length
        if vend > end:
            raise TlvError(
                f"value of {length} bytes truncated to {end - pos}",
                field=field,
                tag=tag,
                offset=pos,
            )
        if recursive and b0 & 0x20:
            if depth >= MAX_DEPTH:
                raise TlvError("templates nested too deeply", field=field, tag=tag, offset=start)
            children = Tlv._trusted(_decode(buf, pos, vend, True, field, depth + 1))
            append(_new_tuple(TlvItem, (tag, buf[pos:vend], children)))
        else:
            append(_new_tuple(TlvItem, (tag, buf[pos:vend], None)))
        pos = vend
    return items


# Encoding -----------------------------------------------------------------------------------


def _tag_bytes(tag: str) -> bytes:
    """Bytes of a well-formed tag string, or :class:`LocalProtocolError`."""
    raw = _TAG_BYTES.get(tag)
    if raw is not None:
        return raw
    try:
        raw = bytes.fromhex(tag)
    except ValueError:
        raise LocalProtocolError(f"tag {tag!r} is not hex") from None
    n = len(raw)
    if n * 2 != len(tag) or not 1 <= n <= MAX_TAG_BYTES or raw[0] in (0x00, 0xFF):
        raise LocalProtocolError(f"tag {tag!r} is not a valid BER tag")
    multi = raw[0] & 0x1F == 0x1F
    if (n == 1) == multi:
        raise LocalProtocolError(f"tag {tag!r}: tag number form does not match its length")
    if any(not b & 0x80 for b in raw[1:-1]) or (n > 1 and raw[-1] & 0x80):
        raise LocalProtocolError(f"tag {tag!r}: bad continuation bits")
    return raw


def _length_bytes(n: int) -> bytes:
    if n < 0x80:
        return _SHORT_LENGTHS[n]
    if n < 0x100:
        return bytes((0x81, n))
    if n < 0x10000:
        return bytes((0x82, n >> 8, n & 0xFF))
    raise LocalProtocolError(f"value of {n} bytes is too long for this codec")


def _encode_items(items: Iterable[TlvItem]) -> bytes:
    parts: list[bytes] = []
    append = parts.append
    for item in items:
        append(_TAG_BYTES.get(item.tag) or bytes.fromhex(item.tag))
        append(_length_bytes(len(item.value)))
        append(item.value)
    return b"".join(parts)


def encode(items: Tlv | Iterable[TlvItem | tuple[str, bytes]]) -> bytes:
    """Encode data objects (a :class:`Tlv` or ``(tag, value)`` pairs) as BER-TLV."""
    if isinstance(items, Tlv):
        return items.encode()
    return Tlv(items).encode()


def template(tag: str, children: Tlv | Iterable[TlvItem | tuple[str, bytes]]) -> TlvItem:
    """A constructed data object whose value is the encoding of ``children``."""
    inner = children if isinstance(children, Tlv) else Tlv(children)
    tag = tag.upper()
    if not _tag_bytes(tag)[0] & 0x20:
        raise LocalProtocolError(f"tag {tag} is primitive, not a template")
    return TlvItem(tag, inner.encode(), inner)


# Field 55 checks and the ARQC input ---------------------------------------------------------


def missing_tags(tlv: Tlv, required: Iterable[str] = CONTACTLESS_TAGS) -> list[str]:
    """Required tags absent from ``tlv`` (top level), in the order of ``required``."""
    first = tlv._first
    return [tag for tag in required if tag not in first and tag.upper() not in first]


def check_lengths(tlv: Tlv, tags: Iterable[str] = CONTACTLESS_TAGS, *, field: str = "55") -> None:
    """Raise :class:`TlvError` when one of ``tags`` is present with a length its format forbids."""
    first = tlv._first
    for tag in tags:
        item = first.get(tag) or first.get(tag.upper())
        if item is None:
            continue
        info = tag_info(item.tag)
        if not info.min_len <= len(item.value) <= info.max_len:
            raise TlvError(
                f"length {len(item.value)} outside {info.min_len}..{info.max_len}",
                field=field,
                tag=item.tag,
            )


def arqc_input(tlv: Tlv, *, field: str = "55") -> bytes:
    """Values of 9F02 9F03 9F1A 95 5F2A 9A 9C 9F37 82 9F36 9F10 concatenated (SPEC order).

    Raises :class:`TlvError` when one is missing or has the wrong length: a format error
    (30), not a cryptogram failure.
    """
    first = tlv._first
    parts: list[bytes] = []
    for tag, low, high in _ARQC_FORMATS:
        item = first.get(tag)
        if item is None:
            missing = missing_tags(tlv, ARQC_TAGS)
            raise TlvError(f"ARQC data missing tags {' '.join(missing)}", field=field)
        if not low <= len(item.value) <= high:
            check_lengths(tlv, (tag,), field=field)  # raises with the full reason
        parts.append(item.value)
    return b"".join(parts)


_ARQC_FORMATS: Final = tuple((t, tag_info(t).min_len, tag_info(t).max_len) for t in ARQC_TAGS)


def encode_issuer_auth(arpc: bytes, arc: bytes) -> bytes:
    """Field 55 of a response: tag 91 = ARPC (8 bytes) followed by the ARC (2 bytes)."""
    if len(arpc) != 8 or len(arc) != 2:
        raise LocalProtocolError("tag 91 needs an 8-byte ARPC and a 2-byte ARC")
    return b"\x91\x0a" + bytes(arpc) + bytes(arc)


# Numeric (n) data elements: BCD, right-justified, zero-padded (EMV Book 3 section 4.3).


def bcd_decode(value: bytes, *, field: str = "55", tag: str | None = None) -> int:
    """Integer of an ``n`` format value (e.g. 9F02 ``000000012345`` -> 12345)."""
    text = value.hex()
    if not text.isdigit() and text:
        raise TlvError("numeric value is not BCD", field=field, tag=tag)
    return int(text) if text else 0


def bcd_encode(number: int, length: int) -> bytes:
    """``n`` format value of ``length`` bytes (e.g. amount 12345 in 6 bytes for 9F02)."""
    if number < 0:
        raise LocalProtocolError("negative numeric value")
    text = str(number).rjust(length * 2, "0")
    if len(text) > length * 2:
        raise LocalProtocolError(f"{number} does not fit in {length} BCD bytes")
    return bytes.fromhex(text)


# Redaction for logs -------------------------------------------------------------------------

RedactedTlv: TypeAlias = "dict[str, str | RedactedTlv]"


mask_pan_digits = mask_pan
"""First 6 / last 4 of a PAN (the one rule, :func:`protocols.redact.mask_pan`)."""


def _hidden(value: bytes) -> str:
    return f"<{len(value)} bytes hidden>"


def redact(data: Tlv | bytes | bytearray | memoryview) -> RedactedTlv:
    """A loggable view: tag -> hex, with PAN masked and other card data hidden.

    Raw bytes that do not decode give ``{"error": reason, "length": n}`` (the reason carries no
    value). Repeated tags appear as ``"9F10"``, ``"9F10#2"``, ...; templates as nested dicts.
    """
    if isinstance(data, Tlv):
        tlv = data
    else:
        try:
            tlv = decode(data)
        except TlvError as exc:
            return {"error": exc.reason, "length": str(len(data))}
    return _redact(tlv, 0)


def _redact(tlv: Tlv, depth: int) -> RedactedTlv:
    out: RedactedTlv = {}
    for item in tlv:
        key = item.tag
        n = 2
        while key in out:
            key = f"{item.tag}#{n}"
            n += 1
        out[key] = _redact_item(item, depth)
    return out


def _redact_item(item: TlvItem, depth: int) -> str | RedactedTlv:
    info = tag_info(item.tag)
    # Templates are walked so known inner tags stay readable; unknown inner tags stay hidden.
    if item.constructed and (info.mask == "clear" or item.tag not in TAGS):
        children = item.children
        if children is None:
            if depth >= MAX_DEPTH:
                return _hidden(item.value)
            try:
                children = decode(item.value)
            except TlvError:
                return _hidden(item.value)
        return _redact(children, depth + 1)
    if info.mask == "clear":
        return item.value.hex().upper()
    if info.mask == "pan":
        digits = item.value.hex().upper().rstrip("F")
        if digits.isdigit():
            return mask_pan_digits(digits)
    return _hidden(item.value)
