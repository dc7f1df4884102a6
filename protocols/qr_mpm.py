"""EMVCo merchant-presented QR (EMV QRCPS Merchant-Presented Mode 1.1): decode, encode, build.

A payload is a string of data objects ``ID(2 digits) length(2 digits) value``; the length counts
characters. Object 63 comes last: CRC-16/CCITT-FALSE over the UTF-8 bytes of everything before
its value, ``"6304"`` included, written as 4 uppercase hex digits. Sources: EMVCo MPM 1.1
Appendix A's example (tests/protocols/test_qr_mpm.py) has ``0104最佳运输`` in template 64 (4
characters, 12 bytes) and CRC ``A13A`` over the UTF-8 bytes; UnionPay International's MPM
encoding specification, format "S": "The length must be equal to the number of characters in
the value, not the number of bytes". Templates: 26-51 merchant
account information and 80-99 unreserved (each with a globally unique identifier in sub-ID 00),
62 additional data, 64 merchant information in an alternate language (the only place where
characters outside printable ASCII are allowed).

Decoding checks the CRC first (any one-character substitution is a burst error of at most
16 bits, which the CRC always detects), then the structure, then each value. Every defect
raises a subclass of :class:`MpmError` (a :class:`~protocols.errors.RemoteProtocolError` with
``field="qr"``, ``rc="30"``) whose ``code`` is stable for API problem types. Messages name IDs,
never values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Final, NamedTuple

from protocols.crc import crc16_hex
from protocols.currency import EXPONENTS
from protocols.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "COUNTRY_ALPHA2",
    "DEFAULT_GUI",
    "MANDATORY_IDS",
    "MAX_PAYLOAD",
    "MerchantAccount",
    "MerchantQr",
    "MpmCrcError",
    "MpmCurrencyError",
    "MpmError",
    "MpmFormatError",
    "MpmLengthError",
    "MpmMissingError",
    "MpmObject",
    "amount_to_minor",
    "build",
    "decode",
    "encode",
    "encode_objects",
    "minor_to_amount",
]

MAX_PAYLOAD: Final = 512  # EMVCo MPM 4.6: a payload never exceeds 512 characters
MANDATORY_IDS: Final[tuple[str, ...]] = ("00", "01", "52", "53", "58", "59", "60", "63")
DEFAULT_GUI: Final = "com.payswitch"  # reverse-domain GUI of this switch's account template
DEFAULT_ACCOUNT_ID: Final = "26"
MERCHANT_ID_SUB_ID: Final = "01"  # where our template carries the merchant id

# ISO 3166-1 numeric -> alpha-2: merchant data carries numeric countries, tag 58 wants alpha-2.
COUNTRY_ALPHA2: Final[dict[str, str]] = {
    "036": "AU",
    "124": "CA",
    "156": "CN",
    "158": "TW",
    "250": "FR",
    "276": "DE",
    "344": "HK",
    "356": "IN",
    "360": "ID",
    "392": "JP",
    "410": "KR",
    "446": "MO",
    "458": "MY",
    "608": "PH",
    "702": "SG",
    "704": "VN",
    "756": "CH",
    "764": "TH",
    "826": "GB",
    "840": "US",
}

_new_tuple: Final = tuple.__new__  # 3x faster than the NamedTuple constructor
_TWO_DIGITS: Final[dict[str, int]] = {f"{n:02d}": n for n in range(100)}
_UPPER_HEX: Final = frozenset("0123456789ABCDEF")
_MAX_LEN: Final[dict[str, int]] = {"59": 25, "60": 15, "61": 10, "54": 13, "56": 13, "57": 5}


# Errors ---------------------------------------------------------------------------------------


class MpmError(RemoteProtocolError):
    """A merchant-presented QR payload that cannot be accepted."""

    code: ClassVar[str] = "qr-format"

    def __init__(self, reason: str, *, id: str | None = None) -> None:
        super().__init__(reason if id is None else f"ID {id}: {reason}", field="qr", rc="30")
        self.id = id


class MpmFormatError(MpmError):
    """Bad structure or a value of the wrong format."""

    code = "qr-format"


class MpmLengthError(MpmError):
    """A length that is not two digits, zero, or runs past its container."""

    code = "qr-length"


class MpmCrcError(MpmError):
    """Object 63 missing, malformed or not matching the payload: corrupted or forged."""

    code = "qr-crc"


class MpmMissingError(MpmError):
    """A mandatory data object is absent."""

    code = "qr-missing"


class MpmCurrencyError(MpmError):
    """Tag 53 is not an ISO 4217 payment currency (protocols.currency)."""

    code = "qr-currency"


# Model ----------------------------------------------------------------------------------------


class MpmObject(NamedTuple):
    """One data object; ``children`` is set for templates (26-51, 62, 64, 80-99)."""

    id: str
    value: str
    children: tuple[MpmObject, ...] | None = None


@dataclass(frozen=True, slots=True)
class MerchantAccount:
    """Merchant account information: 02-25 primitive (card network ids) or 26-51 templates."""

    id: str
    value: str
    gui: str | None = None  # sub-ID 00 of a template
    fields: Mapping[str, str] = field(default_factory=dict)  # sub-IDs 01-99 of a template


@dataclass(frozen=True, slots=True)
class MerchantQr:
    """A decoded, validated merchant-presented payload."""

    objects: tuple[MpmObject, ...]  # every top-level object in order, 63 included
    dynamic: bool  # 01 = "12"; "11" is static
    accounts: tuple[MerchantAccount, ...]
    mcc: str
    currency: str  # ISO 4217 numeric
    country: str  # ISO 3166-1 alpha-2
    name: str
    city: str
    crc: str
    amount: str | None = None  # as written in 54
    amount_minor: int | None = None  # 54 in minor units of the currency
    tip_indicator: str | None = None  # 55: 01 prompt, 02 fixed fee (56), 03 percentage (57)
    fee_fixed: str | None = None
    fee_percentage: str | None = None
    postal_code: str | None = None
    additional_data: Mapping[str, str] = field(default_factory=dict)  # 62 sub-IDs
    language: Mapping[str, str] = field(default_factory=dict)  # 64 sub-IDs

    def get(self, id: str) -> str | None:
        """Raw value of the top-level object ``id``."""
        for obj in self.objects:
            if obj.id == id:
                return obj.value
        return None

    def account(self, gui: str = DEFAULT_GUI) -> MerchantAccount | None:
        """The account template whose GUI is ``gui`` (compared without regard to case)."""
        wanted = gui.casefold()
        for acc in self.accounts:
            if acc.gui is not None and acc.gui.casefold() == wanted:
                return acc
        return None

    def merchant_id(self, gui: str = DEFAULT_GUI, sub_id: str = MERCHANT_ID_SUB_ID) -> str | None:
        """Merchant id in our own account template, when the payload has one."""
        acc = self.account(gui)
        return None if acc is None else acc.fields.get(sub_id)


# Amounts --------------------------------------------------------------------------------------


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def amount_to_minor(text: str, exponent: int, *, id: str = "54") -> int:
    """``"23.72"`` with exponent 2 -> 2372. A trailing ``"."`` is allowed, extra decimals not."""
    whole, _, frac = text.partition(".")
    if not _digits(whole) or len(text) > 13 or (frac and not _digits(frac)):
        raise MpmFormatError("amount is not a decimal number", id=id)
    if len(frac) > exponent:
        raise MpmFormatError(f"amount has more than {exponent} decimals", id=id)
    # Digits only, so the string concatenation is exact: "23" + "72" -> 2372.
    return int(whole + frac.ljust(exponent, "0"))


def minor_to_amount(minor: int, exponent: int) -> str:
    """2372 with exponent 2 -> ``"23.72"``; exponent 0 -> ``"2372"``."""
    if minor < 0:
        raise LocalProtocolError("negative amount")
    if exponent == 0:
        return str(minor)
    whole, frac = divmod(minor, 10**exponent)
    return f"{whole}.{frac:0{exponent}d}"


# Decoding -------------------------------------------------------------------------------------


def _parse(text: str, container: str | None) -> list[MpmObject]:
    """Split ``text`` into ID/length/value objects; IDs must be unique within a container."""
    objects: list[MpmObject] = []
    seen: set[str] = set()
    i, end = 0, len(text)
    while i < end:
        if i + 4 > end:
            raise MpmLengthError("truncated ID or length", id=container)
        id_ = text[i : i + 2]
        length = _TWO_DIGITS.get(text[i + 2 : i + 4])
        if id_ not in _TWO_DIGITS:
            raise MpmFormatError(f"ID at offset {i} is not two digits", id=container)
        if length is None:
            raise MpmLengthError("length is not two digits", id=id_)
        if length == 0:
            raise MpmLengthError("length 00", id=id_)
        j = i + 4 + length
        if j > end:
            raise MpmLengthError("value runs past the end of its container", id=id_)
        if id_ in seen:
            raise MpmFormatError("appears twice", id=id_)
        seen.add(id_)
        objects.append(_new_tuple(MpmObject, (id_, text[i + 4 : j], None)))
        i = j
    return objects


def _ans(value: str, id: str) -> None:
    # EMVCo "ans": the common character set, printable ASCII.
    if not (value.isascii() and value.isprintable()):
        raise MpmFormatError("characters outside printable ASCII", id=id)


def _template(obj: MpmObject, *, need_gui: bool, check: bool, ascii_only: bool = True) -> MpmObject:
    children = _parse(obj.value, obj.id)
    for child in children if check else ():
        if ascii_only:
            _ans(child.value, f"{obj.id}.{child.id}")
        elif not child.value.isprintable():
            raise MpmFormatError("non-printable characters", id=f"{obj.id}.{child.id}")
    if need_gui:
        if not children or children[0].id != "00":
            raise MpmMissingError("template lacks its globally unique identifier (00)", id=obj.id)
        if len(children[0].value) > 32:
            raise MpmFormatError("globally unique identifier longer than 32", id=obj.id)
    return MpmObject(obj.id, obj.value, tuple(children))


def decode(payload: str) -> MerchantQr:
    """Validate and decode a merchant-presented payload; raise an :class:`MpmError` if bad.

    Mandatory: :data:`MANDATORY_IDS` (the SPEC makes 01, optional in EMVCo, mandatory: the
    switch must know whether a code is static or dynamic) and one merchant account (02-51).
    """
    if not isinstance(payload, str):
        raise MpmFormatError("payload must be text")
    n = len(payload)
    if n > MAX_PAYLOAD:
        raise MpmLengthError(f"payload longer than {MAX_PAYLOAD} characters")
    # The CRC first: it catches corruption anywhere, whatever the structure looks like after.
    if n < 8 or payload[n - 8 : n - 4] != "6304":
        raise MpmCrcError("does not end with the CRC object 6304", id="63")
    crc = payload[n - 4 :]
    if not all(c in _UPPER_HEX for c in crc):
        raise MpmCrcError("CRC is not 4 uppercase hex digits", id="63")
    try:
        body = payload[: n - 4].encode("utf-8")
    except UnicodeEncodeError:
        raise MpmFormatError("payload is not valid Unicode text") from None
    if crc16_hex(body) != crc:
        raise MpmCrcError("CRC does not match the payload", id="63")

    top = _parse(payload, None)
    if top[0].id != "00":
        raise MpmFormatError("payload format indicator (00) must come first")
    if top[-1].id != "63":
        raise MpmFormatError("CRC (63) must come last")
    if len(top[-1].value) != 4:
        raise MpmLengthError("CRC must have length 04", id="63")
    plain_ascii = payload.isascii() and payload.isprintable()
    objects: list[MpmObject] = []
    values: dict[str, str] = {}
    accounts: list[MerchantAccount] = []
    additional: dict[str, str] = {}
    language: dict[str, str] = {}
    for obj in top:
        id_, value = obj.id, obj.value
        num = _TWO_DIGITS[id_]
        if 26 <= num <= 51 or 80 <= num <= 99:
            obj = _template(obj, need_gui=True, check=not plain_ascii)
            assert obj.children is not None
            if num <= 51:
                accounts.append(
                    MerchantAccount(
                        id_,
                        value,
                        obj.children[0].value,
                        {c.id: c.value for c in obj.children[1:]},
                    )
                )
        elif id_ == "62":
            obj = _template(obj, need_gui=False, check=not plain_ascii)
            assert obj.children is not None
            additional = {c.id: c.value for c in obj.children}
        elif id_ == "64":
            obj = _template(obj, need_gui=False, check=not plain_ascii, ascii_only=False)
            assert obj.children is not None
            language = {c.id: c.value for c in obj.children}
        elif not plain_ascii:
            _ans(value, id_)
        if 2 <= num <= 25:
            accounts.append(MerchantAccount(id_, value))
        values[id_] = value
        objects.append(obj)

    missing = [id_ for id_ in MANDATORY_IDS if id_ not in values]
    if missing:
        raise MpmMissingError(f"mandatory objects missing: {' '.join(missing)}")
    if not accounts:
        raise MpmMissingError("no merchant account information (02-51)")
    _check_values(values, additional, language)

    currency = values["53"]
    exponent = EXPONENTS.get(currency)
    if exponent is None:
        raise MpmCurrencyError("not an ISO 4217 payment currency", id="53")
    amount = values.get("54")
    amount_minor = None
    if amount is not None:
        amount_minor = amount_to_minor(amount, exponent)
        if amount_minor == 0:
            raise MpmFormatError("amount is zero", id="54")
    return MerchantQr(
        objects=tuple(objects),
        dynamic=values.get("01") == "12",
        accounts=tuple(accounts),
        mcc=values["52"],
        currency=currency,
        country=values["58"],
        name=values["59"],
        city=values["60"],
        crc=crc,
        amount=amount,
        amount_minor=amount_minor,
        tip_indicator=values.get("55"),
        fee_fixed=values.get("56"),
        fee_percentage=values.get("57"),
        postal_code=values.get("61"),
        additional_data=additional,
        language=language,
    )


def _check_values(
    values: Mapping[str, str], additional: Mapping[str, str], language: Mapping[str, str]
) -> None:
    if values["00"] != "01":
        raise MpmFormatError("unsupported payload format indicator", id="00")
    if "01" in values and values["01"] not in ("11", "12"):
        raise MpmFormatError("point of initiation method must be 11 or 12", id="01")
    if "52" in values and not (len(values["52"]) == 4 and _digits(values["52"])):
        raise MpmFormatError("merchant category code must be 4 digits", id="52")
    if "53" in values and not (len(values["53"]) == 3 and _digits(values["53"])):
        raise MpmFormatError("currency must be 3 digits", id="53")
    if "58" in values:
        country = values["58"]
        if not (
            len(country) == 2 and country.isascii() and country.isalpha() and country.isupper()
        ):
            raise MpmFormatError("country must be 2 uppercase letters", id="58")
    for id_, limit in _MAX_LEN.items():
        if id_ in values and len(values[id_]) > limit:
            raise MpmLengthError(f"longer than {limit}", id=id_)
    tip = values.get("55")
    if tip is not None and tip not in ("01", "02", "03"):
        raise MpmFormatError("tip or convenience indicator must be 01, 02 or 03", id="55")
    if ("56" in values) != (tip == "02"):
        raise MpmFormatError("fixed convenience fee goes with indicator 02 only", id="56")
    if ("57" in values) != (tip == "03"):
        raise MpmFormatError("percentage convenience fee goes with indicator 03 only", id="57")
    if "56" in values:
        whole, _, frac = values["56"].partition(".")
        if not _digits(whole) or (frac and not _digits(frac)):
            raise MpmFormatError("fee is not a decimal number", id="56")
    if "57" in values:
        whole, _, frac = values["57"].partition(".")
        if not _digits(whole) or (frac and not _digits(frac)) or not 0 < float(values["57"]) < 100:
            raise MpmFormatError("percentage must be between 00.01 and 99.99", id="57")
    for sub_id, value in additional.items():
        if _TWO_DIGITS[sub_id] <= 8 and len(value) > 25:
            raise MpmLengthError("longer than 25", id=f"62.{sub_id}")
    request = additional.get("09")
    if request is not None and (
        len(set(request)) != len(request) or not set(request) <= {"A", "M", "E"}
    ):
        raise MpmFormatError("consumer data request must use A, M, E once each", id="62.09")
    if language:
        lang = language.get("00", "")
        if not (len(lang) == 2 and lang.isascii() and lang.isalpha()):
            raise MpmFormatError("language preference must be 2 letters", id="64.00")
        if "01" not in language:
            raise MpmMissingError("alternate merchant name (01) missing", id="64")
        if len(language["01"]) > 25:
            raise MpmLengthError("longer than 25", id="64.01")
        if len(language.get("02", "")) > 15:
            raise MpmLengthError("longer than 15", id="64.02")


# Encoding -------------------------------------------------------------------------------------


def encode_objects(objects: Iterable[tuple[str, str] | MpmObject]) -> str:
    """ID/length/value text of ``objects`` (no CRC); for templates and the payload body."""
    parts: list[str] = []
    for obj in objects:
        id_, value = obj[0], obj[1]
        if id_ not in _TWO_DIGITS:
            raise LocalProtocolError(f"ID {id_!r} is not two digits")
        if not 1 <= len(value) <= 99:
            raise LocalProtocolError(f"ID {id_}: value length {len(value)} outside 1..99")
        parts.append(f"{id_}{len(value):02d}{value}")
    return "".join(parts)


def encode(objects: Iterable[tuple[str, str] | MpmObject]) -> str:
    """A full payload: ``objects`` (any object 63 is dropped) followed by a fresh CRC."""
    body = encode_objects(obj for obj in objects if obj[0] != "63") + "6304"
    return body + crc16_hex(body.encode("utf-8"))


def build(
    *,
    merchant_id: str,
    name: str,
    city: str,
    mcc: str,
    currency: str,
    country: str,
    amount_minor: int | None = None,
    dynamic: bool | None = None,
    gui: str = DEFAULT_GUI,
    account_id: str = DEFAULT_ACCOUNT_ID,
    postal_code: str | None = None,
    bill_number: str | None = None,
    reference_label: str | None = None,
    terminal_label: str | None = None,
    alt_language: str | None = None,
    alt_name: str | None = None,
    alt_city: str | None = None,
) -> str:
    """The payload of a merchant's QR code: dynamic when it carries an amount (unless told).

    ``country`` is ISO 3166 alpha-2 or numeric (converted with :data:`COUNTRY_ALPHA2`).
    ``alt_language`` / ``alt_name`` / ``alt_city`` fill template 64 (e.g. ``"ZH"`` and the
    name in Chinese): 59 and 60 must stay printable ASCII.
    Bad merchant data is our own configuration's fault: :class:`LocalProtocolError`.
    """
    if _digits(country):
        alpha2 = COUNTRY_ALPHA2.get(country.rjust(3, "0"))
        if alpha2 is None:
            raise LocalProtocolError(f"no alpha-2 code known for country {country}")
        country = alpha2
    if not 26 <= _TWO_DIGITS.get(account_id, 0) <= 51:
        raise LocalProtocolError("account template ID must be 26..51")
    if dynamic is None:
        dynamic = amount_minor is not None
    objects: list[tuple[str, str]] = [
        ("00", "01"),
        ("01", "12" if dynamic else "11"),
        (account_id, encode_objects([("00", gui), (MERCHANT_ID_SUB_ID, merchant_id)])),
        ("52", mcc),
        ("53", currency),
    ]
    exponent = EXPONENTS.get(currency)
    if exponent is None:
        raise LocalProtocolError(f"currency {currency} is not an ISO 4217 payment currency")
    if amount_minor is not None:
        if amount_minor <= 0:
            raise LocalProtocolError("a QR amount must be positive")
        objects.append(("54", minor_to_amount(amount_minor, exponent)))
    objects += [("58", country), ("59", name), ("60", city)]
    if postal_code is not None:
        objects.append(("61", postal_code))
    extra = [
        (sub_id, value)
        for sub_id, value in (("01", bill_number), ("05", reference_label), ("07", terminal_label))
        if value is not None
    ]
    if extra:
        objects.append(("62", encode_objects(extra)))
    if alt_language is not None or alt_name is not None or alt_city is not None:
        if alt_language is None or alt_name is None:
            raise LocalProtocolError("template 64 needs a language and a name")
        alt = [("00", alt_language), ("01", alt_name)]
        if alt_city is not None:
            alt.append(("02", alt_city))
        objects.append(("64", encode_objects(alt)))
    payload = encode(objects)
    try:
        decode(payload)  # what we hand out must pass our own acceptance rules
    except MpmError as exc:
        raise LocalProtocolError(f"cannot build a valid MPM payload: {exc}") from None
    return payload
