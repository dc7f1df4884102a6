"""hsm-sim configuration: one frozen dataclass from TOML; unknown keys are errors.

Example (``conf/demo/hsm.toml``)::

    host = "127.0.0.1"
    port = 1500
    lmk = "ECC25208B6FD2023E9767A5489BC9415"   # demo LMK, test key only

    [tls]                  # optional
    cert_file = "server.crt"
    key_file = "server.key"
    ca_file = "ca.crt"
    allowed_clients = ["gateway", "sha256:AB12..."]

Relative paths are taken from the configuration file's folder.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import ssl
import tomllib
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic.dataclasses import dataclass

from hsm_sim.errors import HsmCryptoError
from hsm_sim.lmk import Lmk
from kit.pki import policy_context

_FROZEN = pydantic.ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class HsmConfigError(Exception):
    """The configuration cannot be used (the message names the setting, never a key)."""


@dataclass(config=_FROZEN)
class TlsConfig:
    """TLS for host connections, with an allow-list of client certificates."""

    cert_file: str = ""
    """Server certificate chain (PEM)."""
    key_file: str = ""
    """Server private key (PEM)."""
    ca_file: str = ""
    """CA certificates that client certificates must chain to (PEM)."""
    require_client_cert: bool = True
    """Refuse clients without a certificate from ``ca_file``."""
    allowed_clients: tuple[str, ...] = ()
    """Client certificates allowed to connect: subject CN, or ``sha256:`` + hex fingerprint of
    the DER certificate. Empty: any certificate from ``ca_file``."""
    handshake_timeout: float = 10.0
    """Seconds for a client to complete the TLS handshake."""


@dataclass(config=_FROZEN)
class HsmConfig:
    """The HSM simulator's listener and keys."""

    host: str = "127.0.0.1"
    """Bind address."""
    port: int = pydantic.Field(default=1500, ge=0, le=65535)
    """TCP port (0 picks a free one; the server reports it)."""
    lmk: str = dataclasses.field(default="", repr=False)
    """The LMK as 32 hex (demo and tests only; see ``lmk_env``)."""
    lmk_env: str = ""
    """Name of an environment variable holding the LMK as 32 hex (instead of ``lmk``)."""
    firmware: str = "0007-E000"
    """Firmware string answered by NC (9 characters)."""
    disabled_commands: tuple[str, ...] = ()
    """Command codes answered with error 68 (command disabled)."""
    max_frame: int = pydantic.Field(default=8192, ge=16, le=65535)
    """Largest accepted command in bytes; a longer frame closes that connection."""
    max_connections: int = pydantic.Field(default=256, ge=1)
    """Connections beyond this are closed at once."""
    max_connections_per_client: int = pydantic.Field(default=64, ge=1)
    """Connections from one client address; beyond, closed at once, so one client (or the
    connections it forgot) cannot take every slot and lock the others out."""
    idle_timeout: float = pydantic.Field(default=300.0, gt=0)
    """Seconds a connection may send nothing before it is closed (idle connections held for
    ever filled ``max_connections``); the gateway reconnects at its next command."""
    allowed_addresses: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    """Client addresses served (IP networks, CIDR); any other is closed at once. Loopback by
    default: an HSM is open to named hosts only. On plain TCP (no ``[tls]``) a network of every
    address is refused: name the clients, or use mutual TLS."""
    partial_frame_timeout: float = pydantic.Field(default=10.0, gt=0)
    """Seconds a connection may leave a frame half-sent before it is closed."""
    backend: Literal["asyncio", "trio"] = "asyncio"
    """Event loop: asyncio (with uvloop when installed) or trio."""
    tls: TlsConfig | None = None
    """TLS settings; plain TCP when absent."""

    @pydantic.field_validator("allowed_addresses")
    @classmethod
    def _check_networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError("allowed_addresses: each entry is an IP network") from None
        return value

    def __post_init__(self) -> None:
        if self.tls is None and any(n.prefixlen == 0 for n in self.networks()):
            raise ValueError(
                "allowed_addresses names every address on plain TCP: list the clients' "
                "networks, or configure [tls] (mutual TLS)"
            )

    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """``allowed_addresses`` parsed."""
        return tuple(ipaddress.ip_network(a, strict=False) for a in self.allowed_addresses)

    def load_lmk(self, environ: dict[str, str] | None = None) -> Lmk:
        """The LMK from ``lmk`` or ``lmk_env``; a missing or bad one is an HsmConfigError."""
        environ = dict(os.environ) if environ is None else environ
        if bool(self.lmk) == bool(self.lmk_env):
            raise HsmConfigError("give exactly one of 'lmk' or 'lmk_env'")
        text = self.lmk or environ.get(self.lmk_env, "")
        if not text:
            raise HsmConfigError(f"environment variable {self.lmk_env} is not set")
        try:
            return Lmk(text.strip())
        except HsmCryptoError as exc:
            raise HsmConfigError(f"LMK is not usable: {exc.reason}") from None

    def server_ssl_context(self) -> ssl.SSLContext | None:
        """The server-side TLS context (the project's policy: TLS 1.2 minimum, AEAD ciphers),
        or ``None`` for plain TCP."""
        if self.tls is None:
            return None
        tls = self.tls
        ctx = policy_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
            if tls.ca_file:
                ctx.load_verify_locations(tls.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise HsmConfigError(f"TLS files cannot be loaded: {exc}") from None
        if tls.require_client_cert or tls.allowed_clients:
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


def parse_config(data: dict[str, Any], base: Path | None = None) -> HsmConfig:
    """An HsmConfig from a TOML-shaped dict; TLS paths are made relative to ``base``."""
    data = dict(data)
    tls = data.get("tls")
    if base is not None and isinstance(tls, dict):
        data["tls"] = {
            k: (str(base / v) if k.endswith("_file") and isinstance(v, str) and v else v)
            for k, v in tls.items()
        }
    try:
        return HsmConfig(**data)
    except pydantic.ValidationError as exc:
        # Name the settings and the problems, never the values (one could be the LMK).
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}"
            for err in exc.errors(include_input=False, include_url=False)
        )
        raise HsmConfigError(f"invalid hsm-sim configuration: {problems}") from None


def load_config(path: str | Path) -> HsmConfig:
    """Read and validate a TOML configuration file."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise HsmConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise HsmConfigError(f"{path} is not valid TOML: {exc}") from None
    return parse_config(data, path.parent)
