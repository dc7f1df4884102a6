"""Issuer simulator configuration (one file for every simulated issuer)."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic.dataclasses import dataclass

from kit.conf import FROZEN
from kit.linkdialect import TranslationConfig, check_link_dialect, mti_is_ascii
from protocols.framing import FRAMINGS


@dataclass(config=FROZEN)
class Faults:
    latency_ms: float = 0.0
    """Added before every answer."""
    drop_ratio: float = Field(default=0.0, ge=0.0, le=1.0)
    """Share of requests processed but never answered (the answer is lost)."""
    disconnect_after: int = 0
    """Close the connection after this many messages (0: never)."""
    apply_to_network: bool = False
    """Apply latency and drops to 0800 network messages too (then sign-on fails)."""
    bad_mac_ratio: float = Field(default=0.0, ge=0.0, le=1.0)
    """Share of MACed answers sent with a wrong MAC (processed, but the switch cannot trust
    the answer)."""


@dataclass(config=FROZEN)
class IssuerEndpoint:
    id: str
    host: str = "127.0.0.1"
    port: int = 9583
    faults: Faults | None = None
    """Overrides the file-wide faults for this issuer."""
    dialect: str = "terminal"
    """ISO 8583 dialect this host speaks (``protocols.dialects.DIALECTS``); a 1993 one is
    translated at the host's edge (``protocols.translate``): the host logic stays canonical
    and answers 1993 requests with 1993 MTIs and action codes. The switch's link to this
    host must name the same dialect."""
    header: str = ""
    """Static header before every message, as the switch's link has it."""
    translation: TranslationConfig | None = None
    """Overrides of the translation table (1993 dialects only), as the switch's link."""
    also_accept: str = ""
    """A second dialect answered on this port, chosen per connection by its first message:
    an ASCII MTI begins with a digit byte (0x30-0x39), a BCD one with 0x00-0x09. For test
    rigs whose other switch speaks another dialect than the demo's link (the jPOS rig's beta
    channel speaks SPEC's ``iso87-ascii`` while the demo's beta link is ``iso87-bcd``). One
    of the two must have an ASCII MTI and the other a BCD one; no static header."""
    framing: str = "binary2"
    """The link's framing: ``binary2`` (SPEC), ``ascii4`` or ``binary2-tpdu`` (answers carry
    the request's TPDU, addresses swapped); the gateway's ``[[links]] framing`` must match."""
    allowed_clients: tuple[str, ...] = Field(default=(), validate_default=True)
    """Client certificates this host serves: subject CN, or ``sha256:`` + hex fingerprint of the
    DER certificate (as hsm-sim's ``[tls] allowed_clients``). Required: a bank's host pins
    the acquirer it serves, any other certificate of the CA is refused."""

    @field_validator("framing")
    @classmethod
    def _known_framing(cls, name: str) -> str:
        if name not in FRAMINGS:
            raise ValueError(f"unknown framing {name!r}; known: {', '.join(sorted(FRAMINGS))}")
        return name

    @field_validator("allowed_clients")
    @classmethod
    def _pinned(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        if not names or not all(n.strip() for n in names):
            raise ValueError(
                "name the client certificate(s) this issuer host serves (CN or sha256:"
                " fingerprint), e.g. the gateway link's client_cert"
            )
        return names

    @field_validator("dialect")
    @classmethod
    def _known_dialect(cls, dialect: str) -> str:
        check_link_dialect(dialect, "", None)
        return dialect

    def __post_init__(self) -> None:
        check_link_dialect(self.dialect, self.header, self.translation)
        if self.also_accept:
            check_link_dialect(self.also_accept, "", None)
            if self.header:
                raise ValueError("also_accept: not with a static header (the first byte decides)")
            if mti_is_ascii(self.dialect) == mti_is_ascii(self.also_accept):
                raise ValueError(
                    f"also_accept: {self.also_accept!r} and {self.dialect!r} both have "
                    f"{'an ASCII' if mti_is_ascii(self.dialect) else 'a BCD'} MTI: a "
                    "connection's first byte could not tell them apart"
                )


@dataclass(config=FROZEN)
class IssuerSimConfig:
    data: str = "data.toml"
    """Dataset (cards, issuers, behaviour), relative to this file."""
    pki_dir: str = "../../var/certs"
    issuers: tuple[IssuerEndpoint, ...] = ()
    faults: Faults = Field(default_factory=Faults)
    log_level: str = "info"
    max_records: int = Field(default=1_000_000, ge=1)
    """Postings and answers (for repeats and reversals) kept per issuer, oldest first out."""
    max_synthetic_accounts: int = Field(default=1_000_000, ge=1)
    """Accounts of synthetic load-test cards kept per issuer, oldest first out."""
    postings_file: str = ""
    """Posting file written on ``SIGUSR1`` (``{issuer}`` is replaced by the issuer id; relative
    to this file); empty: no export. See ``issuer_sim/postings.py``."""

    def endpoint(self, issuer: str) -> IssuerEndpoint:
        for ep in self.issuers:
            if ep.id == issuer:
                return ep
        raise KeyError(f"issuer {issuer!r} is not in the issuer simulator config")
