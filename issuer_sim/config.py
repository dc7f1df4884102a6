"""Issuer simulator configuration (one file for every simulated issuer)."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic.dataclasses import dataclass

from kit.conf import FROZEN
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


@dataclass(config=FROZEN)
class IssuerSimConfig:
    data: str = "data.toml"
    """Dataset (cards, issuers, behaviour), relative to this file."""
    pki_dir: str = "../../var/certs"
    issuers: tuple[IssuerEndpoint, ...] = ()
    faults: Faults = Field(default_factory=Faults)
    log_level: str = "info"
    postings_file: str = ""
    """Posting file written on ``SIGUSR1`` (``{issuer}`` is replaced by the issuer id; relative
    to this file); empty: no export. See ``issuer_sim/postings.py``."""

    def endpoint(self, issuer: str) -> IssuerEndpoint:
        for ep in self.issuers:
            if ep.id == issuer:
                return ep
        raise KeyError(f"issuer {issuer!r} is not in the issuer simulator config")
