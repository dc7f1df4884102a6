"""Bad input on the terminal path (issue 12): every decodable request gets an answer the terminal
can decode and match, and the peer's faults are warnings rate-limited per peer, not errors."""

from __future__ import annotations

from functools import partialmethod
from typing import Any, cast

import anyio
import pytest
from hypothesis import HealthCheck, given, settings

from gateway.edge import terminals
from gateway.flow import switch as switch_module
from gateway.flow.participants import CheckFields
from gateway.flow.switch import Switch
from gateway.metrics import Metrics
from gateway.risk.verification import QrVerification
from kit.fastio import FrameChannel
from protocols.codec import MessageFormatError, UndecodableError
from protocols.dialects import get_dialect
from protocols.fastcodec import best_codec
from protocols.message import Message
from protocols.mti import is_request, response_mti
from tests.helpers import CODEC, demo_dataset
from tests.protocols.test_fastcodec import (
    TERMINAL_FIELDS,
    TRUNCATED_3,
    corrupted,
    terminal_request,
)

PEER = "10.1.2.3:4000"


class Recorder:
    """A structlog logger that keeps (level, event, fields) instead of writing."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def _record(self, level: str, event: str, **fields: Any) -> None:
        self.lines.append((level, event, fields))

    debug = partialmethod(_record, "debug")
    info = partialmethod(_record, "info")
    warning = partialmethod(_record, "warning")
    error = partialmethod(_record, "error")
    exception = partialmethod(_record, "exception")
    critical = partialmethod(_record, "critical")

    def events(self, *levels: str) -> list[str]:
        return [event for level, event, _ in self.lines if level in levels]


class Channel:
    peer = PEER

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send_frame(self, payload: bytes) -> None:
        self.sent.append(payload)


class Answers(Switch):
    """A switch that answers every request with one canned response."""

    def __init__(self, resp: Message) -> None:
        super().__init__([], Metrics(), log_transactions=False)
        self.resp = resp

    async def handle(
        self, req: Message, raw: bytes = b"", *, qr: QrVerification | None = None
    ) -> Message | None:
        return Message(self.resp.mti, dict(self.resp.fields))


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()
    monkeypatch.setattr(terminals, "log", recorder)
    monkeypatch.setattr(switch_module, "log", recorder)
    return recorder


def server(sw: Switch | None = None) -> terminals.TerminalServer:
    sw = sw or Switch([CheckFields(demo_dataset())], Metrics(), log_transactions=False)
    codec = best_codec(get_dialect("terminal"))
    return terminals.TerminalServer(
        sw, codec, sw.metrics, max_frame=8192, partial_timeout=1.0, max_in_flight=1
    )


async def answers(srv: terminals.TerminalServer, *frames: bytes) -> list[Message]:
    """What ``srv`` sends back for ``frames``, decoded with the reference codec."""
    channel = Channel()
    in_flight = anyio.Semaphore(1)
    for frame in frames:
        await in_flight.acquire()
        await srv._process(
            cast(FrameChannel, channel),
            frame,
            in_flight,
            PEER,
            terminals.Listener("tcp", srv.codec),
        )
    return [CODEC.decode(data) for data in channel.sent]


def rejected(srv: terminals.TerminalServer, reason: str) -> float:
    value: float = srv.metrics.rejected.labels(reason)._value.get()
    return value


@pytest.mark.anyio
async def test_format_errors_answer_30_with_what_decoded_and_warn_once(logs: Recorder) -> None:
    srv = server()
    got = await answers(
        srv,
        TRUNCATED_3,
        terminal_request("000000", b"00\xe9000"),  # non-ASCII in field 3
        terminal_request("T0000001", b"T000\xff001"),  # non-ASCII in field 41
    )
    assert [(m.mti, m.fields) for m in got] == [
        ("0210", {"39": "30"}),
        ("0210", {"39": "30"}),
        ("0210", {**TERMINAL_FIELDS, "39": "30"}),  # 7 and 11 echoed: the terminal can match
    ]
    assert logs.events("error", "exception", "critical") == []
    assert logs.events("warning") == ["terminal_format_error"]  # one line per peer per interval
    assert rejected(srv, "format") == 3


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fields", "answer", "level", "reason"),
    [
        # A field echoed from the request: the peer's data. Its answer keeps its code.
        (
            {"3": "000000", "11": "000123", "41": "T\u00e9000001", "39": "05"},
            {"3": "000000", "11": "000123", "39": "05"},
            "warning",
            "unencodable",
        ),
        # A field of ours (37 too long): our bug, an error and 96.
        (
            {"11": "000123", "37": "RRN-FAR-TOO-LONG", "41": "T0000001", "39": "00"},
            {"11": "000123", "41": "T0000001", "39": "96"},
            "error",
            None,
        ),
    ],
    ids=["peer-data", "our-bug"],
)
async def test_an_unencodable_answer_keeps_the_echo_that_encodes(
    logs: Recorder,
    fields: dict[str, str],
    answer: dict[str, str],
    level: str,
    reason: str | None,
) -> None:
    srv = server(Answers(Message("0210", fields)))
    got = await answers(srv, terminal_request(), terminal_request())
    assert [(m.mti, m.fields) for m in got] == [("0210", answer)] * 2
    failures = [(lvl, event) for lvl, event, _ in logs.lines if lvl != "info"]
    if reason is None:
        assert failures == [("error", "response_encode_failed")] * 2
    else:
        assert failures == [("warning", "terminal_answer_unencodable")]
        assert rejected(srv, reason) == 2


@pytest.mark.anyio
async def test_responses_from_a_terminal_are_warned_once_and_not_answered(logs: Recorder) -> None:
    srv = server()
    response = CODEC.encode(Message("0210", {"11": "000123", "39": "00"}))
    bad_response = terminal_request("0200", b"0210")[:-2]  # a 0210 with a short field 41
    assert await answers(srv, response, response, bad_response) == []
    assert logs.events("warning") == ["terminal_sent_response"]
    assert rejected(srv, "not_request") == 3


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(corrupted())
def test_every_decodable_request_gets_a_decodable_answer_with_39(
    anyio_backend: tuple[str, dict[str, Any]], logs: Recorder, raw: bytes
) -> None:
    logs.lines.clear()  # the fixture lives across examples
    srv = server()
    backend, options = anyio_backend
    got = anyio.run(answers, srv, raw, backend=backend, backend_options=options)
    try:
        mti = best_codec(get_dialect("terminal")).decode(raw).mti
    except UndecodableError:
        assert got == []
        return
    except MessageFormatError as exc:  # the MTI was read
        mti = exc.mti
    if is_request(mti):
        assert [m.mti for m in got] == [response_mti(mti)]
        assert "39" in got[0].fields
    else:
        assert got == []
    assert logs.events("error", "exception", "critical") == []
