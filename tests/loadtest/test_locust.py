"""The locust users' request events: the session with a stub callback in this process, and the
real locust users headless for about a second in a subprocess (locust monkey-patches with gevent
on import, which must not happen inside this test process)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from gateway.edge.http import serve_asgi
from loadtest.locust_support import ResponseCodeError, TerminalSession, qr_outcome
from loadtest.mix import TxnFactory, load_data
from tests.helpers import ROOT
from tests.loadtest.fakes import FakeGateway, Step
from tests.loadtest.test_generator import qr_app

SCRIPT = [Step("00"), Step("51"), Step("00"), Step("05")]


@contextmanager
def portal() -> Iterator[BlockingPortal]:
    with start_blocking_portal("asyncio") as p:
        try:
            yield p
        finally:
            p.call(p.stop, True)  # cancel the fake servers


def serve_fake(p: BlockingPortal, script: list[Step]) -> FakeGateway:
    fake = FakeGateway(script)
    p.start_task(fake.serve)  # returns once it listens
    return fake


def session(port: int, events: list[dict[str, Any]], **kw: Any) -> TerminalSession:
    def fire(**event: Any) -> None:
        events.append(event)

    factory = TxnFactory(load_data(), rnd=random.Random(5))
    return TerminalSession("127.0.0.1", port, fire, factory, timeout=5.0, **kw)


def test_each_exchange_fires_one_event_and_declines_are_named_by_code() -> None:
    events: list[dict[str, Any]] = []
    with portal() as p:
        fake = serve_fake(p, SCRIPT)
        s = session(fake.port, events)
        codes = [s.transact("magstripe") for _ in range(4)] + [s.transact("pin_tpk")]
        s.close()
    assert codes == ["00", "51", "00", "05", "00"]
    assert [e["name"] for e in events] == ["magstripe"] * 4 + ["pin_tpk"]
    assert all(e["request_type"] == "ISO8583" and e["response_time"] > 0 for e in events)
    assert [e["exception"] is None for e in events] == [True, False, True, False, True]
    assert repr(events[1]["exception"]) == "ResponseCodeError('51')"
    assert isinstance(events[3]["exception"], ResponseCodeError)
    assert events[3]["exception"].code == "05"
    assert events[1]["context"] == {"rc": "51"}


def test_approvals_are_reversed_for_the_configured_share() -> None:
    events: list[dict[str, Any]] = []
    with portal() as p:
        fake = serve_fake(p, [Step("00")])
        fake.keep = True
        s = session(fake.port, events, reversal_share=1.0)
        s.transact("magstripe")
        s.close()
    assert [e["name"] for e in events] == ["magstripe", "reversal"]
    purchase, reversal = fake.requests
    assert reversal.mti == "0400"
    assert reversal.fields["90"][:20] == f"0200{purchase.fields['11']}{purchase.fields['7']}"


def test_no_gateway_is_reported_as_a_failed_request() -> None:
    events: list[dict[str, Any]] = []
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        s = session(sock.getsockname()[1], events)
        assert s.transact("magstripe") is None
    assert len(events) == 1
    assert isinstance(events[0]["exception"], OSError)


def test_qr_outcome() -> None:
    assert qr_outcome(200, b'{"response_code": "00"}') is None
    assert repr(qr_outcome(201, b'{"response_code": "51"}')) == "ResponseCodeError('51')"
    assert repr(qr_outcome(401, b"{}")) == "ResponseCodeError('HTTP 401')"
    assert isinstance(qr_outcome(200, b"not json"), ValueError)


RUNNER = textwrap.dedent(
    """
    import json, sys
    import gevent
    from locust.env import Environment
    from loadtest.locust_terminal import TerminalUser
    from loadtest.locust_qr import QrUser

    TerminalUser.host = f"tcp://127.0.0.1:{sys.argv[1]}"
    QrUser.host = f"http://127.0.0.1:{sys.argv[2]}"
    env = Environment(user_classes=[TerminalUser, QrUser])
    runner = env.create_local_runner()
    runner.start(2, spawn_rate=100)
    gevent.sleep(float(sys.argv[3]))
    runner.quit()
    out = {
        "requests": {f"{e.method} {e.name}": e.num_requests for e in env.stats.entries.values()},
        "failures": {f"{e.method} {e.name}": e.num_failures for e in env.stats.entries.values()},
        "errors": {},
    }
    for e in env.stats.errors.values():  # one entry per (method, name, error): add them up
        key = e.parse_error(e.error)
        out["errors"][key] = out["errors"].get(key, 0) + e.occurrences
    print(json.dumps(out))
    """
)


@pytest.mark.slow
def test_locust_users_run_headless_and_count_failures_by_code() -> None:
    with portal() as p:
        fake = serve_fake(p, SCRIPT)
        qr_port = p.start_task(serve_asgi, qr_app(), "127.0.0.1", 0)[1]
        result = subprocess.run(
            [sys.executable, "-c", RUNNER, str(fake.port), str(qr_port), "0.6"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
            check=False,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    requests, failures, errors = out["requests"], out["failures"], out["errors"]
    terminal = sum(n for k, n in requests.items() if k.startswith("ISO8583"))
    assert terminal > 0
    assert requests["POST qr payment"] > 0
    # Half the scripted answers are declines (51, 05), each failure named by its code.
    declines = fake.answered["51"] + fake.answered["05"]
    assert sum(n for k, n in failures.items() if k.startswith("ISO8583")) == pytest.approx(
        declines, abs=2
    )
    assert errors.get("ResponseCodeError('51')", 0) == pytest.approx(fake.answered["51"], abs=2)
    assert errors.get("ResponseCodeError('05')", 0) > 0
    # The fake QR API declines odd amounts with 61.
    assert 0 < failures["POST qr payment"] < requests["POST qr payment"]
    assert errors["ResponseCodeError('61')"] == failures["POST qr payment"]
