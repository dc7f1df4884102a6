"""The demo/test dataset (issuers, cards, tokens, terminals, merchants, QR acquirers, risk):
the shape of ``shared/demo/demo.toml``, shared by the gateway and the simulators."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic.dataclasses import dataclass

from kit.conf import FROZEN, load


@dataclass(config=FROZEN)
class KeySpec:
    key: str = dataclasses.field(repr=False)
    """Clear double-length TDES key, 32 hex; an ``aes_dukpt`` BDK is AES-128, 32 hex (test keys
    only)."""
    kcv: str = ""
    """Key check value: first 3 bytes of the key encrypting 8 zero bytes (TDES), of its AES-CMAC
    of 16 zero bytes (AES)."""


@dataclass(config=FROZEN)
class HsmKeys:
    lmk: KeySpec


@dataclass(config=FROZEN)
class Issuer:
    id: str
    bins: tuple[str, ...] = ()
    zpk: KeySpec | None = None
    zak: KeySpec | None = None
    pvk: KeySpec | None = None
    cvk: KeySpec | None = None
    imk_ac: KeySpec | None = None
    zmk: KeySpec | None = None
    """The issuer link's zone master key (shared with the issuer on paper, in components): new
    ZPKs and ZAKs travel under it as key blocks (README, "Issuer link"). Not in the shared
    demo data; without it the link keeps its configured keys."""


@dataclass(config=FROZEN)
class Card:
    pan: str = dataclasses.field(repr=False)
    issuer: str
    expiry: str
    """YYMM"""
    pin: str = dataclasses.field(repr=False)
    balance: int = 0
    status: Literal["active", "lost", "stolen", "blocked"] = "active"
    country: str = "156"
    pan_seq: str = "00"


@dataclass(config=FROZEN)
class Token:
    token: str = dataclasses.field(repr=False)
    pan: str = dataclasses.field(repr=False)
    expiry: str
    status: Literal["active", "suspended"] = "active"


@dataclass(config=FROZEN)
class Terminal:
    id: str
    merchant: str
    kind: Literal["pos", "nfc", "atm"] = "pos"
    key_mode: Literal["tpk", "dukpt", "aes_dukpt"] = "tpk"
    mac_required: bool = False
    tpk: KeySpec | None = None
    bdk: KeySpec | None = None
    tak: KeySpec | None = None


@dataclass(config=FROZEN)
class Merchant:
    id: str
    name: str
    mcc: str
    country: str
    city: str


@dataclass(config=FROZEN)
class QrAcquirer:
    id: str
    api_key: str = dataclasses.field(repr=False)
    merchants: tuple[str, ...] = ()


@dataclass(config=FROZEN)
class SyntheticRange:
    prefix: str
    issuer: str
    pin: str
    expiry: str
    balance: int


@dataclass(config=FROZEN)
class IssuerBehaviour:
    pin_tries: int = 3
    synthetic: tuple[SyntheticRange, ...] = ()


@dataclass(config=FROZEN)
class Dataset:
    hsm: HsmKeys | None = None
    issuers: tuple[Issuer, ...] = ()
    cards: tuple[Card, ...] = ()
    tokens: tuple[Token, ...] = ()
    terminals: tuple[Terminal, ...] = ()
    merchants: tuple[Merchant, ...] = ()
    qr_acquirers: tuple[QrAcquirer, ...] = ()
    risk: dict[str, Any] = Field(default_factory=dict, repr=False)
    """Risk rules; validated by the risk engine's own config."""
    issuer_behaviour: IssuerBehaviour = Field(default_factory=IssuerBehaviour)

    def issuer(self, issuer_id: str) -> Issuer:
        for issuer in self.issuers:
            if issuer.id == issuer_id:
                return issuer
        raise KeyError(issuer_id)


def load_dataset(path: Path) -> Dataset:
    return load(Dataset, path)
