"""The decoded ISO 8583 message: an MTI and its fields as pyiso8583 gives them (binary fields
as upper-case hex strings), keyed by field number as a string."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Message:
    mti: str
    fields: dict[str, str] = field(default_factory=dict)

    def get(self, number: str, default: str | None = None) -> str | None:
        return self.fields.get(number, default)

    def __contains__(self, number: object) -> bool:
        return number in self.fields

    def __getitem__(self, number: str) -> str:
        return self.fields[number]

    def __setitem__(self, number: str, value: str) -> None:
        self.fields[number] = value

    def __repr__(self) -> str:
        # Never print field values: they may hold a PAN, a PIN block or track data.
        return f"Message(mti={self.mti!r}, fields={sorted(self.fields, key=int)})"


@dataclass(slots=True, eq=False, repr=False)
class WireMessage(Message):
    """A message a link decoded into another form (``protocols.translate``), with the link's
    bytes it came from (static header excluded): what a MAC on it covers, since encoding the
    translated message again need not give those bytes back."""

    wire: bytes = b""
