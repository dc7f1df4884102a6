"""Mutations of valid messages for the live fuzzer (``loadtest fuzz-live``): pure functions of
bytes and a ``random.Random``, so a seed replays a run.

Framed protocols (ISO 8583 to terminals and issuers, the HSM): a 2-byte big-endian length, then
the payload (SPEC "Framing"). :func:`framed_case` mutates the payload (bit flips, truncation,
a duplicated slice, random bytes or digits over a slice, two messages spliced, oversized) and/or
the frame (a length that lies either way, zero length, several frames back to back).

HTTP (QR and admin APIs): :func:`http_case` mutates a valid request's JSON body (a member set
to another type, a huge number or string, deep nesting, a duplicated member), its head (a
header duplicated, a Content-Length that lies, a head past the size limit, a bad method,
version or path, chunked garbage) or the request's bytes as a whole.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Mutator = Callable[[bytes, random.Random], bytes]


def bit_flips(data: bytes, rnd: random.Random) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    for _ in range(rnd.randint(1, 8)):
        i = rnd.randrange(len(out))
        out[i] ^= 1 << rnd.randrange(8)
    return bytes(out)


def truncate(data: bytes, rnd: random.Random) -> bytes:
    return data[: rnd.randrange(len(data))] if data else data


def duplicate_slice(data: bytes, rnd: random.Random) -> bytes:
    """A slice copied to another place: a field that appears twice, or a repeated element."""
    if len(data) < 2:
        return data + data
    start = rnd.randrange(len(data))
    end = min(len(data), start + rnd.randint(1, 64))
    at = rnd.randrange(len(data) + 1)
    return data[:at] + data[start:end] + data[at:]


def random_bytes(data: bytes, rnd: random.Random) -> bytes:
    if not data:
        return rnd.randbytes(rnd.randint(1, 32))
    start = rnd.randrange(len(data))
    n = rnd.randint(1, 32)
    return data[:start] + rnd.randbytes(n) + data[start + n :]


def random_digits(data: bytes, rnd: random.Random) -> bytes:
    """Digits over a slice: a numeric field's length or value that still looks plausible."""
    if not data:
        return data
    start = rnd.randrange(len(data))
    n = rnd.randint(1, 20)
    digits = "".join(rnd.choice("0123456789") for _ in range(n)).encode()
    return data[:start] + digits + data[start + n :]


def oversized(data: bytes, rnd: random.Random) -> bytes:
    """Grown past the listeners' 8 KiB frame limit (up to the 2-byte length's 65,535)."""
    return data + rnd.randbytes(rnd.randint(8193, 65_535 - len(data))) if len(data) < 8000 else data


PAYLOAD_MUTATORS: tuple[Mutator, ...] = (
    bit_flips,
    truncate,
    duplicate_slice,
    random_bytes,
    random_digits,
)


def mutate(data: bytes, rnd: random.Random, seeds: Sequence[bytes] = ()) -> bytes:
    """One to three payload mutations in a row, or two seeds spliced."""
    if seeds and rnd.random() < 0.1:
        other = rnd.choice(seeds)
        return data[: rnd.randrange(len(data) + 1)] + other[rnd.randrange(len(other) + 1) :]
    for _ in range(rnd.randint(1, 3)):
        data = rnd.choice(PAYLOAD_MUTATORS)(data, rnd)
    return data


TPDU = bytes.fromhex("6000000000")
"""The 5-byte TPDU a ``binary2-tpdu`` frame carries before its message."""


def frame(payload: bytes, length: int | None = None, framing: str = "binary2") -> bytes:
    """``payload`` with its length header (``length``: the one to state, maybe a lie):
    ``binary2`` 2 bytes big-endian, ``ascii4`` 4 ASCII digits; ``binary2-tpdu`` is ``binary2``
    around a payload that begins with its TPDU (see :func:`framed_case`)."""
    n = len(payload) if length is None else length
    if framing == "ascii4":
        return f"{n % 10_000:04d}".encode() + payload
    return (n & 0xFFFF).to_bytes(2, "big") + payload


FRAME_KINDS = (
    "payload",
    "payload",
    "payload",
    "payload",
    "length-short",
    "length-long",
    "zero",
    "oversized",
    "pipelined",
    "valid",
)


def framed_case(
    seeds: Sequence[bytes],
    rnd: random.Random,
    fields: IsoFields | None = None,
    framing: str = "binary2",
) -> tuple[str, bytes]:
    """(kind of case, bytes to send) for a framed protocol; with ``fields``, also ISO 8583
    messages whose fields were changed and that encode (kind ``fields``). With the
    ``binary2-tpdu`` framing the TPDU is part of what is mutated."""
    tp = TPDU if framing == "binary2-tpdu" else b""

    def framed(payload: bytes, length: int | None = None) -> bytes:
        return frame(payload, length, framing)

    kind = rnd.choice(FRAME_KINDS + ("fields",) * 3 if fields is not None else FRAME_KINDS)
    if kind == "fields" and fields is not None:
        payload = fields.case(rnd)
        if payload is not None:
            return kind, framed(tp + payload)
        kind = "payload"  # the change did not encode: bytes, then
    seed = tp + ((fields.fresh_seed(rnd) if fields is not None else None) or rnd.choice(seeds))
    if kind == "valid":
        return kind, framed(seed)
    if kind == "length-short":
        return kind, framed(seed, rnd.randrange(max(1, len(seed))))
    if kind == "length-long":
        return kind, framed(seed, len(seed) + rnd.randint(1, 200))
    if kind == "zero":
        return kind, framed(b"") + framed(seed)
    if kind == "oversized":
        big = oversized(seed, rnd)
        return kind, framed(big[: 9999 if framing == "ascii4" else 65_535])
    if kind == "pipelined":
        parts = [tp + mutate(rnd.choice(seeds), rnd, seeds) for _ in range(3)]
        return kind, b"".join(framed(p) for p in parts)
    return kind, framed(mutate(seed, rnd, seeds))


class IsoFields:
    """Field-level changes to decoded ISO 8583 seeds, re-encoded by the codec (which writes
    what it is given where the length fits, so the switch's own checks meet them): a field's
    content replaced (digits, letters, printable, any byte), doubled, a field added or dropped,
    edge values (amounts, currencies, expiry, a PAN failing Luhn, an unknown terminal), another
    MTI."""

    EDGES: Mapping[str, tuple[str, ...]] = {
        "2": ("4761730000000012", "0000000000000", "9" * 19),
        "3": ("990000", "310000", "200000", "000099"),
        "4": ("000000000000", "999999999999", "000000000001"),
        "7": ("1332256161", "0000000000", "1231235959"),
        "14": ("0000", "9913", "2413"),
        "22": ("999", "000", "071", "051"),
        "41": ("ZZZZZZZZ", "T000000\u00e9", "        "),
        "49": ("000", "999", "963", "840"),
        "52": ("0" * 16, "F" * 16),
        "53": ("F" * 20, "0" * 20),
        "55": ("9F26", "9F2608", "FFFF" * 30, "9F02060000000001009F2608" + "00" * 8),
        "90": ("0" * 42, "0200" + "9" * 38),
    }
    MTIS = ("0100", "0200", "0220", "0400", "0420", "0800", "0210", "0810", "9999", "0120")
    CHARSETS = (
        "0123456789",
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
        "".join(chr(c) for c in range(32, 127)),
        "".join(chr(c) for c in range(256)),
    )

    def __init__(self, codec: Any, spec: Mapping[str, Mapping[str, Any]], seeds: Sequence[bytes]):
        self.codec = codec
        self.spec = spec
        self.messages = []
        for seed in seeds:
            try:
                self.messages.append(codec.decode(seed))
            except Exception:  # a seed the codec cannot read is no seed here
                continue

    @staticmethod
    def fresh(fields: dict[str, str], rnd: random.Random) -> dict[str, str]:
        """A new STAN and card number in the seed's range: else the switch answers a repeat
        from its duplicate window, or a card's velocity limit, and no change gets further."""
        from loadtest.mix import fresh_pan

        if "11" in fields:
            fields["11"] = f"{rnd.randrange(1, 1_000_000):06d}"
        if "35" in fields and "=" in fields["35"]:
            pan, rest = fields["35"].split("=", 1)
            fields["35"] = f"{fresh_pan(pan[:7], rnd, len(pan))}={rest}"
        if "2" in fields and len(fields["2"]) >= 13:
            fields["2"] = fresh_pan(fields["2"][:7], rnd, len(fields["2"]))
        return fields

    def fresh_seed(self, rnd: random.Random) -> bytes | None:
        """A seed with a new STAN and card number (see :meth:`fresh`), encoded."""
        from protocols.message import Message

        if not self.messages:
            return None
        msg = rnd.choice(self.messages)
        try:
            data: bytes = self.codec.encode(Message(msg.mti, self.fresh(dict(msg.fields), rnd)))
        except Exception:
            return None
        return data

    def case(self, rnd: random.Random) -> bytes | None:
        from protocols.message import Message

        if not self.messages:
            return None
        msg = rnd.choice(self.messages)
        fields = self.fresh(dict(msg.fields), rnd)
        mti = msg.mti
        op = rnd.randrange(6)
        present = [k for k in fields if k.isdigit()]
        if op == 0 and present:
            k = rnd.choice(present)
            chars = rnd.choice(self.CHARSETS)
            fields[k] = "".join(rnd.choice(chars) for _ in fields[k])
        elif op == 1 and present:
            k = rnd.choice(present)
            fields[k] = fields[k] * 2
        elif op == 2:
            numbers = [n for n in self.spec if n.isdigit() and n not in fields and n not in "01"]
            k = rnd.choice(numbers)
            size = int(self.spec[k].get("max_len", 8))
            if int(self.spec[k].get("len_type", 0)):
                size = rnd.randint(0, size)
            fields[k] = "".join(rnd.choice("0123456789") for _ in range(min(size, 999)))
        elif op == 3 and present:
            del fields[rnd.choice(present)]
        elif op == 4:
            k = rnd.choice(list(self.EDGES))
            fields[k] = rnd.choice(self.EDGES[k])
        else:
            mti = rnd.choice(self.MTIS)
        try:
            data: bytes = self.codec.encode(Message(mti, fields))
        except Exception:
            return None
        return data


# -- HTTP -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpSeed:
    method: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


@dataclass
class _Request:
    method: str
    path: str
    version: str = "HTTP/1.1"
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    length: int | None = None
    """Content-Length to state; None: the body's."""
    chunked: bytes | None = None

    def encode(self) -> bytes:
        head = [f"{self.method} {self.path} {self.version}", "Host: 127.0.0.1"]
        head += [f"{k}: {v}" for k, v in self.headers]
        if self.chunked is not None:
            head.append("Transfer-Encoding: chunked")
            body = self.chunked
        else:
            if self.body or self.method in ("POST", "PUT") or self.length is not None:
                head.append(
                    f"Content-Length: {len(self.body) if self.length is None else self.length}"
                )
            body = self.body
        head.append("Connection: close")
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1", "replace") + body


_ODD_VALUES: tuple[object, ...] = (
    None,
    True,
    -1,
    0,
    10**30,
    -(10**30),
    1.5e308,
    "",
    "x" * 70_000,
    "٣٤٥",  # Arabic-Indic digits
    "\u0000",
    [],
    {},
    [1, 2, 3],
    {"a": {"b": {"c": {}}}},
)


def json_mutation(body: bytes, rnd: random.Random) -> bytes:
    """A JSON object body with one member changed, added, duplicated or nested deep."""
    try:
        doc = json.loads(body)
    except ValueError:
        return mutate(body, rnd)
    if not isinstance(doc, dict):
        return mutate(body, rnd)
    choice = rnd.randrange(5)
    if choice == 0 and doc:
        key = rnd.choice(list(doc))
        doc[key] = rnd.choice(_ODD_VALUES)
    elif choice == 1:
        doc[rnd.choice(["extra", "__proto__", "amount ", "AMOUNT", "\u00e9"])] = rnd.choice(
            _ODD_VALUES
        )
    elif choice == 2 and doc:
        # A duplicated member: JSON text only (a dict cannot hold it).
        key = rnd.choice(list(doc))
        text = _dumps(doc)
        dup = _dumps({key: rnd.choice(_ODD_VALUES)})[1:-1]
        return text[:-1] + b"," + dup + b"}"
    elif choice == 3:
        depth = rnd.choice((50, 500, 5000))
        return b'{"a":' * depth + b"1" + b"}" * depth
    elif doc:
        del doc[rnd.choice(list(doc))]
    return _dumps(doc)


def _dumps(doc: object) -> bytes:
    # The stdlib, not orjson: integers past 64 bits and float("inf")-sized values are cases.
    return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")


HTTP_KINDS = (
    "json",
    "json",
    "json",
    "body-bytes",
    "header-dup",
    "length-short",
    "length-long",
    "huge-head",
    "bad-line",
    "chunked",
    "request-bytes",
    "valid",
)


def http_case(
    seeds: Sequence[HttpSeed],
    rnd: random.Random,
    fresh: Callable[[random.Random], HttpSeed] | None = None,
) -> tuple[str, bytes]:
    """(kind of case, bytes to send) for an HTTP API; ``fresh`` makes a new valid request
    (half the cases start from one: a new idempotency key and card, so a change is not
    answered from the idempotency store)."""
    seed = fresh(rnd) if fresh is not None and rnd.random() < 0.5 else rnd.choice(seeds)
    req = _Request(seed.method, seed.path, headers=list(seed.headers), body=seed.body)
    kind = rnd.choice(HTTP_KINDS)
    if kind == "json" and seed.body:
        req.body = json_mutation(seed.body, rnd)
    elif kind == "body-bytes":
        req.body = mutate(seed.body or b"{}", rnd)
    elif kind == "header-dup" and req.headers:
        name, value = rnd.choice(req.headers)
        req.headers.append((name, mutate(value.encode(), rnd).decode("latin-1")))
        req.headers.append(("Content-Length", str(rnd.randint(0, 100))))
    elif kind == "length-short":
        req.length = rnd.randrange(max(1, len(req.body)))
    elif kind == "length-long":
        req.length = len(req.body) + rnd.randint(1, 10_000)
    elif kind == "huge-head":
        req.headers.append(("X-Filler", "a" * rnd.choice((17_000, 70_000))))
    elif kind == "bad-line":
        part = rnd.randrange(3)
        if part == 0:
            req.method = rnd.choice(["GE T", "", "DELETE", "PATCH", "\x00GET", "A" * 300])
        elif part == 1:
            junk = rnd.choice(["/%", "/%00", "/..%2f..%2fetc/passwd", "/" + "a" * 10_000, "*"])
            req.path = seed.path + junk if rnd.random() < 0.5 else junk
        else:
            req.version = rnd.choice(["HTTP/9.9", "HTTP/1", "", "HTTP/1.1 extra"])
    elif kind == "chunked":
        size = rnd.choice(["ZZ", "FFFFFFFF", "-1", "5", "0"])
        req.chunked = f"{size}\r\n".encode() + mutate(seed.body or b"{}", rnd) + b"\r\n"
    elif kind == "request-bytes":
        return kind, mutate(req.encode(), rnd)
    return kind, req.encode()
