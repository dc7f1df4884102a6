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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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


def frame(payload: bytes, length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
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


def framed_case(seeds: Sequence[bytes], rnd: random.Random) -> tuple[str, bytes]:
    """(kind of case, bytes to send) for a framed protocol."""
    kind = rnd.choice(FRAME_KINDS)
    seed = rnd.choice(seeds)
    if kind == "valid":
        return kind, frame(seed)
    if kind == "length-short":
        return kind, frame(seed, rnd.randrange(max(1, len(seed))))
    if kind == "length-long":
        return kind, frame(seed, len(seed) + rnd.randint(1, 200))
    if kind == "zero":
        return kind, frame(b"") + frame(seed)
    if kind == "oversized":
        big = oversized(seed, rnd)
        return kind, frame(big[:65_535])
    if kind == "pipelined":
        return kind, b"".join(frame(mutate(rnd.choice(seeds), rnd, seeds)) for _ in range(3))
    return kind, frame(mutate(seed, rnd, seeds))


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


def http_case(seeds: Sequence[HttpSeed], rnd: random.Random) -> tuple[str, bytes]:
    """(kind of case, bytes to send) for an HTTP API."""
    seed = rnd.choice(seeds)
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
