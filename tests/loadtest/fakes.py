"""A scripted fake gateway on 127.0.0.1: answers each request with the next scripted code and
delay, and tallies what it answered so tests can compare the generator's tables with it."""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field

import anyio
import anyio.abc
from anyio.abc import SocketAttribute, TaskStatus

from kit.framed import FramedStream
from protocols.codec import Codec
from protocols.dialects import get_dialect
from protocols.message import Message
from protocols.mti import response_mti

CODEC = Codec(get_dialect("terminal"))
ECHO = ("2", "3", "4", "7", "11", "12", "13", "41", "42", "49")


@dataclass(frozen=True)
class Step:
    """How to answer one request: a code, a delay, or ``drop`` (no answer) / ``garbage``."""

    rc: str = "00"
    delay: float = 0.0
    drop: bool = False
    garbage: bool = False


@dataclass
class FakeGateway:
    script: list[Step]
    """Answers cycle through the script, one step per request received (all connections)."""
    port: int = 0
    received: int = 0
    answered: Counter[str] = field(default_factory=Counter)
    """Response code -> answers sent."""
    by_mti: Counter[str] = field(default_factory=Counter)
    dropped: int = 0
    garbled: int = 0
    arrivals: list[float] = field(default_factory=list)
    """anyio.current_time() of each request received."""
    requests: list[Message] = field(default_factory=list)
    keep: bool = False
    """Keep every decoded request in ``requests`` (for field checks)."""

    async def serve(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(SocketAttribute.local_port)
        async with listener:
            task_status.started(self.port)
            await listener.serve(self._connection)

    async def _connection(self, stream: anyio.abc.ByteStream) -> None:
        framed = FramedStream(stream, max_size=8192, partial_timeout=5.0)
        try:
            async with anyio.create_task_group() as tg:
                while True:
                    try:
                        frame = await framed.receive_frame()
                    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                        break
                    msg = CODEC.decode(frame)
                    step = self.script[self.received % len(self.script)]
                    self.received += 1
                    self.arrivals.append(anyio.current_time())
                    self.by_mti[msg.mti] += 1
                    if self.keep:
                        self.requests.append(msg)
                    if step.drop:
                        self.dropped += 1
                        continue
                    if step.delay:
                        tg.start_soon(self._answer_later, framed, msg, step)
                    else:
                        await self._answer(framed, msg, step)
                tg.cancel_scope.cancel()
        finally:
            await framed.aclose()

    async def _answer_later(self, framed: FramedStream, msg: Message, step: Step) -> None:
        await anyio.sleep(step.delay)
        await self._answer(framed, msg, step)

    async def _answer(self, framed: FramedStream, msg: Message, step: Step) -> None:
        if step.garbage:
            self.garbled += 1
            await framed.send_frame(b"\x00\x01garbage")
            return
        fields = {k: msg.fields[k] for k in ECHO if k in msg.fields}
        fields["39"] = step.rc
        self.answered[step.rc] += 1
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            await framed.send_frame(CODEC.encode(Message(response_mti(msg.mti), fields)))
