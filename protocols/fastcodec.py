"""A faster ISO 8583 codec with exactly :class:`protocols.codec.Codec`'s behaviour.

:class:`Codec` runs pyiso8583, which spends most of its ~23 us per message on per-field spec
dict lookups, partial-result bookkeeping and generality we do not use. :class:`FastCodec`
compiles the spec once into tuples and then decodes/encodes with slicing, ``bytes.hex``,
``binascii.a2b_hex`` and one loop over the fields present.

Every message takes the *fast path* first: it checks only what it must to know the input is
valid and bails out (never raises) on anything odd. A refused input is then replayed on the
*exact path*, a line-by-line transcription of pyiso8583's decoder/encoder for the supported
subset, which raises the same error as ``Codec`` (class, field, reason, MTI, echo). Valid input
never reaches the exact path; invalid input pays for both, which is still cheaper than pyiso8583.

Supported spec subset (anything else raises :class:`UnsupportedSpecError`, and the caller keeps
:class:`Codec`; :func:`best_codec` does that): no header (``h`` max_len 0), ASCII or BCD MTI,
binary or hex-text primary and secondary bitmaps, fields 2-128 with ``data_enc`` ASCII or ``b``
(hex text in :class:`Message`), fixed length or length prefixes of 1-4 ASCII digits or 1-2 BCD
bytes, counted in bytes, or in nibbles for ``b`` fields (BCD, padded as ``left_pad`` or
``right_pad`` says). The exact path transcribes pyiso8583 for the ASCII-MTI, binary-bitmap,
ASCII-prefix, byte-counted subset (the terminal dialect); for a spec using any of the rest
(BCD, hex-text bitmaps) it is pyiso8583 itself, through :class:`Codec`, so invalid input on
those dialects costs what it costs in pyiso8583.

Errors never carry raw bytes or field values other than the ``ECHO_SAFE`` echo, and are raised
outside any ``except`` block so that no library exception (which may hold the raw message) hangs
off ``__context__``.
"""

from __future__ import annotations

import codecs
from binascii import a2b_hex
from collections.abc import Mapping
from typing import Any

from protocols.codec import Codec, MessageFormatError, UndecodableError
from protocols.errors import LocalProtocolError
from protocols.message import Message

__all__ = ["FastCodec", "UnsupportedSpecError", "best_codec"]

# Field spec compiled to a tuple: (key, length-prefix width in bytes, max_len, binary data,
# counted in nibbles, left pad, right pad, prefix bytes -> length, length -> prefix as latin-1).
_Field = tuple[str, int, int, bool, bool, str, str, dict[bytes, int], tuple[str, ...]]
# What the fast paths' loops unpack (short tuples: unpacking is per field and message): key,
# prefix width, max_len, kind (_TEXT, _BYTES, _NIBBLES) and the prefix table (decoder: bytes ->
# length; encoder: the reverse).
_DecField = tuple[str, int, int, int, dict[bytes, int]]
_EncField = tuple[str, int, int, int, tuple[str, ...]]
_TEXT, _BYTES, _NIBBLES = 0, 1, 2

# Bounded memo of per-bitmap plans: real traffic has a handful of shapes; random input must not
# grow memory, so past the limit plans are computed and not stored.
_PLAN_CACHE_MAX = 512
_BIT1 = 1 << 127  # field 1 (secondary bitmap present) in the 128-bit combined bitmap
_BAD_LENGTH = 1 << 30  # what the length table answers for anything but len_type digits
_PREFIXES: dict[tuple[bool, int], tuple[str, ...]] = {}
_LENGTHS: dict[tuple[bool, int], dict[bytes, int]] = {}
# Cached plan of a message shape the fast path cannot take (a field missing from the spec).
_NO_PLAN: tuple[_DecField, ...] = (("", -1, -1, _TEXT, {}),)
_NO_ENC_PLAN: tuple[str, tuple[_EncField, ...]] = ("", ())


class UnsupportedSpecError(LocalProtocolError):
    """The spec uses a pyiso8583 feature FastCodec does not implement: use :class:`Codec`."""


def best_codec(spec: Mapping[str, Mapping[str, Any]]) -> Codec:
    """A :class:`FastCodec` for ``spec`` when it supports it, else the reference :class:`Codec`."""
    try:
        return FastCodec(spec)
    except UnsupportedSpecError:
        return Codec(spec)


def _prefix_table(bcd: bool, width: int) -> tuple[str, ...]:
    """Length prefixes ``width`` bytes wide (ASCII digits or BCD) as latin-1 text, indexed by
    length (shared by all codecs)."""
    table = _PREFIXES.get((bcd, width))
    if table is None:
        if bcd:
            table = tuple(
                a2b_hex(f"{n:0{2 * width}d}").decode("latin-1") for n in range(100**width)
            )
        else:
            table = tuple(f"{n:0{width}d}" for n in range(10**width))
        _PREFIXES[bcd, width] = table
    return table


def _length_table(bcd: bool, width: int) -> dict[bytes, int]:
    """Prefix bytes -> length: exactly the prefixes pyiso8583 reads as a number, but for ASCII
    ones only the zero-filled digits (" 9", "+9" or "-0" take the exact path)."""
    table = _LENGTHS.get((bcd, width))
    if table is None:
        table = {p.encode("latin-1"): n for n, p in enumerate(_prefix_table(bcd, width))}
        _LENGTHS[bcd, width] = table
    return table


def _is_ascii_codec(name: object) -> bool:
    if not isinstance(name, str) or name == "b":
        return False
    try:
        return codecs.lookup(name).name == "ascii"
    except LookupError:
        return False


def _compile_field(key: str, fspec: Mapping[str, Any]) -> _Field:
    def unsupported(what: str) -> UnsupportedSpecError:
        return UnsupportedSpecError(f"FastCodec: field {key}: {what}; use Codec")

    data_enc = fspec.get("data_enc")
    len_type = fspec.get("len_type")
    max_len = fspec.get("max_len")
    len_enc = fspec.get("len_enc")
    len_count = fspec.get("len_count", "bytes")
    if data_enc != "b" and not _is_ascii_codec(data_enc):
        raise unsupported(f"data encoding {data_enc!r} (only ascii and b)")
    if type(len_type) is not int or not 0 <= len_type <= 4:
        raise unsupported(f"length type {len_type!r} (only 0-4 digits)")
    if type(max_len) is not int or max_len < 0:
        raise unsupported(f"max_len {max_len!r}")
    if len_count not in ("bytes", "nibbles") or (len_count == "nibbles" and data_enc != "b"):
        raise unsupported(f"length counted in {len_count!r} (nibbles for b fields only)")
    # pyiso8583 reads len_enc only for variable-length fields.
    bcd = len_type > 0 and len_enc == "bcd"
    if len_type and not bcd and not _is_ascii_codec(len_enc):
        raise unsupported(f"length encoding {len_enc!r} (only ascii and bcd)")
    if bcd and len_type > 2:
        raise unsupported(f"length type {len_type!r} (only 1-2 BCD bytes)")
    pads = (fspec.get("left_pad", ""), fspec.get("right_pad", ""))
    if not all(isinstance(pad, str) for pad in pads):
        raise unsupported("pad is not text")
    nibbles = len_count == "nibbles"
    return (
        key,
        len_type,
        max_len,
        data_enc == "b",
        nibbles,
        pads[0][:1] if nibbles else "",  # pyiso8583 pads with the first character only
        pads[1][:1] if nibbles else "",
        _length_table(bcd, len_type) if len_type else {},
        _prefix_table(bcd, len_type) if len_type else (),
    )


def _valid_mti(mti: object) -> bool:
    return isinstance(mti, str) and len(mti) == 4 and mti.isdigit()


def _field_numbers(raw: bytes, offset: int) -> list[int]:
    """Numbers of the bits set in a bitmap, as pyiso8583 numbers them (1 = leftmost)."""
    value = int.from_bytes(raw, "big")
    top = offset + len(raw) * 8 + 1
    numbers = []
    while value:  # one turn per set bit, highest bit (lowest field number) first
        high = value.bit_length()
        numbers.append(top - high)
        value ^= 1 << (high - 1)
    return numbers


class FastCodec(Codec):
    """Encode and decode one dialect like :class:`Codec`, faster.

    A subclass so that it drops in wherever a ``Codec`` is expected. The spec is compiled at
    construction (later changes to the spec mapping are not seen). Stateless apart from a
    bounded memo of message shapes; one instance per dialect is shared."""

    __slots__ = (
        "_bcd_mti",
        "_by_number",
        "_dec_fields",
        "_dec_plans",
        "_enc_bits",
        "_enc_fields",
        "_enc_plans",
        "_hex_bitmap",
        "_pads",
        "_transcribed",
    )

    def __init__(self, spec: Mapping[str, Mapping[str, Any]]) -> None:
        super().__init__(spec)
        header = spec.get("h")
        if header is None or not isinstance(header.get("max_len"), int):
            raise UnsupportedSpecError("FastCodec: spec has no 'h' entry; use Codec")
        if header["max_len"] > 0:
            raise UnsupportedSpecError("FastCodec: message headers are not supported; use Codec")
        mti_enc = spec["t"].get("data_enc") if "t" in spec else None
        if mti_enc != "b" and not _is_ascii_codec(mti_enc):
            raise UnsupportedSpecError(
                "FastCodec: only an ASCII or BCD MTI is supported; use Codec"
            )
        bitmap_encs = {spec[key].get("data_enc") if key in spec else None for key in ("p", "1")}
        if bitmap_encs != {"b"} and not all(_is_ascii_codec(enc) for enc in bitmap_encs):
            raise UnsupportedSpecError(
                "FastCodec: bitmaps 'p' and '1' must both be binary ('b') or ASCII hex; use Codec"
            )
        self._bcd_mti = mti_enc == "b"
        self._hex_bitmap = bitmap_encs != {"b"}
        by_number: dict[int, _Field] = {}
        bcd_lengths = False
        for key, fspec in spec.items():
            if not isinstance(key, str) or not key.isdigit() or key in ("1", "65"):
                continue  # h/t/p handled above; 65 is the tertiary-bitmap bit, never a field
            number = int(key)
            if key != str(number) or number > 128:
                raise UnsupportedSpecError(
                    f"FastCodec: spec key {key!r} (tertiary bitmap or odd key); use Codec"
                )
            by_number[number] = _compile_field(key, fspec)
            bcd_lengths |= bool(fspec.get("len_type")) and fspec.get("len_enc") == "bcd"
        self._by_number = by_number
        # The exact path transcribes pyiso8583 for this subset only; otherwise it is Codec.
        self._transcribed = not (
            self._bcd_mti
            or self._hex_bitmap
            or bcd_lengths
            or any(f[4] for f in by_number.values())
        )
        # Encoder: canonical key -> bit in the 128-bit combined bitmap (field n at bit 128 - n).
        self._enc_bits = {key: 1 << (128 - n) for n, (key, *_rest) in by_number.items()}
        kinds = {n: _NIBBLES if f[4] else _BYTES if f[3] else _TEXT for n, f in by_number.items()}
        self._dec_fields = {n: (*f[:3], kinds[n], f[7]) for n, f in by_number.items()}
        self._enc_fields = {n: (*f[:3], kinds[n], f[8]) for n, f in by_number.items()}
        self._pads = {f[0]: (f[5], f[6]) for f in by_number.values()}
        self._dec_plans: dict[bytes, tuple[_DecField, ...]] = {}
        self._enc_plans: dict[tuple[str, ...], tuple[str, tuple[_EncField, ...]]] = {}

    # ------------------------------------------------------------------ decode

    def decode(self, data: bytes | bytearray) -> Message:
        msg = self._decode_fast(data)
        if msg is None:  # outside any except block: no library exception in __context__
            return self._decode_exact(data)
        return msg

    def _decode_plan(self, bitmap: bytes) -> tuple[_DecField, ...]:
        """Fields present, ascending, for a primary (+ secondary without bit 65) bitmap."""
        value = int.from_bytes(bitmap, "big")
        width = len(bitmap) * 8
        fields = self._dec_fields
        plan: list[_DecField] = []
        for n in range(2, width + 1):
            if value >> (width - n) & 1:
                entry = fields.get(n)
                if entry is None:
                    return _NO_PLAN  # not in the spec: the exact path reports it
                plan.append(entry)
        return tuple(plan)

    def _decode_fast(self, data: bytes | bytearray) -> Message | None:
        """The message when ``data`` is a valid message, else ``None`` (never raises)."""
        if type(data) is not bytes:
            if not isinstance(data, bytearray):
                return None
            data = bytes(data)
        if self._bcd_mti:
            mti = data[:2].hex()
            if len(mti) != 4 or not mti.isdigit():  # hex text: digits when it is valid BCD
                return None
            pos = 2
        else:
            head = data[:4]
            if len(head) != 4 or not head.isdigit():  # bytes.isdigit: ASCII digits only
                return None
            mti = head.decode("ascii")
            pos = 4
        if self._hex_bitmap:
            bitmap = _unhex_or_none(data[pos : pos + 16])
            if bitmap is None or len(bitmap) != 8:
                return None
            pos += 16
            if bitmap[0] & 0x80:
                secondary = _unhex_or_none(data[pos : pos + 16])
                if secondary is None or len(secondary) != 8 or secondary[0] & 0x80:
                    return None  # short, not hex, or bit 65 (tertiary): the exact path
                bitmap += secondary
                pos += 16
        elif len(data) < pos + 8:
            return None
        elif data[pos] < 0x80:
            bitmap = data[pos : pos + 8]
            pos += 8
        elif len(data) >= pos + 16 and data[pos + 8] < 0x80:  # secondary, no tertiary (bit 65)
            bitmap = data[pos : pos + 16]
            pos += 16
        else:
            return None
        plans = self._dec_plans
        plan = plans.get(bitmap)
        if plan is None:
            plan = self._decode_plan(bitmap)
            if len(plans) < _PLAN_CACHE_MAX:
                plans[bitmap] = plan
        if plan is _NO_PLAN:
            return None
        start = pos
        # ASCII fields are sliced from one latin-1 decoding of the whole message (one C pass,
        # one object per field); that they are really ASCII is checked once, at the end.
        text = data.decode("latin-1")
        out: dict[str, str] = {}
        for key, len_type, max_len, kind, lengths in plan:
            if len_type:
                # Exactly the prefixes pyiso8583 reads plainly, else _BAD_LENGTH (> any max_len).
                size = lengths.get(data[pos : pos + len_type], _BAD_LENGTH)
                if size > max_len:
                    return None
                pos += len_type
            else:
                size = max_len
            if kind == _TEXT:
                end = pos + size
                out[key] = text[pos:end]
            elif kind == _NIBBLES:
                end = pos + (size + 1) // 2
                value = data[pos:end].hex().upper()
                if size & 1:  # one pad nibble, removed as pyiso8583 does (left pad first)
                    lpad, rpad = self._pads[key]
                    if lpad and value[:1] == lpad:
                        value = value[1:]
                    elif rpad and value[-1:] == rpad:
                        value = value[:-1]
                    else:
                        return None
                out[key] = value
            else:
                end = pos + size
                out[key] = data[pos:end].hex().upper()
            pos = end
        # A short field leaves pos past the end. All bytes after the bitmap ASCII (no binary
        # field, or binary bytes that happen to be ASCII): every ASCII field is; otherwise one
        # check over the values (hex text is ASCII, so it covers every ASCII field).
        if pos != len(data):
            return None
        if not data[start:].isascii() and not "".join(out.values()).isascii():
            return None
        return Message(mti, out)

    def _decode_exact(self, data: bytes | bytearray) -> Message:
        """pyiso8583 ``decode`` + ``Codec.decode`` step by step: same result or same error."""
        if not self._transcribed:
            return super().decode(data)  # type: ignore[arg-type]  # bytearray: as pyiso8583
        if isinstance(data, bytes | bytearray):
            data = bytes(data)
        else:
            raise UndecodableError("message could not be decoded")
        partial: dict[str, str] = {"t": ""}
        head = data[0:4]
        if len(head) != 4:
            raise self._decode_error(partial, "t", f"Field data is {len(head)} bytes, expecting 4")
        mti = _ascii_or_none(head)
        if mti is None:
            raise self._decode_error(partial, "t", "Failed to decode field, invalid data")
        partial["t"] = mti

        field = "p"
        partial["p"] = ""
        raw = data[4:12]
        if len(raw) != 8:
            raise self._decode_error(partial, "p", f"Field data is {len(raw)} bytes, expecting 8")
        partial["p"] = raw.hex().upper()
        numbers = set(_field_numbers(raw, 0))
        pos = 12
        if 1 in numbers:
            field = "1"
            partial["1"] = ""
            raw = data[pos : pos + 8]
            if len(raw) != 8:
                raise self._decode_error(
                    partial, "1", f"Field data is {len(raw)} bytes, expecting 8"
                )
            partial["1"] = raw.hex().upper()
            numbers.update(_field_numbers(raw, 64))
            numbers.remove(1)
            pos += 8
        if 65 in numbers:  # tertiary bitmap, appended to field "1" as pyiso8583 does
            raw = data[pos : pos + 8]
            if len(raw) != 8:
                reason = f"Field data is {8 + len(raw)} bytes, expecting 16"
                raise self._decode_error(partial, field, reason)
            partial[field] += raw.hex().upper()
            numbers.update(_field_numbers(raw, 128))
            numbers.remove(65)
            pos += 8

        by_number = self._by_number
        for number in sorted(numbers):
            entry = by_number.get(number)
            if entry is None:  # pyiso8583: KeyError on the spec, which Codec maps to this
                raise UndecodableError("message could not be decoded")
            field, len_type, max_len, binary = entry[:4]
            partial[field] = ""
            prefix = data[pos : pos + len_type]
            if len(prefix) != len_type:
                reason = f"Field length is {len(prefix)} bytes wide, expecting {len_type}"
                raise self._decode_error(partial, field, reason)
            if len_type == 0:
                size = max_len
            else:
                text = _ascii_or_none(prefix)
                if text is None:
                    reason = "Failed to decode field length, invalid data"
                    raise self._decode_error(partial, field, reason)
                parsed = _int_or_none(text)  # int() as pyiso8583 calls it: " 9", "+9", "-0"...
                if parsed is None:
                    reason = "Failed to decode field length, non-numeric data"
                    raise self._decode_error(partial, field, reason)
                size = parsed
                if size > max_len:
                    reason = f"Field data is {size} bytes, larger than maximum {max_len}"
                    raise self._decode_error(partial, field, reason)
            pos += len_type
            if size == 0:
                continue
            chunk = data[pos : pos + size]
            if len(chunk) != size:
                reason = f"Field data is {len(chunk)} bytes, expecting {size}"
                raise self._decode_error(partial, field, reason)
            if binary:
                partial[field] = chunk.hex().upper()
            else:
                value = _ascii_or_none(chunk)
                if value is None:
                    raise self._decode_error(partial, field, "Failed to decode field, invalid data")
                partial[field] = value
            pos += size
        if pos != len(data):
            raise self._decode_error(partial, field, "Extra data after last field")

        if not _valid_mti(mti):
            raise UndecodableError("MTI is not four digits", field="t")
        for key in ("t", "p", "1"):
            partial.pop(key, None)
        return Message(mti, partial)

    def _decode_error(
        self, partial: dict[str, str], field: str, reason: str
    ) -> UndecodableError | MessageFormatError:
        """What Codec makes of pyiso8583's DecodeError at ``field`` with ``partial`` decoded."""
        mti = partial.get("t")
        if field == "t" or not _valid_mti(mti):
            return UndecodableError(reason, field=field)
        assert mti is not None
        echo = self.format_echo(mti, partial)
        return MessageFormatError(reason, mti=mti, field=field, echo=echo)

    # ------------------------------------------------------------------ encode

    def encode(self, msg: Message) -> bytes:
        raw = self._encode_fast(msg)
        if raw is None:  # outside any except block, as for decode
            return self._encode_exact(msg)
        return raw

    def _encode_plan(self, keys: tuple[str, ...]) -> tuple[str, tuple[_EncField, ...]]:
        """Bitmap (as latin-1 text) and fields in wire order for a message with these keys;
        ``_NO_ENC_PLAN`` when a key is not a field of the spec written canonically (the exact
        path handles it)."""
        bits_of = self._enc_bits
        bits = 0
        for key in keys:
            bit = bits_of.get(key)
            if bit is not None:
                bits |= bit
            elif key in ("1", "65") or (isinstance(key, str) and not key.isnumeric()):
                continue  # pyiso8583 drops "1"/"65" and ignores non-numeric keys ("t", "p")
            else:
                return _NO_ENC_PLAN
        if bits & ((1 << 64) - 1):
            raw = (bits | _BIT1).to_bytes(16, "big")
        else:
            raw = (bits >> 64).to_bytes(8, "big")
        bitmap = raw.hex().upper() if self._hex_bitmap else raw.decode("latin-1")
        fields = self._enc_fields
        plan = tuple(fields[n] for n in range(2, 129) if bits >> (128 - n) & 1)
        return bitmap, plan

    def _encode_fast(self, msg: Message) -> bytes | None:
        """The encoded message when ``msg`` is valid, else ``None`` (never raises)."""
        fields = msg.fields
        try:
            keys = tuple(fields)
            plans = self._enc_plans
            compiled = plans.get(keys)
            if compiled is None:
                compiled = self._encode_plan(keys)
                if len(plans) < _PLAN_CACHE_MAX:
                    plans[keys] = compiled
            if compiled is _NO_ENC_PLAN:
                return None
            bitmap, plan = compiled
            mti = msg.mti
            if len(mti) != 4 or not mti.isascii():
                return None
            if self._bcd_mti:
                if not mti.isdigit():
                    return None
                mti = a2b_hex(mti).decode("latin-1")
            # Built as latin-1 text and encoded once: ASCII values go in as they are (checked
            # ASCII, so their length is their byte length), binary ones as latin-1 characters.
            parts = [mti, bitmap]
            append = parts.append
            for key, len_type, max_len, kind, prefixes in plan:
                value = fields[key]
                size = len(value)
                if kind == _TEXT:
                    if not value.isascii():
                        return None
                elif kind == _NIBBLES:  # counted in nibbles, an odd count padded as pyiso8583 pads
                    if size & 1:
                        lpad, rpad = self._pads[key]
                        if not (lpad or rpad):
                            return None
                        value = lpad + value if lpad else value + rpad
                    value = a2b_hex(value).decode("latin-1")
                else:
                    value = a2b_hex(value).decode("latin-1")
                    size = len(value)
                if len_type:
                    if size > max_len:
                        return None
                    append(prefixes[size])  # IndexError: prefix too narrow, exact path says so
                elif size != max_len:
                    return None
                append(value)
            return "".join(parts).encode("latin-1")
        except Exception:  # any oddity (types, hex) is replayed on the exact path
            return None

    def _encode_exact(self, msg: Message) -> bytes:
        """pyiso8583 ``encode`` + ``Codec.encode`` step by step: same bytes or the same
        LocalProtocolError. Where pyiso8583 itself crashes (a KeyError or ValueError that
        Codec lets escape) this raises LocalProtocolError instead."""
        if not self._transcribed:
            return self._encode_by_codec(msg)
        doc: dict[Any, Any] = dict(msg.fields)
        doc["t"] = msg.mti
        doc.pop("1", None)
        doc.pop("65", None)

        mti = _encode_ascii(doc["t"])
        if mti is None:
            raise _encode_error("t", "Failed to encode field, invalid data")
        if len(mti) != 4:
            raise _encode_error("t", f"Field data is {len(mti)} bytes, expecting 4")

        odd_keys = [k for k in doc if not isinstance(k, str)]
        if odd_keys:
            raise _encode_error("p", f"Dictionary contains invalid fields {odd_keys}")
        numbers: set[int] = set()
        for key in doc:
            if key.isnumeric():
                number = _int_or_none(key)
                if number is None:  # pyiso8583 raises a bare ValueError here
                    raise _encode_error("p", "Dictionary contains a field key that is not a number")
                numbers.add(number)
        outside = sorted(numbers.difference(range(1, 193)))
        if outside:
            raise _encode_error("p", f"Dictionary contains fields outside of 1-192 range {outside}")
        tertiary = numbers.intersection(range(129, 193))
        if tertiary:
            numbers.add(65)
        secondary = numbers.intersection(range(65, 129))
        if secondary:
            numbers.add(1)

        parts = [mti, _bitmap(numbers.intersection(range(1, 65)), 0)]
        if 1 in numbers:
            parts.append(_bitmap(secondary, 64))
            numbers.remove(1)
        if 65 in numbers:
            parts.append(_bitmap(tertiary, 128))
            numbers.remove(65)

        for number in sorted(numbers):
            key = str(number)
            entry = self._by_number.get(number)
            if entry is None:  # pyiso8583 raises a bare KeyError on the spec
                raise _encode_error(key, "Field is not in the dialect")
            if key not in doc:  # pyiso8583 raises a bare KeyError (key written as "02", "٢")
                raise _encode_error(key, "Field key is not written as a plain number")
            _, len_type, max_len, binary = entry[:4]
            value = doc[key]
            if binary:
                data = _unhex_or_none(value)
                if data is None:
                    length = _len_or_none(value)
                    if length is None:  # pyiso8583 raises a bare TypeError
                        raise _encode_error(key, "Failed to encode field, non-hex data")
                    if length % 2 == 1:
                        raise _encode_error(key, "Failed to encode field, odd-length hex data")
                    raise _encode_error(key, "Failed to encode field, non-hex data")
            else:
                data = _encode_ascii(value)
                if data is None:
                    raise _encode_error(key, "Failed to encode field, invalid data")
            size = len(data)
            if len_type == 0:
                if size != max_len:
                    raise _encode_error(key, f"Field data is {size} bytes, expecting {max_len}")
                parts.append(data)
                continue
            if size > max_len:
                reason = f"Field data is {size} bytes, larger than maximum {max_len}"
                raise _encode_error(key, reason)
            prefix = b"%0*d" % (len_type, size)
            if len(prefix) > len_type:
                reason = (
                    "Failed to encode field length, field length does not fit into configured"
                    " field size"
                )
                raise _encode_error(key, reason)
            parts.append(prefix)
            parts.append(data)
        return b"".join(parts)

    def _encode_by_codec(self, msg: Message) -> bytes:
        """Codec's encode (pyiso8583), its error raised anew outside the ``except`` block (no
        EncodeError, which holds the fields, in ``__context__``) and pyiso8583's own crashes
        as LocalProtocolError, as on the transcribed path."""
        failure: LocalProtocolError
        try:
            return super().encode(msg)
        except LocalProtocolError as exc:
            failure = LocalProtocolError(str(exc))
        except Exception:  # KeyError, ValueError, TypeError on odd keys or values
            failure = LocalProtocolError("cannot encode: pyiso8583 refused the message")
        raise failure


# ---------------------------------------------------------------------- helpers of the exact path
# Each returns None instead of raising, so that the caller raises its own error outside the
# except block (no library exception, which may hold raw data, chained in __context__).


def _encode_error(field: str, reason: str) -> LocalProtocolError:
    # Codec's text: pyiso8583's message up to its first colon.
    return LocalProtocolError(f"cannot encode field {field}: {reason.split(':')[0].strip()}")


def _bitmap(numbers: set[int], offset: int) -> bytes:
    value = 0
    for number in numbers:
        value |= 1 << (63 - (number - 1 - offset))
    return value.to_bytes(8, "big")


def _ascii_or_none(raw: bytes) -> str | None:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        return None


def _encode_ascii(value: Any) -> bytes | None:
    try:
        data = value.encode("ascii")
    except Exception:  # pyiso8583 maps any failure to "invalid data"
        return None
    return data if isinstance(data, bytes) else None


def _unhex_or_none(value: Any) -> bytes | None:
    try:
        return a2b_hex(value)
    except Exception:  # binascii.Error, ValueError (non-ASCII), TypeError
        return None


def _len_or_none(value: Any) -> int | None:
    try:
        return len(value)
    except TypeError:
        return None


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None
