"""payShield-style HSM host command codec (sans-IO), shared by hsm_sim's server and the gateway.

A payload (what follows the 2-byte length; framing is the caller's, see ``protocols.framing``)
is: a 4-character header echoed in the response (the client matches answers by it), a
2-character command code, then the command's fields in a fixed layout. A response carries the
same header, the command code with its second character advanced by one (``CA`` -> ``CB``), a
2-digit error code, and the response fields only when the error code is ``00``.

Field notation: ``nN`` n ASCII digits, ``nH`` n hex characters, ``nA`` n printable ASCII, ``nB`` n
raw bytes, ``KEY`` a key under the LMK or a ZMK (``U``/``X`` + 32H, see ``hsm_sim.lmk``, or ``S`` +
a TR-31 / X9.143 key block whose header gives its length, see ``hsm_sim.keyblock``), ``PAN;`` 12-19
digits closed by ``;``, ``PB`` a PIN block (16H, or 32H for format ``48``), ``LH:B`` a hex length
of L characters followed by that many raw bytes. The layouts follow payShield's with these
deliberate simplifications: PIN block format codes come before the PIN block (its length depends on
them); the account number is ``PAN;`` (12 digits as payShield's, or the whole PAN, which ISO format
4 needs); in ``A1`` the check value precedes the optional key under ZMK.

======  ===============================================================  ======================
cmd     request fields                                                   response fields (00)
======  ===============================================================  ======================
NC      (none)                                                           16H LMK check, 9A fw
A0      1N mode (0 generate, 1 and export), 3H key type (FFF with     KEY, 6H KCV, [KEY
        'S'), 1A scheme 'U' or 'S', [scheme S: 2A usage, 1A algorithm,   under ZMK]
        1A mode of use, 2A key version, 1A exportability], [mode 1: KEY
        ZMK, 1A scheme under ZMK 'X'/'U' or 'S' (a key block)]
BU      2H key type code, 1N key length flag (1 = double), KEY           6H KCV
A6      3H key type, KEY ZMK, KEY key under ZMK ('S': a key block),      KEY, 6H KCV
        1A scheme under LMK 'U' or 'S'
A8      3H key type, KEY ZMK, KEY key under LMK, 1A scheme under ZMK     KEY under ZMK, 6H KCV
        ('X'/'U', or 'S' for a key block)
CA      KEY TPK, KEY ZPK, 2N max PIN length, 2N source format,           2N PIN length,
        2N destination format, PB, PAN;                                  2N format, PB
CC      KEY source ZPK, KEY destination ZPK, then as CA                  as CA
G0      KEY BDK, KEY ZPK, 3H KSN descriptor, 20H KSN, 2N destination     as CA
        format, 16H PIN block (format 0 under the DUKPT PIN key), PAN;
Z0      1N BDK length (1 AES-128: KEY, 2 AES-256: U + 64H), BDK, KEY     as CA
        ZPK, 1N PIN key length (1 AES-128, 2 AES-256), 24H KSN, 2N
        destination format, 32H PIN block (format 4 under the AES DUKPT
        PIN key), PAN; (the whole PAN)
EC      KEY ZPK, KEY PVK, 2N format, PB, PAN;, 1N PVKI, 4N PVV           (none)
DA      KEY TPK, KEY PVK, 2N max PIN length, 2N format, PB, 2N check     (none)
        length, PAN;, 16N decimalisation table, 12A validation data
        (N = last 5 account digits), 12H offset (F-padded)
EA      as DA with a ZPK                                                 (none)
CW      KEY CVK, PAN;, 4N expiry (YYMM), 3N service code                 3N CVV
CY      KEY CVK, 3N CVV, PAN;, 4N expiry, 3N service code                (none)
M6      1N mode (0), 1N input format (0 binary), 1N algorithm (3 retail  16H MAC
        MAC, 6 AES-CMAC), 1N padding (1, 2), 3H key type, KEY, 4H:B msg
M8      as M6, then 16H MAC                                              (none)
KQ      1N mode (0 verify, 1 verify + ARPC, 2 ARPC only), 1N scheme (1   [8B ARPC] (modes 1, 2)
        EMV common session key), KEY MK-AC, 8B PAN/PSN (option A Y),
        2B ATC, 4B UN, 2H:B transaction data, ';', 8B ARQC, 2B ARC
======  ===============================================================  ======================

``Z0`` is this simulator's own command: the public payShield manuals document DUKPT PIN
translation (``CI``, ``G0``) for TDES DUKPT only, so AES DUKPT (ANSI X9.24-3-2017) gets a code
of the simulator's own (none of the payShield commands modelled here uses ``Z``) rather than a
``G0`` with another layout; a real HSM's AES DUKPT command would replace it in the client. It
takes the 12-byte KSN (8-byte initial key ID, 4-byte counter), derives the PIN encryption key
(usage ``1000``) of that KSN from the BDK, deciphers the ISO 9564-1 format 4 block with the
whole PAN and re-enciphers the PIN under the ZPK in a TDES format (``01``, ``05``, ``47``) with
the same PAN; the clear PIN stays in the HSM. Answer ``Z1``, laid out as ``CB``. Errors as G0's,
and ``15`` for a KSN counter no device sends (0, ``FFFFFFFF``, more than 16 bits set), ``27``
for a BDK whose length is not its flag's or a PIN key longer than the BDK, ``23`` for
destination format ``48``.

Error codes (payShield): ``00`` success, ``01`` verification failure, ``04`` invalid key type,
``10``/``11`` first/second key parity error, ``13`` LMK parity error, ``15`` invalid input data,
``20`` PIN block not valid, ``23`` invalid PIN block format, ``24`` PIN length, ``26`` invalid key
scheme, ``27`` key length, ``68`` command disabled or not provided by this HSM; for keys in
key-block form (payShield's key-block codes) ``A4`` key block authentication failure (or a
malformed block), ``A6`` key usage, ``A7`` algorithm, ``A8`` mode of use not allowed for what the
command does with the key, ``AA`` key not exportable. A payload too short to carry a header and a
command code is answered with command ``ZZ``.

Key-block forms: wherever a command takes a ``KEY`` it takes ``S`` + a key block under the LMK,
whose header the HSM enforces (a PIN key cannot compute a MAC). In ``A0``/``A6``/``A8`` the key
under the ZMK may be a key block too (version ``B`` under a TDES ZMK, ``D`` under an AES one).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from operator import attrgetter
from typing import Any, ClassVar, Final

from protocols.errors import LocalProtocolError, RemoteProtocolError

HEADER_LENGTH: Final = 4
UNKNOWN_COMMAND_RESPONSE: Final = "ZZ"

OK: Final = "00"
VERIFICATION_FAILURE: Final = "01"
INVALID_KEY_TYPE: Final = "04"
KEY_PARITY_ERROR: Final = "10"
SECOND_KEY_PARITY_ERROR: Final = "11"
INVALID_INPUT: Final = "15"
INVALID_PIN_BLOCK: Final = "20"
INVALID_PIN_BLOCK_FORMAT: Final = "23"
PIN_LENGTH_ERROR: Final = "24"
INVALID_KEY_SCHEME: Final = "26"
KEY_LENGTH_ERROR: Final = "27"
COMMAND_DISABLED: Final = "68"

FORMAT_ISO0: Final = "01"
FORMAT_ISO1: Final = "05"
FORMAT_ISO3: Final = "47"
FORMAT_ISO4: Final = "48"


class HsmProtocolError(RemoteProtocolError):
    """A malformed HSM command or response.

    ``error_code`` is the payShield code to answer with; ``header`` and ``command`` are what
    could be read (so the server can still address its error response). No data is kept.
    """

    def __init__(
        self,
        reason: str,
        *,
        field: str | None = None,
        error_code: str = INVALID_INPUT,
        header: str = "0000",
        command: str = UNKNOWN_COMMAND_RESPONSE,
    ) -> None:
        super().__init__(reason, field=field, rc="96")
        self.error_code = error_code
        self.header = header
        self.command = command


class Kind(Enum):
    """How a field is written on the wire."""

    NUMERIC = "N"
    HEX = "H"
    TEXT = "A"
    BINARY = "B"
    KEY = "KEY"
    PAN = "PAN;"
    VAR_BINARY = "LH:B"
    LITERAL = "LIT"


_DIGITS = frozenset(b"0123456789")
_HEXB = frozenset(b"0123456789ABCDEFabcdef")
KEY_LENGTH: Final = 33
#: ``S`` + the shortest key block: a 16-character header, key data and MAC.
_MIN_KEY_BLOCK: Final = 1 + 16 + 32
PAN_DELIMITER: Final = b";"

LengthRule = int | Callable[[Mapping[str, Any]], int]


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a layout. ``length`` may depend on fields decoded before it."""

    name: str
    kind: Kind
    length: LengthRule = 0
    #: For VAR_BINARY: the number of hex characters of the length prefix.
    prefix: int = 0
    #: Only present when this returns True for the fields decoded so far.
    when: Callable[[Mapping[str, Any]], bool] | None = None
    #: Present only if bytes remain (responses with an optional last field).
    optional: bool = False
    literal: bytes = b""

    def size(self, values: Mapping[str, Any]) -> int:
        return self.length if isinstance(self.length, int) else self.length(values)


def _pin_block_hex(fmt_field: str) -> Callable[[Mapping[str, Any]], int]:
    def rule(values: Mapping[str, Any]) -> int:
        return 32 if values.get(fmt_field) == FORMAT_ISO4 else 16

    return rule


KEY_BLOCK_SCHEME: Final = "S"
KEY_BLOCK_AUTH_FAILURE: Final = "A4"
INVALID_KEY_USAGE: Final = "A6"
INVALID_ALGORITHM: Final = "A7"
INVALID_MODE_OF_USE: Final = "A8"
KEY_NOT_EXPORTABLE: Final = "AA"

AES_128: Final = "1"
AES_256: Final = "2"


def _aes_key_chars(flag_field: str) -> Callable[[Mapping[str, Any]], int]:
    def rule(values: Mapping[str, Any]) -> int:
        return 65 if values.get(flag_field) == AES_256 else KEY_LENGTH

    return rule


def _block_scheme(values: Mapping[str, Any]) -> bool:
    return values.get("key_scheme") == KEY_BLOCK_SCHEME


def _num(name: str, n: int) -> Field:
    return Field(name, Kind.NUMERIC, n)


def _hex(name: str, n: LengthRule) -> Field:
    return Field(name, Kind.HEX, n)


def _text(name: str, n: int) -> Field:
    return Field(name, Kind.TEXT, n)


def _bin(name: str, n: int, *, optional: bool = False) -> Field:
    return Field(name, Kind.BINARY, n, optional=optional)


def _key(name: str, **kw: Any) -> Field:
    return Field(name, Kind.KEY, KEY_LENGTH, **kw)


def _pan(name: str) -> Field:
    return Field(name, Kind.PAN, 19)


# --------------------------------------------------------------------------- messages


class Message:
    """Base of request and response bodies: a dataclass with a class-level layout."""

    CODE: ClassVar[str]
    LAYOUT: ClassVar[tuple[Field, ...]]


# Requests ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Diagnostics(Message):
    """NC: LMK check value and firmware version."""

    CODE: ClassVar[str] = "NC"
    LAYOUT: ClassVar[tuple[Field, ...]] = ()


@dataclass(frozen=True, slots=True)
class GenerateKey(Message):
    """A0: generate a random key, optionally also exported under a ZMK (mode 1)."""

    CODE: ClassVar[str] = "A0"
    key_type: str = "001"
    mode: str = "0"
    key_scheme: str = "U"
    zmk: str | None = None
    zmk_scheme: str | None = None
    #: Scheme ``S`` only: the key block header's fields (TR-31 / X9.143).
    key_usage: str | None = None
    algorithm: str | None = None
    mode_of_use: str | None = None
    key_version: str | None = None
    exportability: str | None = None
    LAYOUT: ClassVar[tuple[Field, ...]] = (
        _num("mode", 1),
        _hex("key_type", 3),
        _text("key_scheme", 1),
        Field("key_usage", Kind.TEXT, 2, when=_block_scheme),
        Field("algorithm", Kind.TEXT, 1, when=_block_scheme),
        Field("mode_of_use", Kind.TEXT, 1, when=_block_scheme),
        Field("key_version", Kind.TEXT, 2, when=_block_scheme),
        Field("exportability", Kind.TEXT, 1, when=_block_scheme),
        _key("zmk", when=lambda v: v.get("mode") == "1"),
        Field("zmk_scheme", Kind.TEXT, 1, when=lambda v: v.get("mode") == "1"),
    )


@dataclass(frozen=True, slots=True)
class KeyCheckValue(Message):
    """BU: check value of a key under the LMK."""

    CODE: ClassVar[str] = "BU"
    key: str
    key_type: str = "FF"
    key_length_flag: str = "1"
    LAYOUT: ClassVar[tuple[Field, ...]] = (
        _hex("key_type", 2),
        _num("key_length_flag", 1),
        _key("key"),
    )


@dataclass(frozen=True, slots=True)
class ImportKey(Message):
    """A6: import a key received under a ZMK into the LMK."""

    CODE: ClassVar[str] = "A6"
    zmk: str
    key_under_zmk: str
    key_type: str = "001"
    key_scheme: str = "U"
    LAYOUT: ClassVar[tuple[Field, ...]] = (
        _hex("key_type", 3),
        _key("zmk"),
        _key("key_under_zmk"),
        _text("key_scheme", 1),
    )


@dataclass(frozen=True, slots=True)
class ExportKey(Message):
    """A8: export a key from the LMK to a ZMK."""

    CODE: ClassVar[str] = "A8"
    zmk: str
    key: str
    key_type: str = "001"
    key_scheme: str = "X"
    LAYOUT: ClassVar[tuple[Field, ...]] = (
        _hex("key_type", 3),
        _key("zmk"),
        _key("key"),
        _text("key_scheme", 1),
    )


_PIN_TRANSLATE_TAIL: tuple[Field, ...] = (
    _num("max_pin_length", 2),
    _num("src_format", 2),
    _num("dst_format", 2),
    _hex("pin_block", _pin_block_hex("src_format")),
    _pan("account"),
)


@dataclass(frozen=True, slots=True)
class TranslatePinTpkToZpk(Message):
    """CA: translate a PIN block from a terminal PIN key to a zone PIN key."""

    CODE: ClassVar[str] = "CA"
    tpk: str
    zpk: str
    pin_block: str
    account: str
    src_format: str = FORMAT_ISO0
    dst_format: str = FORMAT_ISO0
    max_pin_length: str = "12"
    LAYOUT: ClassVar[tuple[Field, ...]] = (_key("tpk"), _key("zpk"), *_PIN_TRANSLATE_TAIL)


@dataclass(frozen=True, slots=True)
class TranslatePinZpkToZpk(Message):
    """CC: translate a PIN block from one zone PIN key to another."""

    CODE: ClassVar[str] = "CC"
    src_zpk: str
    dst_zpk: str
    pin_block: str
    account: str
    src_format: str = FORMAT_ISO0
    dst_format: str = FORMAT_ISO0
    max_pin_length: str = "12"
    LAYOUT: ClassVar[tuple[Field, ...]] = (_key("src_zpk"), _key("dst_zpk"), *_PIN_TRANSLATE_TAIL)


@dataclass(frozen=True, slots=True)
class TranslatePinDukptToZpk(Message):
    """G0: translate a PIN block from the X9.24-1 TDES DUKPT PIN key (BDK + KSN) to a ZPK."""

    CODE: ClassVar[str] = "G0"
    bdk: str
    zpk: str
    ksn: str
    pin_block: str
    account: str
    dst_format: str = FORMAT_ISO0
    ksn_descriptor: str = "A05"
    LAYOUT: ClassVar[tuple[Field, ...]] = (
        _key("bdk"),
        _key("zpk"),
        _hex("ksn_descriptor", 3),
        _hex("ksn", 20),
        _num("dst_format", 2),
        _hex("pin_block", 16),
        _pan("account"),
    )


@dataclass(frozen=True, slots=True)
class TranslatePinAesDukptToZpk(Message):
    """Z0: translate a format 4 PIN block from the X9.24-3 AES DUKPT PIN key (BDK + KSN) to a ZPK.

    The simulator's own code (see the module docstring). ``bdk_length`` says whether ``bdk`` is
    an AES-128 (``U`` + 32H) or AES-256 (``U`` + 64H) key; ``pin_key_length`` which PIN key the
    device derives (AES-128 unless the device was set up for AES-256)."""

    CODE: ClassVar[str] = "Z0"
    bdk: str
    zpk: str
    ksn: str
    pin_block: str
    account: str
    dst_format: str = FORMAT_ISO0
    bdk_length: str = AES_128
    pin_key_length: str = AES_128
    LAYOUT: ClassVar[tuple[Field, ...]] = (
        _num("bdk_length", 1),
        Field("bdk", Kind.KEY, _aes_key_chars("bdk_length")),
        _key("zpk"),
        _num("pin_key_length", 1),
        _hex("ksn", 24),
        _num("dst_format", 2),
        _hex("pin_block", 32),
        _pan("account"),
    )


@dataclass(frozen=True, slots=True)
class VerifyPinPvv(Message):
    """EC: verify a PIN block under a ZPK against a Visa PVV."""

    CODE: ClassVar[str] = "EC"
    zpk: str
    pvk: str
    pin_block: str
    account: str
    pvv: str
    pvki: str = "1"
    pin_block_format: str = FORMAT_ISO0
    LAYOUT: ClassVar[tuple[Field, ...]] = (
        _key("zpk"),
        _key("pvk"),
        _num("pin_block_format", 2),
        _hex("pin_block", _pin_block_hex("pin_block_format")),
        _pan("account"),
        _num("pvki", 1),
        _num("pvv", 4),
    )


_IBM_LAYOUT_TAIL: tuple[Field, ...] = (
    _key("pvk"),
    _num("max_pin_length", 2),
    _num("pin_block_format", 2),
    _hex("pin_block", _pin_block_hex("pin_block_format")),
    _num("check_length", 2),
    _pan("account"),
    _num("decimalisation_table", 16),
    _text("validation_data", 12),
    _hex("offset", 12),
)


@dataclass(frozen=True, slots=True)
class VerifyPinIbmTpk(Message):
    """DA: verify a PIN block under a TPK by the IBM 3624 offset method."""

    CODE: ClassVar[str] = "DA"
    tpk: str
    pvk: str
    pin_block: str
    account: str
    offset: str
    #: 12 characters, hex digits and one ``N`` marking where the last 5 account digits go.
    validation_data: str
    check_length: str = "04"
    decimalisation_table: str = "0123456789012345"
    pin_block_format: str = FORMAT_ISO0
    max_pin_length: str = "12"
    LAYOUT: ClassVar[tuple[Field, ...]] = (_key("tpk"), *_IBM_LAYOUT_TAIL)


@dataclass(frozen=True, slots=True)
class VerifyPinIbmZpk(Message):
    """EA: verify a PIN block under a ZPK by the IBM 3624 offset method."""

    CODE: ClassVar[str] = "EA"
    zpk: str
    pvk: str
    pin_block: str
    account: str
    offset: str
    #: 12 characters, hex digits and one ``N`` marking where the last 5 account digits go.
    validation_data: str
    check_length: str = "04"
    decimalisation_table: str = "0123456789012345"
    pin_block_format: str = FORMAT_ISO0
    max_pin_length: str = "12"
    LAYOUT: ClassVar[tuple[Field, ...]] = (_key("zpk"), *_IBM_LAYOUT_TAIL)


@dataclass(frozen=True, slots=True)
class GenerateCvv(Message):
    """CW: generate a CVV/CVC (service code 000 for CVV2, 999 for iCVV)."""

    CODE: ClassVar[str] = "CW"
    cvk: str
    pan: str
    expiry: str
    service_code: str
    LAYOUT: ClassVar[tuple[Field, ...]] = (
        _key("cvk"),
        _pan("pan"),
        _num("expiry", 4),
        _num("service_code", 3),
    )


@dataclass(frozen=True, slots=True)
class VerifyCvv(Message):
    """CY: verify a CVV/CVC."""

    CODE: ClassVar[str] = "CY"
    cvk: str
    cvv: str
    pan: str
    expiry: str
    service_code: str
    LAYOUT: ClassVar[tuple[Field, ...]] = (
        _key("cvk"),
        _num("cvv", 3),
        _pan("pan"),
        _num("expiry", 4),
        _num("service_code", 3),
    )


MAC_RETAIL: Final = "3"
MAC_AES_CMAC: Final = "6"

_MAC_HEAD: tuple[Field, ...] = (
    _num("mode_flag", 1),
    _num("input_format", 1),
    _num("algorithm", 1),
    _num("padding", 1),
    _hex("key_type", 3),
    _key("key"),
    Field("message", Kind.VAR_BINARY, prefix=4),
)


@dataclass(frozen=True, slots=True)
class GenerateMac(Message):
    """M6: generate a MAC (ISO 9797-1 alg 3 retail MAC, or AES-CMAC) over binary data."""

    CODE: ClassVar[str] = "M6"
    key: str
    message: bytes
    algorithm: str = MAC_RETAIL
    padding: str = "1"
    key_type: str = "003"
    mode_flag: str = "0"
    input_format: str = "0"
    LAYOUT: ClassVar[tuple[Field, ...]] = _MAC_HEAD


@dataclass(frozen=True, slots=True)
class VerifyMac(Message):
    """M8: verify a MAC (the left 8 bytes of the MAC, as 16 hex)."""

    CODE: ClassVar[str] = "M8"
    key: str
    message: bytes
    mac: str
    algorithm: str = MAC_RETAIL
    padding: str = "1"
    key_type: str = "003"
    mode_flag: str = "0"
    input_format: str = "0"
    LAYOUT: ClassVar[tuple[Field, ...]] = (*_MAC_HEAD, _hex("mac", 16))


ARQC_VERIFY: Final = "0"
ARQC_VERIFY_ARPC: Final = "1"
ARPC_ONLY: Final = "2"


@dataclass(frozen=True, slots=True)
class VerifyArqc(Message):
    """KQ: verify an ARQC and/or generate an ARPC (method 1) with SPEC's key derivation."""

    CODE: ClassVar[str] = "KQ"
    mk_ac: str
    pan_psn: bytes
    atc: bytes
    transaction_data: bytes
    arqc: bytes
    arc: bytes = b"00"
    unpredictable_number: bytes = b"\x00\x00\x00\x00"
    mode_flag: str = ARQC_VERIFY_ARPC
    scheme_id: str = "1"
    LAYOUT: ClassVar[tuple[Field, ...]] = (
        _num("mode_flag", 1),
        _num("scheme_id", 1),
        _key("mk_ac"),
        _bin("pan_psn", 8),
        _bin("atc", 2),
        _bin("unpredictable_number", 4),
        Field("transaction_data", Kind.VAR_BINARY, prefix=2),
        Field("delimiter", Kind.LITERAL, 1, literal=b";"),
        _bin("arqc", 8),
        _bin("arc", 2),
    )


# Responses -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DiagnosticsResult(Message):
    CODE: ClassVar[str] = "ND"
    lmk_check_value: str
    firmware: str
    LAYOUT: ClassVar[tuple[Field, ...]] = (_hex("lmk_check_value", 16), _text("firmware", 9))


@dataclass(frozen=True, slots=True)
class GeneratedKey(Message):
    CODE: ClassVar[str] = "A1"
    key: str
    kcv: str
    key_under_zmk: str | None = None
    LAYOUT: ClassVar[tuple[Field, ...]] = (
        _key("key"),
        _hex("kcv", 6),
        _key("key_under_zmk", optional=True),
    )


@dataclass(frozen=True, slots=True)
class KeyCheckValueResult(Message):
    CODE: ClassVar[str] = "BV"
    kcv: str
    LAYOUT: ClassVar[tuple[Field, ...]] = (_hex("kcv", 6),)


@dataclass(frozen=True, slots=True)
class ImportedKey(Message):
    CODE: ClassVar[str] = "A7"
    key: str
    kcv: str
    LAYOUT: ClassVar[tuple[Field, ...]] = (_key("key"), _hex("kcv", 6))


@dataclass(frozen=True, slots=True)
class ExportedKey(Message):
    CODE: ClassVar[str] = "A9"
    key_under_zmk: str
    kcv: str
    LAYOUT: ClassVar[tuple[Field, ...]] = (_key("key_under_zmk"), _hex("kcv", 6))


_TRANSLATED_LAYOUT: tuple[Field, ...] = (
    _num("pin_length", 2),
    _num("dst_format", 2),
    _hex("pin_block", _pin_block_hex("dst_format")),
)


@dataclass(frozen=True, slots=True)
class PinTranslated(Message):
    """CB: the translated PIN block."""

    CODE: ClassVar[str] = "CB"
    pin_length: str
    dst_format: str
    pin_block: str
    LAYOUT: ClassVar[tuple[Field, ...]] = _TRANSLATED_LAYOUT


@dataclass(frozen=True, slots=True)
class PinTranslatedZpk(Message):
    CODE: ClassVar[str] = "CD"
    pin_length: str
    dst_format: str
    pin_block: str
    LAYOUT: ClassVar[tuple[Field, ...]] = _TRANSLATED_LAYOUT


@dataclass(frozen=True, slots=True)
class PinTranslatedDukpt(Message):
    CODE: ClassVar[str] = "G1"
    pin_length: str
    dst_format: str
    pin_block: str
    LAYOUT: ClassVar[tuple[Field, ...]] = _TRANSLATED_LAYOUT


@dataclass(frozen=True, slots=True)
class PinTranslatedAesDukpt(Message):
    CODE: ClassVar[str] = "Z1"
    pin_length: str
    dst_format: str
    pin_block: str
    LAYOUT: ClassVar[tuple[Field, ...]] = _TRANSLATED_LAYOUT


@dataclass(frozen=True, slots=True)
class CvvResult(Message):
    CODE: ClassVar[str] = "CX"
    cvv: str
    LAYOUT: ClassVar[tuple[Field, ...]] = (_num("cvv", 3),)


@dataclass(frozen=True, slots=True)
class MacResult(Message):
    CODE: ClassVar[str] = "M7"
    mac: str
    LAYOUT: ClassVar[tuple[Field, ...]] = (_hex("mac", 16),)


@dataclass(frozen=True, slots=True)
class ArpcResult(Message):
    CODE: ClassVar[str] = "KR"
    arpc: bytes | None = None
    LAYOUT: ClassVar[tuple[Field, ...]] = (_bin("arpc", 8, optional=True),)


@dataclass(frozen=True, slots=True)
class Empty(Message):
    """A response with no fields (verifications): its code is the response code at hand."""

    CODE: ClassVar[str] = ""
    LAYOUT: ClassVar[tuple[Field, ...]] = ()


Request = (
    Diagnostics
    | GenerateKey
    | KeyCheckValue
    | ImportKey
    | ExportKey
    | TranslatePinTpkToZpk
    | TranslatePinZpkToZpk
    | TranslatePinDukptToZpk
    | TranslatePinAesDukptToZpk
    | VerifyPinPvv
    | VerifyPinIbmTpk
    | VerifyPinIbmZpk
    | GenerateCvv
    | VerifyCvv
    | GenerateMac
    | VerifyMac
    | VerifyArqc
)
ResponseBody = (
    DiagnosticsResult
    | GeneratedKey
    | KeyCheckValueResult
    | ImportedKey
    | ExportedKey
    | PinTranslated
    | PinTranslatedZpk
    | PinTranslatedDukpt
    | PinTranslatedAesDukpt
    | CvvResult
    | MacResult
    | ArpcResult
    | Empty
)

REQUESTS: Final[dict[str, type[Request]]] = {
    cls.CODE: cls
    for cls in (
        Diagnostics,
        GenerateKey,
        KeyCheckValue,
        ImportKey,
        ExportKey,
        TranslatePinTpkToZpk,
        TranslatePinZpkToZpk,
        TranslatePinDukptToZpk,
        TranslatePinAesDukptToZpk,
        VerifyPinPvv,
        VerifyPinIbmTpk,
        VerifyPinIbmZpk,
        GenerateCvv,
        VerifyCvv,
        GenerateMac,
        VerifyMac,
        VerifyArqc,
    )
}
_BODIES: Final[dict[str, type[ResponseBody]]] = {
    cls.CODE: cls
    for cls in (
        DiagnosticsResult,
        GeneratedKey,
        KeyCheckValueResult,
        ImportedKey,
        ExportedKey,
        PinTranslated,
        PinTranslatedZpk,
        PinTranslatedDukpt,
        PinTranslatedAesDukpt,
        CvvResult,
        MacResult,
        ArpcResult,
    )
}


def response_code(command: str) -> str:
    """The response code of a command: its second character advanced by one (``CA`` -> ``CB``)."""
    if len(command) != 2 or not command.isascii() or not command.isalnum():
        return UNKNOWN_COMMAND_RESPONSE
    second = command[1]
    if second in "Z9z":
        return UNKNOWN_COMMAND_RESPONSE
    return command[0] + chr(ord(second) + 1)


@dataclass(frozen=True, slots=True)
class HsmResponse:
    """A decoded response. ``body`` is set only when ``error_code`` is ``00``."""

    header: str
    code: str
    error_code: str
    body: ResponseBody | None = None

    @property
    def ok(self) -> bool:
        return self.error_code == OK


# --------------------------------------------------------------------------- codec core


def _encode_fields(msg: Message, layout: tuple[Field, ...]) -> bytes:
    compiled, plan = _plan(layout)
    out: list[bytes] = []
    values: dict[str, Any] = {}
    for step in plan:
        if isinstance(step, int):
            raw = _encode_field(msg, compiled[step], values)
            if raw is None:
                break  # an optional last field left out
            out.append(raw)
            continue
        run = step
        vals = run.getter(msg)
        try:
            raw = run.encoded.get(vals)
        except TypeError:  # an unhashable value: the field by field path says what is wrong
            raw = None
        if raw is None:
            raw = b"".join([_encode_field(msg, compiled[i], values) or b"" for i in run.indexes])
            if len(run.encoded) < _CACHE_SIZE:
                run.encoded[vals] = raw
        elif run.needed:
            values.update(zip(run.names, vals, strict=True))
        out.append(raw)
    return b"".join(out)


def _encode_field(msg: Message, entry: _Compiled, values: dict[str, Any]) -> bytes | None:
    """One field's bytes (``b""`` when its condition leaves it out, ``None`` for an absent
    optional field); ``values`` gets the field's value for the rules of later fields."""
    f, name, code, size, when, optional, valid = entry
    if when is not None and not when(values):
        return b""
    if code == _K_LITERAL:
        return f.literal
    value = getattr(msg, name, None)
    if value is None:
        if optional:
            return None
        raise LocalProtocolError(f"{msg.CODE}: field {name} is required")
    values[name] = value
    if code == _K_KEY:
        raw = value.encode("ascii") if isinstance(value, str) and value.isascii() else b""
        if not raw or not _is_key(raw) or (raw[:1] != b"S" and len(raw) != f.size(values)):
            raise LocalProtocolError(f"{msg.CODE}: field {name} must be a key")
        return raw
    if code in (_K_TEXT, _K_PAN):
        raw = value.encode("ascii") if isinstance(value, str) and value.isascii() else b""
        if size < 0:
            size = f.size(values)
        if not raw or not valid(raw) or (code == _K_TEXT and len(raw) != size):
            problem = _text_problem(f, raw, values) or f"field {name} must be ASCII text"
            raise LocalProtocolError(f"{msg.CODE}: {problem}")
        return raw + PAN_DELIMITER if code == _K_PAN else raw
    if not isinstance(value, bytes):
        raise LocalProtocolError(f"{msg.CODE}: field {name} must be bytes")
    if code == _K_VAR:
        if len(value) >= 16**f.prefix:
            raise LocalProtocolError(f"{msg.CODE}: field {name} is too long")
        return f"{len(value):0{f.prefix}X}".encode() + value
    if len(value) != f.size(values):
        raise LocalProtocolError(f"{msg.CODE}: field {name} must be {f.size(values)} bytes")
    return value


def _text_problem(f: Field, raw: bytes, values: Mapping[str, Any]) -> str | None:
    """What is wrong with a text field's raw value, or ``None``."""
    kind = f.kind
    if kind is Kind.PAN:
        if not 12 <= len(raw) <= 19 or not raw.isdigit():
            return f"field {f.name} must be 12 to 19 digits"
        return None
    length = f.length
    size = length if length.__class__ is int else f.size(values)
    if len(raw) != size:
        return f"field {f.name} must be {size} characters"
    if kind is Kind.HEX:
        if not _HEXB.issuperset(raw):
            return f"field {f.name} must be hex"
    elif kind is Kind.KEY and not _is_key(raw):
        return f"field {f.name} must be a key ('U' or 'X' and hex, or 'S' and a key block)"
    elif kind is Kind.NUMERIC:
        if not raw.isdigit():
            return f"field {f.name} must be digits"
    elif kind is Kind.TEXT and not (raw.isascii() and raw.decode("ascii").isprintable()):
        return f"field {f.name} must be printable"
    return None


def _is_key(raw: bytes) -> bool:
    """``U``/``X`` + hex (variant form), or ``S`` + a whole TR-31 key block (its header's
    length digits matching, upper-case letters and digits only)."""
    if raw[:1] == b"S":
        digits = raw[2:6]
        return (
            digits.isdigit()
            and 1 + int(digits) == len(raw) >= _MIN_KEY_BLOCK
            and raw.isalnum()
            and raw.isascii()
            and raw.upper() == raw
        )
    return raw[:1] in (b"U", b"X") and len(raw) > 1 and _HEXB.issuperset(raw[1:])


def _is_text(raw: bytes) -> bool:
    return raw.isascii() and raw.decode("ascii").isprintable()


def _is_pan(raw: bytes) -> bool:
    return 12 <= len(raw) <= 19 and raw.isdigit()


# Fast validity checks per text kind (lengths are checked by the decoder before these run).
_VALID: Final[dict[Kind, Callable[[bytes], bool]]] = {
    Kind.NUMERIC: bytes.isdigit,
    Kind.HEX: _HEXB.issuperset,
    Kind.KEY: _is_key,
    Kind.TEXT: _is_text,
    Kind.PAN: _is_pan,
}


_K_TEXT, _K_BINARY, _K_VAR, _K_PAN, _K_LITERAL, _K_KEY = range(6)
_Compiled = tuple[
    Field,
    str,
    int,
    int,
    Callable[[Mapping[str, Any]], bool] | None,
    bool,
    Callable[[bytes], bool],
]
# Fields whose checked encoding and decoding are remembered: keys under the LMK and command
# parameters, which repeat on every command. Never card or PIN data (PAN, PIN block, CVV, PVV,
# offsets, KSN, MAC), whose values do not repeat or must not linger in memory.
_CACHED_FIELDS: Final = frozenset(
    {
        "mode",
        "mode_flag",
        "input_format",
        "algorithm",
        "padding",
        "key_type",
        "key_scheme",
        "zmk_scheme",
        "key_length_flag",
        "max_pin_length",
        "src_format",
        "dst_format",
        "pin_block_format",
        "ksn_descriptor",
        "bdk_length",
        "pin_key_length",
        "check_length",
        "decimalisation_table",
        "scheme_id",
        "pvki",
        "pin_length",
    }
)
_CACHE_SIZE: Final = 4096
#: Checked keys (variant or key block) by their bytes: they repeat on every command.
_KEYS: dict[bytes, str] = {}


class _Run:
    """Consecutive fixed-size text fields of a layout whose values repeat (keys, parameters):
    their bytes are checked once per distinct set of values, then looked up (encoding: the
    values' tuple -> bytes; decoding: bytes -> the values' tuple; at most _CACHE_SIZE each)."""

    __slots__ = ("decoded", "encoded", "getter", "indexes", "names", "needed", "size")

    def __init__(self, compiled: tuple[_Compiled, ...], indexes: list[int], needed: bool) -> None:
        self.indexes = tuple(indexes)
        self.names = tuple(compiled[i][1] for i in indexes)
        self.size = sum(compiled[i][3] for i in indexes)
        getter = attrgetter(*self.names)
        self.getter: Callable[[Any], tuple[Any, ...]] = (
            getter if len(self.names) > 1 else lambda msg: (getter(msg),)
        )
        #: Whether later fields' rules (``when``, lengths) read these values.
        self.needed = needed
        self.encoded: dict[tuple[Any, ...], bytes] = {}
        self.decoded: dict[bytes, tuple[str, ...]] = {}


_Plan = tuple[tuple[_Compiled, ...], tuple[int | _Run, ...]]
_COMPILED: dict[int, _Plan] = {}


def _plan(layout: tuple[Field, ...]) -> _Plan:
    """A layout flattened to plain tuples (the hot loops then avoid enum hashing and attribute
    lookups), and the steps to encode or decode it: single fields and :class:`_Run` s."""
    planned = _COMPILED.get(id(layout))
    if planned is not None:
        return planned
    items: list[_Compiled] = []
    for f in layout:
        code = {
            Kind.KEY: _K_KEY,
            Kind.BINARY: _K_BINARY,
            Kind.VAR_BINARY: _K_VAR,
            Kind.PAN: _K_PAN,
            Kind.LITERAL: _K_LITERAL,
        }.get(f.kind, _K_TEXT)
        size = f.length if isinstance(f.length, int) else -1
        valid = _VALID.get(f.kind, bytes.isascii)
        items.append((f, f.name, code, size, f.when, f.optional, valid))
    compiled = tuple(items)
    needed = any(f.when is not None or not isinstance(f.length, int) for f in layout)
    steps: list[int | _Run] = []
    run: list[int] = []
    for i, (f, name, code, size, when, optional, _) in enumerate(compiled):
        if (
            code in (_K_TEXT, _K_KEY)
            and size >= 0
            and when is None
            and not optional
            and (f.kind is Kind.KEY or name in _CACHED_FIELDS)
        ):
            run.append(i)
            continue
        if run:
            steps.append(_Run(compiled, run, needed))
            run = []
        steps.append(i)
    if run:
        steps.append(_Run(compiled, run, needed))
    planned = _COMPILED[id(layout)] = (compiled, tuple(steps))
    return planned


def _decode_fields(
    data: bytes, pos: int, layout: tuple[Field, ...], make_error: Callable[..., HsmProtocolError]
) -> dict[str, Any]:
    compiled, plan = _plan(layout)
    values: dict[str, Any] = {}
    end = len(data)
    for step in plan:
        if isinstance(step, int):
            nxt = _decode_field(data, pos, end, compiled[step], values, make_error)
            if nxt < 0:
                break  # an optional last field left out (pos is at the end)
            pos = nxt
            continue
        run = step
        nxt = pos + run.size
        raw = data[pos:nxt]
        known = run.decoded.get(raw)
        if known is not None:
            values.update(zip(run.names, known, strict=True))
            pos = nxt
            continue
        for i in run.indexes:
            pos = _decode_field(data, pos, end, compiled[i], values, make_error)
        # A key block (``S``) is longer than a variant key: such a run is not remembered by
        # its first ``run.size`` bytes. (Nor can it hit an entry: those have ``U``/``X`` where
        # its first key block has ``S``.)
        if pos == nxt and len(run.decoded) < _CACHE_SIZE:
            run.decoded[raw] = tuple(values[name] for name in run.names)
    if pos != end:
        raise make_error("unexpected data after the last field", None)
    return values


def _decode_field(
    data: bytes,
    pos: int,
    end: int,
    entry: _Compiled,
    values: dict[str, Any],
    make_error: Callable[..., HsmProtocolError],
) -> int:
    """Decode one field at ``pos`` into ``values``; the position after it (-1 for an absent
    optional last field)."""
    f, name, code, size, when, optional, valid = entry
    if when is not None and not when(values):
        return pos
    if optional and pos == end:
        return -1
    if code == _K_KEY:
        if data[pos : pos + 1] == b"S":
            digits = data[pos + 2 : pos + 6]
            if len(digits) != 4 or not digits.isdigit():
                raise make_error(f"field {name}: key block length missing", name)
            size = 1 + int(digits)
        elif size < 0:
            size = f.size(values)
        nxt = pos + size
        raw = data[pos:nxt]
        known = _KEYS.get(raw)
        if known is None:
            if len(raw) != size:
                raise make_error(f"message too short for field {name}", name)
            if not _is_key(raw):
                raise make_error(_text_problem(f, raw, values) or "invalid key", name)
            known = raw.decode("ascii")
            if len(_KEYS) < _CACHE_SIZE:
                _KEYS[raw] = known
        values[name] = known
        return nxt
    if code in (_K_TEXT, _K_BINARY):
        if size < 0:
            size = f.size(values)
        nxt = pos + size
        raw = data[pos:nxt]
        if len(raw) != size:
            raise make_error(f"message too short for field {name}", name)
        if code == _K_BINARY:
            values[name] = raw
        elif valid(raw):
            values[name] = raw.decode("ascii")
        else:
            raise make_error(_text_problem(f, raw, values) or "invalid field", name)
        return nxt
    if code == _K_PAN:
        stop = data.find(PAN_DELIMITER, pos, pos + size + 1)
        if stop < 0:
            raise make_error(f"field {name} not closed by ';'", name)
        raw = data[pos:stop]
        if not valid(raw):
            raise make_error(f"field {name} must be 12 to 19 digits", name)
        values[name] = raw.decode("ascii")
        return stop + 1
    if code == _K_VAR:
        prefix = data[pos : pos + f.prefix]
        if len(prefix) != f.prefix or not _HEXB.issuperset(prefix):
            raise make_error(f"length of field {name} missing or not hex", name)
        pos += f.prefix
        nxt = pos + int(prefix, 16)
        if nxt > end:
            raise make_error(f"field {name} shorter than its length", name)
        values[name] = data[pos:nxt]
        return nxt
    nxt = pos + len(f.literal)  # literal
    if data[pos:nxt] != f.literal:
        raise make_error(f"field {name} missing", name)
    return nxt


def _read_prefix(payload: bytes) -> tuple[str, str]:
    """Header and command/response code, or HsmProtocolError."""
    head = payload[: HEADER_LENGTH + 2]
    if len(head) < HEADER_LENGTH + 2 or not _is_text(head):
        header = payload[:HEADER_LENGTH]
        safe = header.decode("ascii") if header.isascii() and len(header) == 4 else "0000"
        raise HsmProtocolError("no header and command code", header=safe)
    return head[:HEADER_LENGTH].decode("ascii"), head[HEADER_LENGTH:].decode("ascii")


def _is_error_code(value: str) -> bool:
    """Two digits, or payShield's key-block codes: a capital letter and a digit or capital."""
    return (
        len(value) == 2
        and value.isascii()
        and value.isalnum()
        and value.upper() == value
        and (value.isdigit() or value[0].isalpha())
    )


def check_header(header: str) -> None:
    """Raise LocalProtocolError unless ``header`` is 4 printable ASCII characters."""
    if len(header) != HEADER_LENGTH or not header.isascii() or not header.isprintable():
        raise LocalProtocolError("header must be 4 printable ASCII characters")


# --------------------------------------------------------------------------- public API


def encode_request(header: str, request: Request) -> bytes:
    """The payload of a command (without the 2-byte length)."""
    check_header(header)
    return header.encode("ascii") + encode_request_body(request)


def encode_request_body(request: Request) -> bytes:
    """A command's payload without its header (command code and fields): what a client
    encodes once and sends under a fresh header on whichever connection it uses."""
    return request.CODE.encode("ascii") + _encode_fields(request, request.LAYOUT)


def decode_request(payload: bytes) -> tuple[str, Request]:
    """``(header, request)``; a malformed command raises :class:`HsmProtocolError`."""
    header, code = _read_prefix(payload)
    cls = REQUESTS.get(code)
    if cls is None:
        raise HsmProtocolError(
            "unknown command", error_code=COMMAND_DISABLED, header=header, command=code
        )

    def make_error(reason: str, name: str | None) -> HsmProtocolError:
        return HsmProtocolError(reason, field=name, header=header, command=code)

    values = _decode_fields(payload, HEADER_LENGTH + 2, cls.LAYOUT, make_error)
    values.pop("delimiter", None)
    return header, cls(**values)


def encode_response(header: str, code: str, error_code: str, body: Message | None = None) -> bytes:
    """The payload of a response; ``body`` only with error code ``00``."""
    check_header(header)
    if len(code) != 2 or not _is_error_code(error_code):
        raise LocalProtocolError("response code and error code are 2 characters each")
    out = (header + code + error_code).encode("ascii")
    if body is not None and error_code == OK:
        out += _encode_fields(body, body.LAYOUT)
    return out


def encode_error(header: str, command: str, error_code: str) -> bytes:
    """An error response to ``command`` (header made safe if the request's was unreadable)."""
    if len(header) != HEADER_LENGTH or not header.isascii() or not header.isprintable():
        header = "0000"
    return encode_response(header, response_code(command), error_code)


def response_for(request: Request) -> type[ResponseBody]:
    """The body class of the response to ``request`` (``Empty`` for verifications)."""
    return _BODIES.get(response_code(request.CODE), Empty)


def peek_header(payload: bytes) -> str | None:
    """The header of a payload, or ``None`` when there is none (cheap, for matching)."""
    header = payload[:HEADER_LENGTH]
    if len(header) != HEADER_LENGTH or not all(0x20 <= b < 0x7F for b in header):
        return None
    return header.decode("ascii")


def decode_response(payload: bytes) -> HsmResponse:
    """Decode a response; a malformed one raises :class:`HsmProtocolError`."""
    head = payload[: HEADER_LENGTH + 4]
    # The usual case in one decode: printable header and code, then two ASCII digits.
    if (
        len(head) == HEADER_LENGTH + 4
        and head.isascii()
        and _is_error_code(head[HEADER_LENGTH + 2 :].decode("ascii"))
    ):
        text = head.decode("ascii")
        if not text.isprintable():
            _read_prefix(payload)  # raises: no printable header and command code
        header, code, error_code = text[:HEADER_LENGTH], text[HEADER_LENGTH:-2], text[-2:]
    else:
        header, code = _read_prefix(payload)
        raise HsmProtocolError("error code missing or malformed", header=header, command=code)
    if error_code != OK:
        if len(payload) != HEADER_LENGTH + 4:
            raise HsmProtocolError("error response with fields", header=header, command=code)
        return HsmResponse(header, code, error_code)
    cls = _BODIES.get(code, Empty)

    def make_error(reason: str, name: str | None) -> HsmProtocolError:
        return HsmProtocolError(reason, field=name, header=header, command=code)

    values = _decode_fields(payload, HEADER_LENGTH + 4, cls.LAYOUT, make_error)
    return HsmResponse(header, code, error_code, cls(**values))
