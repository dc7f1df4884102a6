"""Keys as TR-31 / ANSI X9.143 key blocks: the LMK's key-block protection keys and the rules a
key block's header imposes on every command.

What ``psec.tr31`` does (wrap, unwrap, header parsing, versions A/B/C/D) is used as is; what it
leaves to its user (it says so: "This library does NOT enforce or verify key block key usage,
algorithm, mode of use") is here:

* the key-block protection keys (KBPKs) derived from the LMK: version ``D`` (AES-256, the
  default for keys at rest) and ``B`` (double-length TDES, for TDES keys exchanged with a party
  whose KEK is TDES). A real payShield keeps a separate key-block LMK; the simulator derives both
  from its one variant LMK with HKDF-SHA256 (RFC 5869) so one configured LMK serves both forms,
  and the LMK itself is never used directly as a KBPK;
* the policy: which key usage, algorithm and mode of use each role in a command needs, and the
  exportability check on export, each refusal with payShield's key-block error code;
* the mapping from payShield's variant key type codes (``001`` ZPK, ...) to TR-31 headers, for
  keys that enter in the variant form and leave as key blocks.

A key under the LMK in key-block form is written ``S`` + the key block, as payShield does; its
length is in the block's header (characters 2-5 after the ``S``). Every function is pure.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from psec import tr31

from hsm_sim.errors import HsmCryptoError, InvalidInputError, KeyTypeError
from hsm_sim.lmk import Lmk, aes_kcv_hex, kcv_hex
from hsm_sim.tdes import adjust_odd_parity

KEY_BLOCK_SCHEME: Final = "S"
#: Versions this simulator writes: D under an AES KBPK, B under a TDES one (both X9.143).
VERSION_AES: Final = "D"
VERSION_TDES: Final = "B"

TDES: Final = "T"
AES: Final = "A"

# TR-31 / X9.143 modes of use.
MODE_ENCRYPT: Final = "E"
MODE_DECRYPT: Final = "D"
MODE_BOTH: Final = "B"
MODE_ANY: Final = "N"
MODE_DERIVE: Final = "X"
MODE_GEN_VERIFY: Final = "C"
MODE_GENERATE: Final = "G"
MODE_VERIFY: Final = "V"

EXPORTABLE: Final = frozenset({"E", "S"})
NON_EXPORTABLE: Final = "N"


class KeyBlockError(HsmCryptoError):
    """Base of the key-block refusals (payShield's ``A`` codes, see the subclasses)."""

    error_code = "A2"


class KeyBlockAuthError(KeyBlockError):
    """The block's MAC does not verify under the KBPK, or it is malformed (payShield A4)."""

    error_code = "A4"


class KeyUsageError(KeyBlockError):
    """The key's usage is not the one the command needs (payShield A6)."""

    error_code = "A6"


class KeyAlgorithmError(KeyBlockError):
    """The key's algorithm is not the one the command needs (payShield A7)."""

    error_code = "A7"


class KeyModeError(KeyBlockError):
    """The key's mode of use does not allow what the command does with it (payShield A8)."""

    error_code = "A8"


class KeyExportError(KeyBlockError):
    """The key's exportability forbids exporting it (payShield AA, invalid export field)."""

    error_code = "AA"


@dataclass(frozen=True, slots=True)
class Use:
    """What a command needs of one key: allowed usages, algorithm and modes of use."""

    usages: frozenset[str]
    algorithm: str
    modes: frozenset[str]
    what: str

    def check(self, header: tr31.Header) -> None:
        """Raise the payShield key-block error when the header does not allow this use."""
        if header.key_usage not in self.usages:
            raise KeyUsageError(f"{self.what}: key usage {header.key_usage} not allowed")
        if header.algorithm != self.algorithm:
            raise KeyAlgorithmError(f"{self.what}: algorithm {header.algorithm} not allowed")
        if header.mode_of_use not in self.modes:
            raise KeyModeError(f"{self.what}: mode of use {header.mode_of_use} not allowed")


def _use(usages: str, algorithm: str, modes: str, what: str) -> Use:
    return Use(frozenset(usages.split()), algorithm, frozenset(modes), what)


# The roles keys play in the simulator's commands (TR-31:2018 / X9.143 tables 6 and 7).
PIN_DECRYPT: Final = _use("P0", TDES, "DBN", "PIN key (decrypt)")
PIN_ENCRYPT: Final = _use("P0", TDES, "EBN", "PIN key (encrypt)")
TDES_BDK: Final = _use("B0", TDES, "XN", "TDES BDK")
AES_BDK: Final = _use("B0", AES, "XN", "AES BDK")
PVK_IBM: Final = _use("V1", TDES, "CVN", "IBM 3624 PVK")
PVK_VISA: Final = _use("V2", TDES, "CVN", "Visa PVK")
CVK_GENERATE: Final = _use("C0", TDES, "CGN", "CVK (generate)")
CVK_VERIFY: Final = _use("C0", TDES, "CVN", "CVK (verify)")
MAC_RETAIL_GENERATE: Final = _use("M1 M3", TDES, "CGN", "retail MAC key (generate)")
MAC_RETAIL_VERIFY: Final = _use("M1 M3", TDES, "CVN", "retail MAC key (verify)")
MAC_CMAC_GENERATE: Final = _use("M6", AES, "CGN", "CMAC key (generate)")
MAC_CMAC_VERIFY: Final = _use("M6", AES, "CVN", "CMAC key (verify)")
MK_AC: Final = _use("E0", TDES, "XN", "EMV MK-AC")
KEK_EXPORT: Final = _use("K0", TDES, "EBN", "KEK (export)")
KEK_IMPORT: Final = _use("K0", TDES, "DBN", "KEK (import)")
AES_KEK_EXPORT: Final = _use("K0", AES, "EBN", "AES KEK (export)")
AES_KEK_IMPORT: Final = _use("K0", AES, "DBN", "AES KEK (import)")

#: payShield variant key type code -> (usage, mode of use) of the equivalent key block.
TYPE_HEADERS: Final[dict[str, tuple[str, str]]] = {
    "000": ("K0", MODE_BOTH),  # ZMK
    "001": ("P0", MODE_BOTH),  # ZPK
    "002": ("P0", MODE_BOTH),  # TPK
    "003": ("M3", MODE_GEN_VERIFY),  # TAK
    "008": ("M3", MODE_GEN_VERIFY),  # ZAK
    "009": ("B0", MODE_DERIVE),  # BDK
    "109": ("E0", MODE_DERIVE),  # MK-AC
    "402": ("C0", MODE_GEN_VERIFY),  # CVK
}


@dataclass(frozen=True, slots=True)
class Attributes:
    """The header fields a key is generated or imported with."""

    usage: str
    algorithm: str = TDES
    mode: str = MODE_BOTH
    version: str = "00"
    exportability: str = "E"

    @classmethod
    def for_type(cls, key_type: str, exportability: str = "E") -> Attributes:
        """The key-block attributes of a payShield variant key type code."""
        try:
            usage, mode = TYPE_HEADERS[key_type.upper()]
        except KeyError:
            raise KeyTypeError("no key-block usage for this key type") from None
        return cls(usage, TDES, mode, "00", exportability)

    def header(self, version_id: str) -> tr31.Header:
        try:
            return tr31.Header(
                version_id, self.usage, self.algorithm, self.mode, self.version, self.exportability
            )
        except tr31.HeaderError:
            raise InvalidInputError("invalid key-block header field") from None


def header_attributes(header: tr31.Header, exportability: str | None = None) -> Attributes:
    return Attributes(
        header.key_usage,
        header.algorithm,
        header.mode_of_use,
        header.version_num,
        exportability or header.exportability,
    )


def derive_kbpks(lmk: bytes) -> tuple[bytes, bytes]:
    """(AES-256 KBPK for version D, double-length TDES KBPK for version B) from the clear LMK."""
    aes = HKDF(hashes.SHA256(), 32, salt=None, info=b"payswitch hsm_sim LMK KBPK D").derive(lmk)
    tdes = HKDF(hashes.SHA256(), 16, salt=None, info=b"payswitch hsm_sim LMK KBPK B").derive(lmk)
    return aes, adjust_odd_parity(tdes)


def version_for(algorithm: str) -> str:
    """The key-block version a KBPK of ``algorithm`` protects with: D (AES) or B (TDES)."""
    return VERSION_AES if algorithm == AES else VERSION_TDES


def is_key_block(value: str) -> bool:
    return value[:1] == KEY_BLOCK_SCHEME


def block_length(value: str) -> int | None:
    """The length of ``S`` + key block from its header, or None when unreadable."""
    digits = value[2:6]
    if len(digits) != 4 or not digits.isdigit():
        return None
    return 1 + int(digits)


def wrap(kbpk: bytes, version: str, attributes: Attributes, key: bytes) -> str:
    """A clear key as a key block of ``version`` (D under an AES KBPK, B under a TDES one)."""
    try:
        return tr31.wrap(kbpk, attributes.header(version), key)
    except (tr31.KeyBlockError, tr31.HeaderError):
        raise InvalidInputError("key cannot be wrapped in a key block") from None


def unwrap(kbpk: bytes, block: str) -> tuple[tr31.Header, bytes]:
    """Header and clear key of a key block; any failure (MAC, format, length) is A4.

    psec's messages can quote block data, so they are dropped here, never passed on."""
    try:
        header, key = tr31.unwrap(kbpk, block)
    except (tr31.KeyBlockError, tr31.HeaderError, ValueError):
        raise KeyBlockAuthError("key block does not authenticate under its KBPK") from None
    return header, key


def new_key(algorithm: str) -> bytes:
    """A fresh random key: double-length TDES with odd parity, or AES-128."""
    if algorithm == TDES:
        return adjust_odd_parity(os.urandom(16))
    if algorithm == AES:
        return os.urandom(16)
    raise KeyAlgorithmError("only T (TDES) and A (AES) keys are generated")


def check_value(algorithm: str, key: bytes) -> str:
    """The 6-hex KCV: TDES encryption of zeros, or AES-CMAC of a zero block (X9.24-3)."""
    return aes_kcv_hex(key) if algorithm == AES else kcv_hex(key)


class LmkBlocks:
    """Keys under the LMK in key-block form (``S`` + block): wrap, and unwrap with a bounded
    cache (a busy HSM sees the same working keys on every command; the header is re-checked
    against each command's needs every time, only the crypto is remembered)."""

    __slots__ = ("_b", "_cache", "_d")

    def __init__(self, lmk: Lmk) -> None:
        self._d, self._b = derive_kbpks(lmk.secret_for_derivation())
        self._cache: dict[str, tuple[tr31.Header, bytes]] = {}

    def wrap(self, attributes: Attributes, key: bytes, version: str = VERSION_AES) -> str:
        kbpk = self._d if version == VERSION_AES else self._b
        return KEY_BLOCK_SCHEME + wrap(kbpk, version, attributes, key)

    def unwrap(self, value: str) -> tuple[tr31.Header, bytes]:
        """Header and clear key of ``S`` + block; A4 when it does not authenticate."""
        cached = self._cache.get(value)
        if cached is not None:
            return cached
        if not is_key_block(value) or block_length(value) != len(value):
            raise KeyBlockAuthError("key under LMK must be 'S' and a whole key block")
        kbpk = self._d if value[1:2] == VERSION_AES else self._b
        if value[1:2] not in (VERSION_AES, VERSION_TDES):
            raise KeyBlockAuthError("key block under the LMK must be version D or B")
        cached = unwrap(kbpk, value[1:])
        if len(self._cache) >= 4096:
            self._cache.clear()
        self._cache[value] = cached
        return cached
