"""EMVCo consumer-presented QR (EMV QRCPS Consumer-Presented Mode): decode and build.

The payload is base64 of BER-TLV data objects:

* ``85`` payload format indicator, ``"CPV01"``, first;
* ``61`` application template, one or more: ``4F`` AID, ``50`` label, ``5A`` PAN or ``57`` track 2
  equivalent data, ``5F24`` expiry (YYMMDD), ``5F20`` cardholder name, ``5F34`` PAN sequence
  number, cryptogram data (``9F26`` ``9F27`` ``9F10`` ``9F36`` ...) directly or inside ``63``
  (application specific transparent template);
* ``62`` common data template, optional: data shared by every application, with ``64`` (common
  data transparent template) for cryptogram data.

The first application template is the one used; data missing from it is looked up in the common
data template. Everything that is not card identity goes into :attr:`ConsumerQr.emv`, ready to
be sent as field 55.

Errors are :class:`CpmError` subclasses (``field="qr"``, ``rc="30"``) with a stable ``code``;
messages name tags, never values. ``repr`` of a :class:`ConsumerQr` shows no card data.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar, Final

from protocols.emv import Tlv, TlvError, TlvItem, mask_pan_digits, template
from protocols.emv import decode as tlv_decode
from protocols.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "IDENTITY_TAGS",
    "MAX_PAYLOAD",
    "PAYLOAD_FORMAT",
    "ConsumerQr",
    "CpmError",
    "CpmFormatError",
    "CpmMissingError",
    "CpmVersionError",
    "build",
    "decode",
    "encode",
]

PAYLOAD_FORMAT: Final = b"CPV01"
MAX_PAYLOAD: Final = 2048  # characters of base64; a QR code holds far less
# Card identity and presentation data: reported as attributes, kept out of field 55.
IDENTITY_TAGS: Final = frozenset(
    {"4F", "50", "57", "5A", "5F20", "5F24", "5F2D", "5F50", "9F12", "9F19", "9F24", "9F25"}
)
_TRANSPARENT: Final = {"61": "63", "62": "64"}


class CpmError(RemoteProtocolError):
    """A consumer-presented QR payload that cannot be accepted."""

    code: ClassVar[str] = "qr-format"

    def __init__(self, reason: str, *, tag: str | None = None) -> None:
        super().__init__(reason if tag is None else f"tag {tag}: {reason}", field="qr", rc="30")
        self.tag = tag


class CpmFormatError(CpmError):
    """Not base64, not BER-TLV, or a value of the wrong format."""

    code = "qr-format"


class CpmMissingError(CpmError):
    """A mandatory data object (85, 61, 4F, a PAN in 5A or 57) is absent."""

    code = "qr-missing"


class CpmVersionError(CpmError):
    """Payload format indicator other than CPV01."""

    code = "qr-version"


@dataclass(frozen=True, slots=True)
class ConsumerQr:
    """A decoded consumer-presented payload (first application)."""

    aid: str  # 4F, uppercase hex
    pan: str = field(repr=False)
    expiry: str | None = field(default=None, repr=False)  # YYMM, from 5F24 or 57
    label: str | None = None
    pan_sequence: int | None = None  # 5F34
    service_code: str | None = field(default=None, repr=False)  # from 57
    cardholder_name: str | None = field(default=None, repr=False)
    track2: bytes | None = field(default=None, repr=False)  # 57 as sent
    emv: Tlv = field(default_factory=Tlv)  # cryptogram and terminal data for field 55
    tlv: Tlv = field(default_factory=Tlv, repr=False)  # the whole payload, templates decoded

    @property
    def masked_pan(self) -> str:
        return mask_pan_digits(self.pan)


# Decoding -------------------------------------------------------------------------------------


def decode(payload: str | bytes) -> ConsumerQr:
    """Validate and decode a consumer-presented payload; raise a :class:`CpmError` if bad."""
    if isinstance(payload, bytes):
        text = payload.strip()
    elif isinstance(payload, str):
        if not payload.isascii():
            raise CpmFormatError("payload is not base64")
        text = payload.strip().encode("ascii")
    else:
        raise CpmFormatError("payload must be text")
    if len(text) > MAX_PAYLOAD:
        raise CpmFormatError(f"payload longer than {MAX_PAYLOAD} characters")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise CpmFormatError("payload is not base64") from None
    try:
        tlv = tlv_decode(raw, recursive=True, field="qr")
    except TlvError as exc:
        raise CpmFormatError(f"payload is not BER-TLV: {exc.reason}") from None

    first = next(iter(tlv), None)
    if first is None or first.tag != "85":
        raise CpmMissingError("payload format indicator must come first", tag="85")
    if first.value != PAYLOAD_FORMAT:
        raise CpmVersionError("unsupported payload format indicator", tag="85")
    app = tlv.item("61")
    if app is None or app.children is None:
        raise CpmMissingError("application template missing", tag="61")
    app_tlv = app.children
    common_item = tlv.item("62")
    common = None if common_item is None else common_item.children

    def lookup(tag: str) -> bytes | None:
        value = app_tlv.get(tag)
        if value is None and common is not None:
            value = common.get(tag)
        return value

    aid = app_tlv.get("4F")
    if aid is None:
        raise CpmMissingError("AID missing from the application template", tag="4F")
    if not 5 <= len(aid) <= 16:
        raise CpmFormatError("AID must be 5 to 16 bytes", tag="4F")

    pan = service_code = track_expiry = None
    track2 = lookup("57")
    if track2 is not None:
        pan, track_expiry, service_code = _parse_track2(track2)
    pan_value = lookup("5A")
    if pan_value is not None:
        pan = _parse_pan(pan_value)
    if pan is None:
        raise CpmMissingError("neither PAN (5A) nor track 2 equivalent data (57)", tag="5A")

    # Optional in QRCPS (its own example has none): the pipeline decides whether it needs one.
    expiry_value = lookup("5F24")
    expiry = track_expiry if expiry_value is None else _parse_expiry(expiry_value)

    psn_value = lookup("5F34")
    pan_sequence = None
    if psn_value is not None:
        psn = psn_value.hex()
        if len(psn_value) != 1 or not psn.isdigit():
            raise CpmFormatError("PAN sequence number must be one BCD byte", tag="5F34")
        pan_sequence = int(psn)

    return ConsumerQr(
        aid=aid.hex().upper(),
        pan=pan,
        expiry=expiry,
        label=_text(lookup("50"), "50"),
        pan_sequence=pan_sequence,
        service_code=service_code,
        cardholder_name=_text(lookup("5F20"), "5F20"),
        track2=track2,
        emv=Tlv._trusted(_emv_items(app_tlv, common)),
        tlv=tlv,
    )


def _emv_items(app: Tlv, common: Tlv | None) -> list[TlvItem]:
    items: list[TlvItem] = []
    for container, transparent in ((app, "63"), (common, "64")):
        if container is None:
            continue
        for item in container:
            if item.tag == transparent and item.children is not None:
                items.extend(item.children)
            elif item.tag not in IDENTITY_TAGS and item.tag not in _TRANSPARENT.values():
                items.append(item)
    return items


def _text(value: bytes | None, tag: str) -> str | None:
    if value is None:
        return None
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise CpmFormatError("not valid text", tag=tag) from None
    if not text.isprintable():
        raise CpmFormatError("non-printable characters", tag=tag)
    return text


def _parse_pan(value: bytes) -> str:
    digits = value.hex().upper().rstrip("F")  # cn format: padded on the right with F
    if not (digits.isdigit() and 12 <= len(digits) <= 19):
        raise CpmFormatError("PAN must be 12 to 19 digits", tag="5A")
    return digits


def _parse_track2(value: bytes) -> tuple[str, str, str]:
    """PAN, expiry YYMM and service code of track 2 equivalent data (57)."""
    text = value.hex().upper()
    if text.endswith("F"):
        text = text[:-1]  # one nibble of padding when the digit count is odd
    pan, sep, rest = text.partition("D")
    if (
        not sep
        or not (pan.isdigit() and 12 <= len(pan) <= 19)
        or len(rest) < 7
        or not rest.isdigit()
        or not 1 <= int(rest[2:4]) <= 12
    ):
        raise CpmFormatError("malformed track 2 equivalent data", tag="57")
    return pan, rest[:4], rest[4:7]


def _parse_expiry(value: bytes) -> str:
    text = value.hex()
    if (
        len(value) != 3
        or not text.isdigit()
        or not 1 <= int(text[2:4]) <= 12
        or not 1 <= int(text[4:6]) <= 31
    ):
        raise CpmFormatError("expiry must be a YYMMDD date", tag="5F24")
    return text[:4]


# Encoding -------------------------------------------------------------------------------------


def _last_day(year: int, month: int) -> int:
    # Not calendar.monthrange: calendar imports datetime, and this package stays clock-free.
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def encode(tlv: Tlv | Iterable[TlvItem | tuple[str, bytes]]) -> str:
    """Base64 text of the BER-TLV encoding of ``tlv``."""
    data = tlv.encode() if isinstance(tlv, Tlv) else Tlv(tlv).encode()
    return base64.b64encode(data).decode("ascii")


def build(
    *,
    aid: str,
    pan: str,
    expiry: str,
    label: str | None = None,
    pan_sequence: int | None = None,
    cardholder_name: str | None = None,
    use_track2: bool = False,
    service_code: str = "201",
    emv: Tlv | Iterable[TlvItem | tuple[str, bytes]] = (),
) -> str:
    """A consumer-presented payload (wallet and simulator side).

    ``expiry`` is YYMM (5F24 gets the last day of that month) or YYMMDD. ``use_track2`` sends
    57 instead of 5A. ``emv`` (cryptogram and terminal data) goes into template 63.
    """
    if not (pan.isascii() and pan.isdigit() and 12 <= len(pan) <= 19):
        raise LocalProtocolError("PAN must be 12 to 19 digits")
    if not (expiry.isascii() and expiry.isdigit() and len(expiry) in (4, 6)):
        raise LocalProtocolError("expiry must be YYMM or YYMMDD")
    if len(expiry) == 4:
        year, month = 2000 + int(expiry[:2]), int(expiry[2:])
        if not 1 <= month <= 12:
            raise LocalProtocolError("expiry month must be 01..12")
        expiry += f"{_last_day(year, month):02d}"
    if not (len(service_code) == 3 and service_code.isdigit()):
        raise LocalProtocolError("service code must be 3 digits")
    try:
        aid_bytes = bytes.fromhex(aid)
    except ValueError:
        raise LocalProtocolError("AID must be hex") from None
    if not 5 <= len(aid_bytes) <= 16:
        raise LocalProtocolError("AID must be 5 to 16 bytes")

    items: list[TlvItem | tuple[str, bytes]] = [("4F", aid_bytes)]
    if label is not None:
        items.append(("50", label.encode("utf-8")))
    if use_track2:
        track = f"{pan}D{expiry[:4]}{service_code}"
        items.append(("57", bytes.fromhex(track + "F" * (len(track) % 2))))
    else:
        items.append(("5A", bytes.fromhex(pan + "F" * (len(pan) % 2))))
    if cardholder_name is not None:
        items.append(("5F20", cardholder_name.encode("utf-8")))
    items.append(("5F24", bytes.fromhex(expiry)))
    if pan_sequence is not None:
        if not 0 <= pan_sequence <= 99:
            raise LocalProtocolError("PAN sequence number must be 0..99")
        items.append(("5F34", bytes.fromhex(f"{pan_sequence:02d}")))
    emv_tlv = emv if isinstance(emv, Tlv) else Tlv(emv)
    if len(emv_tlv):
        items.append(template("63", emv_tlv))
    payload = encode([("85", PAYLOAD_FORMAT), template("61", items)])
    try:
        decode(payload)  # what we hand out must pass our own acceptance rules
    except CpmError as exc:
        raise LocalProtocolError(f"cannot build a valid CPM payload: {exc}") from None
    return payload
