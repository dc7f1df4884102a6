"""Issue 12 over real sockets: malformed terminal requests are answered 30 with the fields that
decoded echoed, logged as one rate-limited warning, never an error or a traceback."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest
import structlog

from kit.logs import configure
from protocols.message import Message
from tests.helpers import CODEC, running_stack, terminal
from tests.protocols.test_fastcodec import TERMINAL_FIELDS, TRUNCATED_3, terminal_request

pytestmark = pytest.mark.anyio

# Issue 12 item 4: an 0800 with only field 70 (secondary bitmap, bit 70).
BARE_0800 = b"0800" + bytes.fromhex("80000000000000000400000000000000") + b"301"
LETTERS = {"7": "ABCDEFGHIJ", "11": "XXXXXX", "41": "T0000001", "70": "301"}


async def test_malformed_requests_answer_30_without_error_logs(pki_dir: Path) -> None:
    cases = [
        (TRUNCATED_3, ("0210", {"39": "30"})),
        (terminal_request("000000", b"00\xe9000"), ("0210", {"39": "30"})),  # non-ASCII in 3
        (terminal_request("T0000001", b"T000\xff001"), ("0210", {**TERMINAL_FIELDS, "39": "30"})),
        (BARE_0800, ("0810", {"70": "301", "39": "30"})),
        (CODEC.encode(Message("0800", LETTERS)), ("0810", {**LETTERS, "39": "30"})),
    ]
    out = io.BytesIO()
    configure("info", stream=out)
    structlog.configure(cache_logger_on_first_use=False)  # other tests log elsewhere later
    got: list[Message] = []
    try:
        async with running_stack(pki_dir, hsm=False) as stack, terminal(stack.port) as term:
            for raw, _ in cases:
                await term.framed.send_frame(raw)
                got.append(await term.receive())
    finally:
        structlog.reset_defaults()
    assert [(m.mti, m.fields) for m in got] == [answer for _, answer in cases]
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [x for x in lines if x["level"] in ("error", "critical") or "exception" in x] == []
    # Three format errors from one address: one line (rate-limited), the volume in the metric.
    assert [x["event"] for x in lines if x["event"].startswith("terminal_")] == [
        "terminal_format_error"
    ]
    assert stack.gateway.metrics.rejected.labels("format")._value.get() == 3
