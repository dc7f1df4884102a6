"""Two-sided protocol errors (after h11): what a peer sent wrong, and our own bugs.

Errors never carry raw message bytes or a PAN: the text names the field and the reason only.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base of every error raised by :mod:`protocols`."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something wrong.

    ``field`` names the offending data element (``None`` when it is the message as a whole),
    ``rc`` is the ISO 8583 response code to answer with, ``reason`` is safe to log.
    """

    def __init__(self, reason: str, *, field: str | None = None, rc: str = "30") -> None:
        super().__init__(reason if field is None else f"field {field}: {reason}")
        self.reason = reason
        self.field = field
        self.rc = rc


class LocalProtocolError(ProtocolError):
    """We tried to build something invalid: a bug on our side, never the peer's fault."""


class FramingError(RemoteProtocolError):
    """The byte stream itself is broken (bad length header, oversized frame): close it."""
