"""Per-peer rate limiting of warnings about bad input (a hostile peer cannot flood the logs)."""

from __future__ import annotations

from typing import Any

import pytest

from kit.logs import PeerWarnings, peer_host


class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("127.0.0.1:5000", "127.0.0.1"),
        ("[::1]:443", "::1"),
        ("?", "?"),
        ("unix-socket", "unix-socket"),
    ],
)
def test_peer_host_drops_the_port(peer: str, host: str) -> None:
    assert peer_host(peer) == host


def test_one_line_per_address_and_event_per_interval_with_suppressed_count() -> None:
    log, clock = _Log(), _Clock()
    warn = PeerWarnings(log, interval=10.0, clock=clock)
    assert warn.warning("bad_frame", "10.1.1.1:1000", reason="r1")
    # Another connection from the same address is the same peer.
    assert not warn.warning("bad_frame", "10.1.1.1:1001", reason="r2")
    assert not warn.warning("bad_frame", "10.1.1.1:1002", reason="r3")
    # Another event, or another address, has its own allowance.
    assert warn.warning("other", "10.1.1.1:1000")
    assert warn.warning("bad_frame", "10.2.2.2:1000")
    clock.now += 10.0
    assert warn.warning("bad_frame", "10.1.1.1:1003", reason="r4")
    assert log.lines == [
        ("bad_frame", {"peer": "10.1.1.1:1000", "reason": "r1"}),
        ("other", {"peer": "10.1.1.1:1000"}),
        ("bad_frame", {"peer": "10.2.2.2:1000"}),
        ("bad_frame", {"peer": "10.1.1.1:1003", "reason": "r4", "suppressed": 2}),
    ]


def test_remembers_a_bounded_number_of_peers() -> None:
    log, clock = _Log(), _Clock()
    warn = PeerWarnings(log, interval=10.0, max_keys=3, clock=clock)
    for i in range(10):
        assert warn.warning("bad", f"10.0.0.{i}:1")
    assert len(warn._seen) == 3
    # The oldest were forgotten (they may log again), the newest are still held back.
    assert warn.warning("bad", "10.0.0.0:1")
    assert not warn.warning("bad", "10.0.0.9:1")
