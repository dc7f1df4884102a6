"""Requests the issuer simulator cannot read are answered or dropped, never a traceback in its
log (found by ``loadtest fuzz-live``: an amount with a control byte in it was read with int()
and the connection died with a traceback)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import structlog

from protocols.message import Message
from tests.helpers import CODEC, demo_dataset, issuer_server

PAN = "5413339000000002"  # beta's synthetic range (alpha wants a link MAC)


def _purchase(amount: str = "000000001250") -> bytes:
    now = dt.datetime.now(dt.UTC)
    fields = {
        "3": "000000",
        "4": "000000001250",
        "7": now.strftime("%m%d%H%M%S"),
        "11": "000123",
        "12": now.strftime("%H%M%S"),
        "13": now.strftime("%m%d"),
        "22": "021",
        "35": f"{PAN}=29061010000000000",
        "41": "T0000001",
        "42": "M00000000000001",
        "49": "156",
    }
    raw = CODEC.encode(Message("0200", fields))
    # The codec refuses to write a bad amount: put it in the bytes, as a peer would.
    return raw.replace(b"000000001250", amount.encode("latin-1"), 1)


@pytest.mark.parametrize("amount", ["0000000\x103094", "0000000012 0", "-00000001250"])
def test_a_malformed_amount_is_answered_30_without_it(pki_dir: Path, amount: str) -> None:
    server = issuer_server("beta", demo_dataset(), pki_dir)
    with structlog.testing.capture_logs() as logs:
        served = server.serve_frame(_purchase(amount))
    assert served is not None
    answer, _ = served
    assert answer is not None
    assert answer.mti == "0210"
    assert answer.fields["39"] == "30"
    assert "4" not in answer.fields
    assert answer.fields["11"] == "000123"
    CODEC.encode(answer)  # it encodes: it can be sent
    assert not [e for e in logs if e["log_level"] in ("error", "critical")]


def test_a_response_sent_in_gets_no_answer_and_nothing_logged_of_it(pki_dir: Path) -> None:
    """A response-class MTI (no response of its own) is kept as an answer, never answered,
    and its content (a card number) is not logged."""
    server = issuer_server("beta", demo_dataset(), pki_dir)
    raw = CODEC.encode(Message("0210", {"11": "000001", "39": "00", "2": PAN, "7": "1207053000"}))
    with structlog.testing.capture_logs() as logs:
        assert server.serve_frame(raw) is None
    assert not [e for e in logs if e["log_level"] in ("error", "critical")]
    assert PAN not in repr(logs)


def test_a_well_formed_purchase_is_still_approved(pki_dir: Path) -> None:
    server = issuer_server("beta", demo_dataset(), pki_dir)
    served = server.serve_frame(_purchase())
    assert served is not None
    answer, _ = served
    assert isinstance(answer, Message)
    assert answer.fields["39"] == "00"
