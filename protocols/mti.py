"""MTI helpers: response MTI, message class and function (ISO 8583:1987 positions)."""

from __future__ import annotations

from protocols.errors import LocalProtocolError

AUTHORIZATION = "1"
FINANCIAL = "2"
REVERSAL = "4"
NETWORK = "8"


def mti_class(mti: str) -> str:
    """Second digit: 1 authorization, 2 financial, 4 reversal, 8 network management."""
    return mti[1]


def mti_function(mti: str) -> str:
    """Third digit: 0 request, 1 response, 2 advice, 3 advice response."""
    return mti[2]


def is_request(mti: str) -> bool:
    return mti[2] in "02"


def is_advice(mti: str) -> bool:
    return mti[2] == "2"


def response_mti(mti: str) -> str:
    """0200 -> 0210, 0420 -> 0430. Only requests and advices have a response."""
    if len(mti) != 4 or not mti.isdigit() or mti[2] not in "02":
        raise LocalProtocolError(f"MTI {mti} has no response MTI")
    return f"{mti[:2]}{int(mti[2]) + 1}{mti[3]}"
