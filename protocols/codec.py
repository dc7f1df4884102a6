"""ISO 8583 codec on pyiso8583 with typed errors.

pyiso8583's ``DecodeError`` carries the raw message and the decoded fields (PAN included); it is
translated here, at the boundary, into errors that name the field and the response code only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import iso8583

from protocols.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from protocols.message import Message

# Fields that may be echoed in a format-error response: none of them is sensitive.
ECHO_SAFE = ("3", "4", "7", "11", "12", "13", "41", "42", "49")
_BITMAPS = ("t", "p", "1", "h")


class UndecodableError(RemoteProtocolError):
    """Not even an MTI could be read: nothing can be answered."""


class MessageFormatError(RemoteProtocolError):
    """The MTI was read but a field is bad or missing: answer the response MTI with ``rc``.

    ``echo`` holds the non-sensitive fields decoded before the fault, for the response (only
    those the dialect can encode: :meth:`Codec.format_echo`).
    """

    def __init__(
        self,
        reason: str,
        *,
        mti: str,
        field: str | None,
        rc: str = "30",
        echo: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(reason, field=field, rc=rc)
        self.mti = mti
        self.echo = dict(echo or {})


def _valid_mti(mti: object) -> bool:
    return isinstance(mti, str) and len(mti) == 4 and mti.isdigit()


class Codec:
    """Encode and decode one dialect. Stateless; one instance per dialect is shared."""

    __slots__ = ("header", "spec")

    def __init__(self, spec: Mapping[str, Mapping[str, Any]]) -> None:
        self.spec = spec
        self.header = b""
        """Static bytes before every message on the wire (a link's header; none here)."""

    def decode(self, data: bytes) -> Message:
        # The typed error is raised outside the ``except`` block: pyiso8583's DecodeError
        # holds the raw bytes and the decoded fields (PAN included) and must not survive as
        # the new error's ``__context__``.
        failure: ProtocolError | None = None
        try:
            doc, _ = iso8583.decode(data, self.spec)
        except iso8583.DecodeError as exc:
            partial: dict[str, str] = dict(exc.doc_dec)
            mti = partial.get("t")
            field = str(exc.field) if exc.field is not None else None
            reason = _safe_reason(exc)
            if field in _BITMAPS[:1] or not _valid_mti(mti):
                failure = UndecodableError(reason, field=field)
            else:
                assert mti is not None
                failure = MessageFormatError(
                    reason, mti=mti, field=field, echo=self.format_echo(mti, partial)
                )
        except Exception:  # any other library failure is still the peer's bad bytes
            failure = UndecodableError("message could not be decoded")
        if failure is not None:
            raise failure
        mti = doc.pop("t")
        if not _valid_mti(mti):
            raise UndecodableError("MTI is not four digits", field="t")
        for key in ("p", "1", "h"):
            doc.pop(key, None)
        return Message(mti, doc)

    def format_echo(self, mti: str, partial: Mapping[str, str]) -> dict[str, str]:
        """The ``ECHO_SAFE`` fields of a message that failed to decode which its answer can
        carry: decoded (the field at fault is left empty) and encodable under this dialect,
        or encoding the answer would fail and drop every field."""
        echo = {k: v for k in ECHO_SAFE if (v := partial.get(k))}
        return self.encodable(mti, echo)

    def encodable(self, mti: str, fields: Mapping[str, str]) -> dict[str, str]:
        """The ``fields`` that encode on their own under this dialect (``mti`` is valid)."""
        return {k: v for k, v in fields.items() if self._encodes(Message(mti, {k: v}))}

    def _encodes(self, msg: Message) -> bool:
        try:
            self.encode(msg)
        except Exception:  # pyiso8583 may raise more than EncodeError on odd input
            return False
        return True

    def encode_body(self, msg: Message) -> bytes:
        """The message without :attr:`header`: what a MAC covers (``protocols.mac``)."""
        return self.encode(msg)

    def encode(self, msg: Message) -> bytes:
        doc: dict[str, str] = dict(msg.fields)
        doc["t"] = msg.mti
        try:
            raw, _ = iso8583.encode(doc, self.spec)
        except iso8583.EncodeError as exc:
            raise LocalProtocolError(
                f"cannot encode field {exc.field}: {_safe_reason(exc)}"
            ) from None
        return bytes(raw)


def _safe_reason(exc: iso8583.DecodeError | iso8583.EncodeError) -> str:
    # pyiso8583 messages name the problem and the field, never the value; keep only that part.
    text: str = getattr(exc, "msg", "") or "invalid data"
    return text.split(":")[0].strip()
