"""A lean ISO 8583 codec for the load generator's own hot path.

The generator must cost much less CPU per transaction than the switch it measures (they share
the machine). pyiso8583 spends ~25 us per message on validation and generality; this encoder
writes the message straight from the dialect's field table, and :meth:`LeanCodec.peek` reads
only the fields the generator needs from an answer (11, 39, ...), stopping after the last one.
The tests check both against :class:`protocols.codec.Codec` on every kind of request.

Only the shapes the terminal dialect uses are supported (ASCII MTI, binary bitmaps, ASCII
length prefixes, ASCII or binary data); the constructor refuses anything else.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class WireError(ValueError):
    """A message that the lean codec cannot write or read (the generator counts it)."""


class LeanCodec:
    __slots__ = ("_fields",)

    def __init__(self, spec: Mapping[str, Mapping[str, Any]]) -> None:
        fields: dict[int, tuple[bool, int, int]] = {}
        for key, f in spec.items():
            if not key.isdigit() or key == "1":
                continue
            if f["len_enc"] != "ascii" or f["data_enc"] not in ("ascii", "b"):
                raise WireError(f"field {key}: encoding not supported by the lean codec")
            if f.get("left_pad") or f.get("len_count", "bytes") != "bytes":
                raise WireError(f"field {key}: padding/length count not supported")
            fields[int(key)] = (f["data_enc"] == "b", f["len_type"], f["max_len"])
        self._fields = fields

    def encode(self, mti: str, values: Mapping[str, str]) -> bytes:
        """``mti`` and fields (binary ones as hex text, as :class:`Message` holds them)."""
        numbers = sorted(int(k) for k in values)
        bitmap = 0
        secondary = bool(numbers) and numbers[-1] > 64
        if secondary:
            bitmap |= 1 << 127
        parts: list[bytes] = []
        for n in numbers:
            spec = self._fields.get(n)
            if spec is None:
                raise WireError(f"field {n} is not in the dialect")
            binary, len_type, max_len = spec
            text = values[str(n)]
            data = bytes.fromhex(text) if binary else text.encode("ascii")
            size = len(data)
            if len_type == 0:
                if size != max_len:
                    raise WireError(f"field {n}: {size} bytes, needs {max_len}")
            elif size > max_len:
                raise WireError(f"field {n}: {size} bytes, at most {max_len}")
            else:
                parts.append(str(size).rjust(len_type, "0").encode("ascii"))
            parts.append(data)
            bitmap |= 1 << ((128 if secondary else 64) - n)
        raw_bitmap = bitmap.to_bytes(16 if secondary else 8, "big")
        return mti.encode("ascii") + raw_bitmap + b"".join(parts)

    def peek(self, raw: bytes, wanted: Iterable[str]) -> tuple[str, dict[str, str]]:
        """The MTI and the ``wanted`` fields present in ``raw`` (binary ones as hex)."""
        want = {int(w) for w in wanted}
        last = max(want) if want else 0
        try:
            mti = raw[:4].decode("ascii")
            bitmap = int.from_bytes(raw[4:12], "big")
            pos, width = 12, 64
            if bitmap >> 63:
                bitmap = (bitmap << 64) | int.from_bytes(raw[12:20], "big")
                pos, width = 20, 128
            out: dict[str, str] = {}
            for n in range(2, min(last, width) + 1):
                if not (bitmap >> (width - n)) & 1:
                    continue
                binary, len_type, max_len = self._fields[n]
                if len_type:
                    size = int(raw[pos : pos + len_type])
                    pos += len_type
                else:
                    size = max_len
                chunk = raw[pos : pos + size]
                if len(chunk) != size:
                    raise WireError(f"field {n} is truncated")
                pos += size
                if n in want:
                    out[str(n)] = chunk.hex().upper() if binary else chunk.decode("ascii")
        except (ValueError, KeyError, UnicodeDecodeError) as exc:
            raise WireError(f"undecodable answer ({type(exc).__name__})") from None
        if len(raw) < 12 or not mti.isdigit():
            raise WireError("undecodable answer (no MTI/bitmap)")
        return mti, out
