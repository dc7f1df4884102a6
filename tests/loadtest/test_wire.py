"""The lean codec's memoised paths against its plain ones and the real codec (bytes, fields and
errors), and the generator's connections on each backend: bad framing, answers split over
reads, what is outstanding when the run ends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.abc import SocketAttribute
from hypothesis import given, settings
from hypothesis import strategies as st

from loadtest.generator import LoadConfig, LoadGenerator
from loadtest.wire import LeanCodec, WireError
from protocols.codec import Codec
from protocols.dialects import get_dialect
from protocols.framing import Framer, encode_frame
from protocols.message import Message
from protocols.mti import response_mti

SPEC = get_dialect("terminal")
CODEC = Codec(SPEC)
LEAN = LeanCodec(SPEC)
NUMBERS = [2, 3, 4, 7, 11, 12, 13, 14, 22, 23, 35, 37, 38, 39, 41, 42, 48, 49, 52, 53, 54, 55,
           64, 70, 90, 95, 128]  # fmt: skip


@st.composite
def field_values(draw: st.DrawFn) -> dict[str, str]:
    chosen = draw(st.lists(st.sampled_from(NUMBERS), unique=True, max_size=12))
    out: dict[str, str] = {}
    for n in draw(st.permutations(chosen)):
        spec = SPEC[str(n)]
        size = (
            spec["max_len"]
            if not spec["len_type"]
            else draw(st.integers(0, min(30, spec["max_len"])))
        )
        if spec["data_enc"] == "b":
            out[str(n)] = draw(st.binary(min_size=size, max_size=size)).hex().upper()
        else:
            out[str(n)] = draw(st.text(alphabet="0123456789AZ =", min_size=size, max_size=size))
    return out


def outcome(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:
        return (type(exc), str(exc))


@settings(max_examples=300)
@given(field_values(), st.sampled_from(["0200", "0210", "0400", "0800"]))
def test_encode_equals_the_plain_path_and_the_codec(values: dict[str, str], mti: str) -> None:
    raw = LEAN.encode(mti, values)
    assert raw == LEAN._encode_exact(mti, values)
    assert LEAN.encode(mti, values) == raw  # second time from the memo
    assert raw == CODEC.encode(Message(mti, values))


BAD_VALUES = st.sampled_from([
    {"4": "12"}, {"2": "1" * 25}, {"1": "x"}, {"65": "1"}, {"52": "ZZ" * 8}, {"52": "AB CD" * 3},
    {"07": "0101010101"}, {"x": "1"}, {"41": "T\u00e900001"}, {"55": "ABC"}, {},
])  # fmt: skip


@given(BAD_VALUES, field_values())
def test_encode_errors_are_the_plain_paths(bad: dict[str, str], values: dict[str, str]) -> None:
    merged = {**values, **bad}
    assert outcome(LEAN.encode, "0200", merged) == outcome(LEAN._encode_exact, "0200", merged)
    assert outcome(LEAN.encode, "0200", merged) == outcome(LEAN._encode_exact, "0200", merged)


WANTED = st.lists(st.sampled_from(["11", "39", "2", "35", "55", "64", "90", "128"]), max_size=4)


@settings(max_examples=300)
@given(field_values(), WANTED, st.data())
def test_peek_equals_the_plain_path(values: dict[str, str], wanted: list[str], data: Any) -> None:
    raw = LEAN.encode("0210", values)
    want = tuple(wanted)
    expected = LEAN._peek_exact(raw, want)
    assert LEAN.peek(raw, want) == expected
    assert LEAN.peek(raw, want) == expected
    assert expected[1] == {k: values[k] for k in sorted(values, key=int) if k in want}
    # Damaged answers: truncated, a byte changed; same answer or the same error.
    cut = data.draw(st.integers(0, len(raw)))
    assert outcome(LEAN.peek, raw[:cut], want) == outcome(LEAN._peek_exact, raw[:cut], want)
    if raw:
        at = data.draw(st.integers(0, len(raw) - 1))
        byte = data.draw(st.integers(0, 255))
        bent = raw[:at] + bytes([byte]) + raw[at + 1 :]
        assert outcome(LEAN.peek, bent, want) == outcome(LEAN._peek_exact, bent, want)


def test_peek_odd_names_and_lengths_take_the_plain_path() -> None:
    raw = LEAN.encode("0210", {"2": "4761739000000004", "11": "000001", "39": "00"})
    assert LEAN.peek(raw, ("011", "39")) == LEAN._peek_exact(raw, ("011", "39"))
    spaced = raw.replace(b"16476173", b" 9476173", 1)  # int() reads " 9"; the memo does not
    assert outcome(LEAN.peek, spaced, ("11",)) == outcome(LEAN._peek_exact, spaced, ("11",))
    with pytest.raises(WireError):
        LEAN.peek(b"02", ("11",))


# -- the generator's connections ----------------------------------------------------------


@asynccontextmanager
async def scripted_peer(mode: str) -> AsyncIterator[int]:
    """A peer that answers ``00`` byte by byte (``slow``), or sends an oversized header after
    its first answer (``oversize``), or never answers (``mute``)."""

    async def handle(stream: anyio.abc.ByteStream) -> None:
        framer = Framer()
        answered = 0
        try:
            async with stream:
                while True:
                    framer.feed(await stream.receive())
                    while (frame := framer.next_frame()) is not None:
                        if mode == "mute":
                            continue
                        msg = CODEC.decode(frame)
                        fields = {"11": msg.fields["11"], "39": "00"}
                        out = encode_frame(CODEC.encode(Message(response_mti(msg.mti), fields)))
                        if mode == "oversize" and answered:
                            await stream.send(b"\xff\xff")
                            return
                        answered += 1
                        if mode == "slow":
                            for i in range(len(out)):
                                await stream.send(out[i : i + 1])
                        else:
                            await stream.send(out)
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            pass

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        yield listener.extra(SocketAttribute.local_port)
        tg.cancel_scope.cancel()


def config(port: int, **kw: Any) -> LoadConfig:
    base: dict[str, Any] = {"port": port, "connections": 1, "in_flight": 4, "duration": 0.2,
                            "warmup": 0.0, "timeout": 5.0, "drain": 0.2, "seed": 3}  # fmt: skip
    return LoadConfig(**{**base, **kw})


@pytest.mark.anyio
async def test_answers_split_over_reads_are_all_counted() -> None:
    async with scripted_peer("slow") as port:
        with anyio.fail_after(10):
            stats = await LoadGenerator(config(port, in_flight=2)).run()
    assert stats.count > 0
    assert stats.errors == {}
    assert stats.codes == {"00": stats.count}


@pytest.mark.anyio
async def test_bad_framing_loses_the_connection_and_what_it_had_outstanding() -> None:
    async with scripted_peer("oversize") as port:
        with anyio.fail_after(10):
            stats = await LoadGenerator(config(port, in_flight=1)).run()
    assert stats.count == 1
    assert stats.errors["connection lost"] == 1
    assert set(stats.errors) <= {"connection lost", "not sent: no connection"}


@pytest.mark.anyio
async def test_requests_outstanding_at_the_end_are_unanswered_not_lost() -> None:
    async with scripted_peer("mute") as port:
        with anyio.fail_after(10):
            stats = await LoadGenerator(config(port, in_flight=3)).run()
    assert stats.count == 0
    assert stats.errors == {"unanswered at end": 3}
