"""The issuer circuit breaker (pure state machine) and the stand-in helpers."""

from __future__ import annotations

import pytest

from gateway.flow.journal_stage import reversal_advice
from gateway.flow.standin import pvv_from_track2
from gateway.upstream.breaker import CircuitBreaker
from protocols.message import Message


def test_opens_after_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(3, 10.0)
    breaker.failure(0.0)
    breaker.failure(0.1)
    breaker.success()  # not consecutive any more
    breaker.failure(0.2)
    breaker.failure(0.3)
    assert breaker.state(0.3) == "closed"
    breaker.failure(0.4)
    assert breaker.state(0.5) == "open"
    assert not breaker.allow(5.0)
    assert breaker.opens == 1


def test_half_open_lets_one_probe_through() -> None:
    breaker = CircuitBreaker(1, 2.0)
    breaker.failure(0.0)
    assert breaker.state(2.5) == "half_open"
    assert breaker.allow(2.5)
    assert not breaker.allow(2.6)  # one probe at a time
    breaker.failure(2.7)  # the probe failed: open again for a full cool-down
    assert breaker.state(3.0) == "open"
    assert breaker.opens == 2
    assert breaker.allow(4.8)
    breaker.success()
    assert breaker.state(4.9) == "closed"
    assert breaker.allow(4.9)


def test_released_probe_can_be_taken_again() -> None:
    breaker = CircuitBreaker(1, 1.0)
    breaker.failure(0.0)
    assert breaker.allow(1.5)
    breaker.release_probe()  # the probe ended in a local decline: it told nothing
    assert breaker.allow(1.6)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="threshold"):
        CircuitBreaker(0, 1.0)


@pytest.mark.parametrize(
    ("track2", "expected"),
    [
        ("4761730000000011=28121011234500000", ("1", "2345")),
        ("4761730000000011D2812101612340000", ("6", "1234")),
        ("4761730000000011=2812101", None),  # no discretionary data
        ("4761730000000011=28121011A3400000", None),
        ("4761730000000011", None),
        (None, None),
    ],
)
def test_pvv_from_track2(track2: str | None, expected: tuple[str, str] | None) -> None:
    assert pvv_from_track2(track2) == expected


def test_reversal_advice_names_what_was_sent() -> None:
    import datetime as dt

    sent = Message(
        "0200",
        {
            "3": "000000",
            "4": "000000001000",
            "7": "0314120000",
            "11": "000042",
            "35": "4761730000000011=2812",
            "52": "0123456789ABCDEF",
            "64": "00" * 8,
            "37": "ABCDEF123456",
            "41": "T0000001",
        },
    )
    now = dt.datetime(2026, 3, 14, 12, 0, 5, tzinfo=dt.UTC)
    advice = reversal_advice(sent, stan="000099", now=now, acquirer_id="1", pan="4761730000000011")
    assert advice.mti == "0420"
    assert advice.fields["90"] == "0200000042031412000000000000001" + "0" * 11
    assert (advice.fields["11"], advice.fields["7"]) == ("000099", "0314120005")
    assert advice.fields["2"] == "4761730000000011"
    for never in ("35", "52", "64"):
        assert never not in advice.fields
    # A reversal that is repeated as an advice keeps its own field 90.
    repeat = reversal_advice(
        Message("0400", {**advice.fields, "11": "000100"}), stan="000101", now=now, acquirer_id="1"
    )
    assert repeat.fields["90"] == advice.fields["90"]
