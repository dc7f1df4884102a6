"""The switch's working keys, held only in their HSM form (``U`` + 32 hex under the LMK).

Demo and tests: the dataset carries clear test keys (``demo.toml``); :func:`load_keys` checks
each against its check value and encrypts it under the demo LMK of the dataset's ``[hsm]``
once, at start. Nothing but the LMK form is kept afterwards, and no clear key is ever sent to
the HSM or logged.

Production: keys would arrive already under the LMK (printed at a key ceremony, or imported
from a ZMK with the HSM's ``A6``) and the gateway would read that form as it is; a dataset key
given as ``U`` + 32 hex is taken unchanged here for that reason, and then no clear LMK is needed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

from hsm_sim.errors import HsmCryptoError
from hsm_sim.keyblock import Attributes, LmkBlocks
from hsm_sim.lmk import Lmk, aes_kcv_hex, kcv_hex, parse_clear_key
from kit.conf import ConfigError
from kit.dataset import Dataset, KeySpec


class KeyLoadError(ConfigError):
    """A key of the dataset is unusable; the message names the key, never its value."""


@dataclass(frozen=True, slots=True)
class TerminalKeys:
    """A terminal's keys under the LMK (``None`` where the terminal has none)."""

    terminal: str
    key_mode: str
    """``tpk`` (fixed PIN key), ``dukpt`` (ANSI X9.24-1 TDES DUKPT from the BDK) or
    ``aes_dukpt`` (ANSI X9.24-3 AES DUKPT from an AES-128 BDK, PIN in field 123)."""
    mac_required: bool = False
    tpk: str | None = field(default=None, repr=False)
    bdk: str | None = field(default=None, repr=False)
    tak: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class IssuerKeys:
    """The switch's side of an issuer link: the PIN and MAC zone keys under the LMK, as one
    generation. A key change makes a new object (:meth:`KeyStore.install`): a transaction that
    holds the old one finishes with its keys."""

    issuer: str
    zpk: str | None = field(default=None, repr=False)
    zak: str | None = field(default=None, repr=False)
    zmk: str | None = field(default=None, repr=False)
    """The link's ZMK under the LMK (``S`` + key block), for key exchange; None: no exchange."""
    generation: int = 0
    """0 for the configured keys, then one more per key change on the link."""
    zpk_kcv: str = ""
    zak_kcv: str = ""
    changed_at: dt.datetime | None = None
    """When this generation was installed (None: at start, from the dataset)."""


@dataclass(frozen=True, slots=True)
class KeyStore:
    lmk_kcv: str
    """Check value (6 hex) of the LMK these keys are under; compared with the HSM's at start."""
    terminals: Mapping[str, TerminalKeys] = field(default_factory=dict)
    issuers: dict[str, IssuerKeys] = field(default_factory=dict)

    def terminal(self, terminal_id: str) -> TerminalKeys | None:
        return self.terminals.get(terminal_id)

    def issuer(self, issuer_id: str) -> IssuerKeys | None:
        return self.issuers.get(issuer_id)

    def install(self, keys: IssuerKeys) -> None:
        """Make ``keys`` the issuer's current generation (new messages use it from now on)."""
        self.issuers[keys.issuer] = keys


def key_under_lmk(
    lmk: Lmk | None, spec: KeySpec | None, name: str, *, aes: bool = False
) -> str | None:
    """One dataset key in its LMK form, after checking its KCV when it is given in clear
    (``aes``: an AES-128 key, whose KCV is its AES-CMAC's)."""
    if spec is None:
        return None
    value = spec.key.strip()
    if value[:1] in ("U", "u") and len(value) == 33:
        return "U" + value[1:].upper()  # already under the LMK (the production case)
    if lmk is None:
        raise KeyLoadError(f"{name}: a clear key needs the LMK of the dataset's [hsm]")
    try:
        clear = parse_clear_key(value, what=name)
    except HsmCryptoError:
        raise KeyLoadError(f"{name}: must be 32 hex characters") from None
    kcv = aes_kcv_hex(clear) if aes else kcv_hex(clear)
    if spec.kcv and kcv != spec.kcv.upper():
        raise KeyLoadError(f"{name}: key check value does not match the dataset's kcv")
    return lmk.encrypt(clear)


def dataset_lmk(dataset: Dataset) -> Lmk | None:
    """The demo LMK of the dataset's ``[hsm]`` (checked against its kcv), ``None`` without one."""
    if dataset.hsm is None:
        return None
    try:
        lmk = Lmk(parse_clear_key(dataset.hsm.lmk.key.strip(), what="hsm.lmk"))
    except HsmCryptoError:
        raise KeyLoadError("hsm.lmk: not a usable double-length key") from None
    if dataset.hsm.lmk.kcv and lmk.check_value() != dataset.hsm.lmk.kcv.upper():
        raise KeyLoadError("hsm.lmk: key check value does not match the dataset's kcv")
    return lmk


#: The key-block header of each dataset key held as a key block (``load_keys(key_blocks=True)``):
#: (usage, mode of use) for what the switch does with it; none is exportable.
BLOCK_ROLES: Mapping[str, tuple[str, str]] = {
    "tpk": ("P0", "D"),  # the switch only decrypts terminals' PIN blocks (CA source)
    "bdk": ("B0", "X"),  # derives the DUKPT keys (G0, Z0)
    "tak": ("M3", "C"),  # terminal MACs
    "zpk": ("P0", "B"),  # encrypts for the issuer (CA/G0/Z0/CC), decrypts in stand-in (EC)
    "zak": ("M3", "C"),  # issuer-link MACs, both ways
    "pvk": ("V2", "V"),  # stand-in's PVV check (EC)
    "imk_ac": ("E0", "X"),  # stand-in's ARQC check (KQ)
}


def key_under_lmk_as(
    lmk: Lmk | None,
    spec: KeySpec | None,
    name: str,
    role: str,
    *,
    key_blocks: bool,
    aes: bool = False,
) -> str | None:
    """:func:`key_under_lmk`, or with ``key_blocks`` the same key as ``S`` + a key block under
    the LMK with ``role``'s header (:data:`BLOCK_ROLES`), which the HSM then enforces. A key
    given already under the LMK is kept in its form."""
    variant = key_under_lmk(lmk, spec, name, aes=aes)
    if not key_blocks or variant is None or lmk is None or spec is None:
        return variant
    if spec.key.strip()[:1] in ("U", "u", "S", "s"):
        return variant
    usage, mode = BLOCK_ROLES[role]
    attributes = Attributes(usage, "A" if aes else "T", mode, "00", "N")
    return LmkBlocks(lmk).wrap(attributes, lmk.decrypt(variant))


def load_keys(dataset: Dataset, *, key_blocks: bool = False) -> KeyStore:
    """Every terminal and issuer key of the dataset under the LMK (see the module doc); with
    ``key_blocks`` as TR-31 key blocks (:data:`BLOCK_ROLES`), else in the variant form."""
    lmk = dataset_lmk(dataset)
    lmk_kcv = lmk.check_value() if lmk is not None else ""
    terminals: dict[str, TerminalKeys] = {}

    def under(spec: KeySpec | None, name: str, role: str, aes: bool = False) -> str | None:
        return key_under_lmk_as(lmk, spec, name, role, key_blocks=key_blocks, aes=aes)

    for t in dataset.terminals:
        keys = TerminalKeys(
            terminal=t.id,
            key_mode=t.key_mode,
            mac_required=t.mac_required,
            tpk=under(t.tpk, f"terminal {t.id} tpk", "tpk"),
            bdk=under(t.bdk, f"terminal {t.id} bdk", "bdk", aes=t.key_mode == "aes_dukpt"),
            tak=under(t.tak, f"terminal {t.id} tak", "tak"),
        )
        if t.mac_required and keys.tak is None:
            raise KeyLoadError(f"terminal {t.id}: mac_required without a tak")
        terminals[t.id] = keys
    issuers = {
        i.id: IssuerKeys(
            issuer=i.id,
            zpk=under(i.zpk, f"issuer {i.id} zpk", "zpk"),
            zak=under(i.zak, f"issuer {i.id} zak", "zak"),
            zmk=zmk_under_lmk(lmk, i.zmk, f"issuer {i.id} zmk"),
            zpk_kcv=_kcv(i.zpk),
            zak_kcv=_kcv(i.zak),
        )
        for i in dataset.issuers
    }
    return KeyStore(lmk_kcv=lmk_kcv, terminals=terminals, issuers=issuers)


def _kcv(spec: KeySpec | None) -> str:
    return "" if spec is None else spec.kcv.upper()


def zmk_under_lmk(lmk: Lmk | None, spec: KeySpec | None, name: str) -> str | None:
    """A link ZMK as a key block under the LMK (``S``: usage K0, TDES, encrypt and decrypt,
    not exportable), after its KCV check; a ZMK given under the LMK (``U``/``S``) is kept."""
    if spec is None:
        return None
    value = spec.key.strip()
    if value[:1] in ("S", "s"):
        return value.upper()
    variant = key_under_lmk(lmk, spec, name)
    if value[:1] in ("U", "u") or lmk is None or variant is None:
        return variant
    clear = lmk.decrypt(variant)
    return LmkBlocks(lmk).wrap(Attributes("K0", "T", "B", "00", "N"), clear)
