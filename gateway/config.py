"""The gateway's configuration: one frozen dataclass per component, loaded from TOML."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic.dataclasses import dataclass

from kit.conf import FROZEN, ConfigError, load
from kit.linkdialect import TranslationConfig, check_link_dialect
from protocols.business_day import BusinessCalendar, BusinessDayError, load_zone, parse_cutover
from protocols.currency import is_payment_currency
from protocols.framing import FRAMINGS

# Terminal dialects: the 1987 ones, whose fields are the canonical message the pipeline sees
# as they decode; a 1993 dialect needs translation first.
TERMINAL_DIALECTS = ("iso87-ascii", "iso87-ascii-hex", "iso87-bcd", "terminal")


def known_framing(name: str) -> str:
    if name not in FRAMINGS:
        raise ValueError(f"unknown framing {name!r}; known: {', '.join(sorted(FRAMINGS))}")
    return name


def terminal_dialect(name: str) -> str:
    if name not in TERMINAL_DIALECTS:
        raise ValueError(
            f"unknown terminal dialect {name!r}; known: {', '.join(TERMINAL_DIALECTS)}"
        )
    return name


@dataclass(config=FROZEN)
class ListenerConfig:
    """A further terminal listener beside ``port`` and ``tls_port``, with its own framing and
    dialect; ``host`` and every limit of ``[terminal]`` apply to it too."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,16}$")]
    """Its label in metrics and logs (``tcp`` and ``tls`` are the SPEC listeners')."""
    port: int
    """Port (0 picks a free one; -1 disables)."""
    tls: bool = False
    """TLS with ``[terminal] tls_cert``."""
    framing: str = "binary2"
    """``binary2``, ``ascii4`` or ``binary2-tpdu`` (README "Framings")."""
    dialect: str = "iso87-ascii"
    """A 1987 dialect of ``protocols.dialects``: ``iso87-ascii``, ``iso87-ascii-hex``,
    ``iso87-bcd``."""

    _framing = field_validator("framing")(known_framing)
    _dialect = field_validator("dialect")(terminal_dialect)


@dataclass(config=FROZEN)
class TerminalConfig:
    host: str = "127.0.0.1"
    """Bind address of the terminal listeners."""
    port: int = 8583
    """Plain TCP port (0 picks a free one; -1 disables)."""
    tls_port: int = 8584
    """TLS port (0 picks a free one; -1 disables)."""
    tls_cert: str = "gateway"
    """Certificate name in the PKI directory for the TLS listener."""
    max_frame: int = 8192
    """Largest accepted message, bytes."""
    partial_frame_timeout: float = Field(default=10.0, gt=0)
    """Seconds a partial frame may go without a new byte before the connection is closed."""
    frame_deadline: float = Field(default=15.0, gt=0)
    """Seconds a frame may take from its first byte to its last, however it is dripped: each
    gap within ``partial_frame_timeout`` does not make a slow-loris connection last for ever
    (a 109-byte purchase at 200 ms a byte took 21.9 s and was answered)."""
    idle_timeout: float = Field(default=300.0, gt=0)
    """Seconds a connection may send nothing at all (a zero-length keep-alive counts) before it
    is closed: idle connections held for ever cost a file descriptor and about 8 KB each. Keep
    it above ``request_timeout``: a terminal waiting for its answer sends nothing."""
    max_connections: int = Field(default=10_000, ge=1)
    """Connections per listener (TCP and TLS each); beyond, a new one is closed at once. Bounds
    the file descriptors and memory a flood can take (keep it under the open-files limit)."""
    max_connections_per_address: int = Field(default=1_000, ge=1)
    """Connections per listener from one source address; beyond, closed at once, so one
    machine cannot take the whole listener. Not small: terminals on a mobile network reach us
    through their carrier's few NAT addresses."""
    tls_handshake_timeout: float = Field(default=10.0, gt=0)
    """Seconds a TLS client has to complete its handshake (a connection counts against the
    caps only once it has)."""
    max_in_flight: int = 64
    """Requests processed at once per connection; reading pauses beyond (back-pressure)."""
    max_pending_per_terminal: int = Field(default=1_000, ge=1)
    """Requests of one terminal id (field 41) in the switch at once, over all connections;
    beyond, answered 96 at once, not processed: one id (a device, or a flood using its name)
    cannot fill the switch's pending tables. High: the load generator drives one id at
    hundreds in flight."""
    request_timeout: float = 30.0
    """Overall budget for one request inside the switch, seconds."""
    framing: str = "binary2"
    """Framing of ``port`` and ``tls_port``: SPEC's ``binary2``; ``ascii4`` and
    ``binary2-tpdu`` depart from SPEC (README "Framings")."""
    dialect: str = "iso87-ascii"
    """ISO 8583 dialect of ``port`` and ``tls_port``: SPEC's ``iso87-ascii``."""
    listeners: tuple[ListenerConfig, ...] = ()
    """Further listeners, each with its own port, framing and dialect (the demo's UnionPay
    style listener: ``binary2-tpdu`` and ``iso87-bcd`` on 8585)."""

    _framing = field_validator("framing")(known_framing)
    _dialect = field_validator("dialect")(terminal_dialect)

    def __post_init__(self) -> None:
        names = ["tcp", "tls", *(x.name for x in self.listeners)]
        if len(set(names)) != len(names):
            raise ValueError("terminal listener names must be unique and not tcp or tls")
        for name, framing in [("framing", self.framing)] + [
            (f"listeners.{i}.framing", x.framing) for i, x in enumerate(self.listeners)
        ]:
            if self.max_frame > FRAMINGS[framing].limit:
                raise ValueError(
                    f"{name}: {framing} carries at most {FRAMINGS[framing].limit} bytes,"
                    f" max_frame is {self.max_frame}"
                )
        if self.frame_deadline < self.partial_frame_timeout:
            raise ValueError("frame_deadline must not be shorter than partial_frame_timeout")
        if self.idle_timeout <= self.request_timeout:
            # The one pair of timeouts whose order matters: the idle timer runs while the
            # switch works on a request (a terminal waiting for its answer sends nothing).
            # The HTTP APIs' header_timeout does not run during a request (hypercorn stops
            # its keep-alive timer), so it needs no order with body_timeout.
            raise ValueError(
                f"terminal.idle_timeout ({self.idle_timeout:g} s) must be greater than"
                f" terminal.request_timeout ({self.request_timeout:g} s): a terminal waiting"
                " for its answer sends nothing, and would be cut off before it is answered"
            )
        if self.max_connections_per_address > self.max_connections:
            raise ValueError("max_connections_per_address must not exceed max_connections")


@dataclass(config=FROZEN)
class HttpLimits:
    """Limits of an HTTP API's connections against slow or stalled clients."""

    body_timeout: float = Field(default=10.0, gt=0)
    """Seconds a request body may take to arrive after the request's head, however dripped;
    then 408 and the connection is closed (complete headers with a partial body were held for
    90 s and more)."""
    header_timeout: float = Field(default=5.0, gt=0)
    """Seconds a connection may go without a complete request head, at its opening and between
    keep-alive requests (hypercorn's ``keep_alive_timeout``: it closes without an answer)."""
    max_header_bytes: int = Field(default=16384, ge=1024)
    """Largest request head (hypercorn's ``h11_max_incomplete_size``); beyond, refused."""
    max_connections: int = Field(default=1024, ge=1)
    """Open connections (per process); beyond, a new one gets 503 and is closed at once
    (counted, logged). Bounds the file descriptors and tasks a flood can take."""
    max_connections_per_address: int = Field(default=256, ge=1)
    """Open connections from one source address; beyond, 503 and closed, so one machine
    cannot take them all. Not small: an acquirer's host pools connections, possibly behind
    one NAT address."""

    def __post_init__(self) -> None:
        if self.max_connections_per_address > self.max_connections:
            raise ValueError("max_connections_per_address must not exceed max_connections")


@dataclass(config=FROZEN)
class AdminTokenConfig:
    id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")]
    """Who holds the token: written to the audit log (the token itself never is)."""
    role: Literal["viewer", "operator"]
    """viewer reads /status, /alerts and the other read-only pages; operator may also change
    state (POST /admin/reload)."""
    sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]
    """Hex SHA-256 of the bearer token (never the token itself)."""


@dataclass(config=FROZEN)
class AdminConfig:
    host: str = "127.0.0.1"
    port: int = 9090
    """Admin HTTP port (/healthz, /readyz, /metrics, /status); 0 picks a free one, -1 disables."""
    tokens: tuple[AdminTokenConfig, ...] = ()
    """Bearer tokens of the admin API (``{ id, role, sha256 }``). None (and no ``tokens_env``):
    the admin API is unauthenticated, allowed only on a loopback address."""
    tokens_env: str = ""
    """Environment variable holding more tokens as ``id:role:sha256`` entries separated by
    commas or whitespace (read at start; named but unset or empty refuses to start)."""
    metrics_public: bool = True
    """/metrics open to anyone (Prometheus scrapes); false: it needs a viewer token."""
    audit_file: str = ""
    """Audit file (JSON lines, hash-chained, fsync'd), relative to this file; empty: audit
    records go to the log only. With several workers each appends to its own
    ``<stem>-node<N><suffix>``."""
    limits: HttpLimits = Field(default_factory=HttpLimits)

    def __post_init__(self) -> None:
        ids = [t.id for t in self.tokens]
        if len(set(ids)) != len(ids):
            raise ValueError("admin token ids must be unique")
        hashes = [t.sha256.lower() for t in self.tokens]
        if len(set(hashes)) != len(hashes):
            raise ValueError("two admin tokens have the same sha256")
        unauthenticated = not self.tokens and not self.tokens_env
        if self.port >= 0 and unauthenticated and not is_loopback(self.host):
            raise ValueError(
                f"admin API on {self.host!r} without tokens: configure [admin] tokens "
                "(or tokens_env), or bind it to a loopback address"
            )


def is_loopback(host: str) -> bool:
    """A loopback address (or ``localhost``): only this machine reaches it."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(config=FROZEN)
class QrApiConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    """QR acquirer API port (HTTP/1.1 JSON); 0 picks a free one, -1 disables."""
    max_body: int = 16384
    """Largest accepted request body, bytes (413 beyond)."""
    idempotency_window: float = 86400.0
    """Seconds an idempotency key is remembered (a replay within it gets the first result)."""
    max_payments: int = 1_000_000
    """Payments kept for status and refunds; the oldest go first beyond."""
    store_file: str = ""
    """SQLite file of payments, refunds and idempotency keys, relative to this file: they
    survive a restart. Empty: in memory only (lost at restart)."""
    store_key: str = Field(default="", repr=False)
    """64 hex (demo and tests only): seals the card numbers a refund needs and keys the
    request fingerprints in the store file; the same key at every start."""
    store_key_env: str = ""
    """Environment variable holding the store key as 64 hex (production)."""
    otp_enrolment: str = ""
    """TOML of payers' one-time-code enrolments (``[[payers]] pan, totp_secret`` and
    ``[[synthetic]] prefix, totp_secret``), relative to this file: a payment over the payer's
    QR tier that a code would lift is challenged (403) instead of declined. Empty: none."""
    challenge_ttl: float = 300.0
    """Seconds a step-up challenge may be answered."""
    challenge_tries: int = 5
    """Wrong codes a challenge takes; the last one ends it."""
    max_challenges: int = 100_000
    """Challenges kept (pending and answered), the oldest forgotten first."""
    limits: HttpLimits = Field(default_factory=HttpLimits)

    def __post_init__(self) -> None:
        if self.store_file and bool(self.store_key) == bool(self.store_key_env):
            raise ValueError("store_file needs exactly one of store_key or store_key_env")


@dataclass(config=FROZEN)
class TokenVaultConfig:
    key_env: str = "PAYSWITCH_VAULT_KEY"
    """Environment variable holding the vault master key (64 hex: AES-256-GCM for funding PANs,
    HMAC for token lookup, by HKDF); unset, a random key per process (the vault is rebuilt from
    the dataset at each start)."""


@dataclass(config=FROZEN)
class LinkConfig:
    issuer: str
    """Issuer id from the dataset."""
    endpoints: tuple[str, ...]
    """host:port of the issuer host, tried in order (failover)."""
    connections: int = 2
    """Connections kept open to the issuer."""
    timeout: float = 5.0
    """Seconds to wait for an issuer answer before answering 91."""
    echo_interval: float = 30.0
    """Send an 0800/301 echo after this many idle seconds."""
    sign_on_timeout: float = 5.0
    backoff_initial: float = 0.1
    """First reconnect delay, seconds; doubles up to backoff_max."""
    backoff_max: float = 5.0
    dialect: str = "terminal"
    """ISO 8583 dialect the issuer's host speaks (``protocols.dialects.DIALECTS``): the
    terminal one by default; a 1993 dialect (``iso93-ascii``, ``iso93-bcd``) is translated
    from and to the canonical form at this link (``protocols.translate``)."""
    header: str = ""
    """Static header (printable ASCII) sent before every message to this host; as many bytes
    are taken off every message from it. Empty: none."""
    translation: TranslationConfig | None = None
    """Overrides of the translation table (1993 dialects only): ``fallback``,
    ``response_codes``, ``mti``."""
    framing: str = "binary2"
    """Framing toward this issuer: ``binary2`` (SPEC), ``ascii4`` or ``binary2-tpdu``; the
    issuer's host must use the same (issuer-sim: its ``framing``)."""
    tpdu: Annotated[str, Field(pattern=r"^60[0-9A-Fa-f]{8}$")] = "6000000000"
    """With ``binary2-tpdu``: the TPDU every request carries, 10 hex digits, ``60`` then the
    destination and source addresses (NII); the answers' TPDU is dropped."""
    server_name: str = ""
    """TLS name expected from the issuer (default: issuer-<id>)."""
    client_cert: str = "switch"
    """Our certificate name in the PKI directory (mutual TLS)."""
    send_settlement_date: bool = False
    """Send field 15 (settlement date, MMDD: the transaction's business date) in requests and
    advices to this issuer. Off by default: a host that does not expect 15 may refuse it."""
    key_exchange_on_sign_on: bool = False
    """Send a new ZPK (and ZAK, if the link MACs) under the link's ZMK when the link signs on
    (its first connection up). Only for issuers with a ``zmk`` in the dataset; off by default
    (the demo turns it on), so a link keeps its configured keys unless asked."""
    key_rotation_interval: float = Field(default=0.0, ge=0)
    """Seconds between scheduled key changes on this link; 0 (default): none scheduled (on
    sign-on and on demand only). Needs the issuer's ``zmk``."""

    _framing = field_validator("framing")(known_framing)

    @field_validator("dialect")
    @classmethod
    def _known_dialect(cls, dialect: str) -> str:
        check_link_dialect(dialect, "", None)
        return dialect

    @field_validator("header")
    @classmethod
    def _printable_header(cls, header: str) -> str:
        check_link_dialect("terminal", header, None)
        return header

    def __post_init__(self) -> None:
        check_link_dialect(self.dialect, self.header, self.translation)


@dataclass(config=FROZEN)
class SwitchConfig:
    """The switch's business day (settlement date)."""

    cutover: str = "00:00"
    """Local time (``HH:MM``, 24 h) at which the business date moves on: at or after 12:00 the
    next date starts then (``23:00``: from 23:00 on the 7th it is the 8th), before 12:00 the
    night still belongs to the day before (``02:00``). Default: midnight, i.e. the calendar
    date, which is what settlement used before there was a cutover."""
    timezone: str = "UTC"
    """IANA time zone of ``cutover`` (``Asia/Shanghai``); DST as the zone has it."""
    cutover_timeout: float = Field(default=5.0, gt=0)
    """Seconds an issuer has to answer the cutover message (0800/201) before it is logged as
    not acknowledged (the business date moves on regardless)."""

    @field_validator("cutover")
    @classmethod
    def _check_cutover(cls, v: str) -> str:
        try:
            parse_cutover(v)
        except BusinessDayError as exc:
            raise ValueError(str(exc)) from None
        return v

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, v: str) -> str:
        try:
            load_zone(v)
        except BusinessDayError as exc:
            raise ValueError(str(exc)) from None
        return v

    def calendar(self) -> BusinessCalendar:
        return BusinessCalendar.of(self.cutover, self.timezone)


@dataclass(config=FROZEN)
class HsmConfig:
    endpoints: tuple[str, ...] = ("127.0.0.1:1500",)
    """host:port of the HSMs (payShield host commands), tried in order (failover); empty
    disables the HSM: PIN transactions, MAC terminals and MAC issuer links are then answered
    96."""
    connections: int = Field(default=2, ge=1)
    """Persistent, pipelined connections kept to the active HSM."""
    timeout: float = Field(default=2.0, gt=0)
    """Seconds one HSM command may take before the next HSM is tried (96 when none answers)."""
    connect_timeout: float = Field(default=1.0, gt=0)
    """Seconds to wait for a connection to an HSM."""
    tls: bool = False
    """Mutual TLS to the HSM (TLS 1.2+), certificates from the PKI directory: the HSM's name must
    be ``server_name``; the gateway presents ``client_cert`` (put it in the HSM's allow-list)."""
    server_name: str = "hsm"
    client_cert: str = "switch"
    key_blocks: bool = False
    """Hold the dataset's clear test keys as TR-31 / X9.143 key blocks under the LMK (``S`` +
    block: usage and mode of use per role, enforced by the HSM on every command) instead of
    the variant form ``U`` + 32 hex (default, as before key blocks; keys given under the LMK are
    kept in their form either way). Keys received from issuers are key blocks regardless."""


@dataclass(config=FROZEN)
class SafConfig:
    """Store-and-forward of advices (0420 reversals, 0120 stand-in advices) to issuers."""

    timeout: float = Field(default=5.0, gt=0)
    """Seconds to wait for the issuer's 0430/0130 before the advice is retried."""
    reversal_delay: float = Field(default=0.5, ge=0)
    """Seconds before a timeout's 0420 is first sent (a late answer may arrive first)."""
    poll_interval: float = Field(default=1.0, gt=0)
    """Seconds between queue scans when nothing wakes the sender (restart, other nodes)."""
    backoff_base: float = Field(default=0.5, gt=0)
    """First retry delay, seconds; doubles per failed attempt up to backoff_max."""
    backoff_max: float = Field(default=60.0, gt=0)
    alert_age: float = Field(default=300.0, gt=0)
    """Alert (log + counter) while the oldest queued advice of an issuer is older, seconds."""


@dataclass(config=FROZEN)
class StandInLimit:
    issuer: str
    """Issuer id from the dataset; issuers without an entry get no stand-in (91)."""
    max_amount: int = Field(default=50_000, ge=0)
    """Most a card may spend in stand-in per UTC day, minor units."""
    max_count: int = Field(default=3, ge=0)
    """Most stand-in approvals per card per UTC day."""


@dataclass(config=FROZEN)
class StandInConfig:
    """Stand-in processing while an issuer is down or failing (needs the journal)."""

    enabled: bool = True
    failure_threshold: int = Field(default=5, ge=1)
    """Consecutive issuer timeouts/unavailable links that open the circuit breaker."""
    cooldown: float = Field(default=10.0, gt=0)
    """Seconds the breaker stays open before one request probes the issuer again."""
    limit_currency: str = "156"
    """ISO 4217 numeric code of ``max_amount``. With the risk stage on it must be the risk
    config's ``limit_currency`` (other currencies count converted with its rates); without
    it, stand-in approves only in this currency."""
    limits: tuple[StandInLimit, ...] = ()

    @field_validator("limit_currency")
    @classmethod
    def _check_limit_currency(cls, v: str) -> str:
        if not is_payment_currency(v):
            raise ValueError("limit_currency is not an ISO 4217 payment currency")
        return v


@dataclass(config=FROZEN)
class LogConfig:
    level: str = "info"
    transactions: bool = True
    """Log one line per transaction (masked)."""


@dataclass(config=FROZEN)
class GatewayConfig:
    data: str = "data.toml"
    """Dataset file (issuers, terminals, merchants, risk), relative to this file."""
    pki_dir: str = "../../var/certs"
    """Directory of the CA and certificates, relative to this file."""
    acquirer_id: str = "00000000001"
    """Our institution id, sent in field 32 to issuers."""
    gc_threshold: tuple[int, int, int] = (50_000, 50, 1_000)
    """Python GC thresholds set after start-up (with gc.freeze()); CPython's default is
    (700, 10, 10): far more frequent young collections on the per-transaction garbage."""
    workers: int = Field(default=1, ge=1, le=32)
    """Gateway worker processes on this machine (SO_REUSEPORT on the terminal and QR ports;
    admin port and node number + worker index). With ``card_affinity`` each card's requests
    run in one worker, so limits, duplicates, reversals and stand-in stay exact with in-memory
    risk counters and one SQLite journal per worker."""
    card_affinity: bool = True
    """With several workers: hand each request to the worker owning its card (crc32 of the
    PAN mod workers) over a private Unix socket. Off only where every piece of state is
    shared anyway (Redis risk backend and PostgreSQL journal), to save the hop."""
    node: int = 0
    """Node number (0-35), the last RRN digit so nodes never collide; worker I uses node+I."""
    risk: str = "risk.toml"
    """Risk and limits rules (gateway.risk), relative to this file; empty disables the stage."""
    duplicate_window: float = 86400.0
    """Seconds a request's answer is kept for duplicate transmissions."""
    duplicate_max_entries: int = Field(default=500_000, ge=1)
    """Transactions the in-memory duplicate window holds (about 820 bytes each: 500,000 is
    about 400 MiB); past it the oldest go first and the journal answers for them."""
    duplicate_filter_max_mib: float = Field(default=64.0, gt=0)
    """Memory for the keys evicted from the window above while still inside its time
    (Bloom filters, about 1.5 bytes per key: 64 MiB holds about 44 million, 24 hours at 500 TPS
    beyond the window's count), so only a request whose key may be one of them asks the
    journal. Past it, every request memory lacks asks the journal (correct, slower), logged as
    ``duplicate_filter_full``."""
    ksn_memory: int = Field(default=500_000, ge=1)
    """DUKPT KSNs remembered per BDK to refuse a replayed PIN block (and AES DUKPT devices
    whose last counter is kept), oldest forgotten first."""
    journal: str = ""
    """Journal and store-and-forward config (gateway.journal TOML), relative to this file;
    empty runs without a journal (no SAF, no stand-in, no crash recovery)."""
    shutdown_grace: float = Field(default=10.0, ge=0)
    """On SIGTERM: seconds in-flight requests get to finish before links sign off."""
    switch: SwitchConfig = Field(default_factory=SwitchConfig)
    terminal: TerminalConfig = Field(default_factory=TerminalConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    qr_api: QrApiConfig = Field(default_factory=QrApiConfig)
    tokens: TokenVaultConfig = Field(default_factory=TokenVaultConfig)
    links: tuple[LinkConfig, ...] = ()
    hsm: HsmConfig = Field(default_factory=HsmConfig)
    saf: SafConfig = Field(default_factory=SafConfig)
    standin: StandInConfig = Field(default_factory=StandInConfig)
    log: LogConfig = Field(default_factory=LogConfig)


def load_gateway_config(path: Path) -> tuple[GatewayConfig, Path]:
    """The config and the directory relative paths resolve against."""
    cfg = load(GatewayConfig, path)
    if cfg.node < 0 or cfg.node + cfg.workers - 1 > 35:
        raise ConfigError(f"{path}: node + workers - 1 must stay within 0..35 (RRN node digit)")
    ids = [link.issuer for link in cfg.links]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{path}: an issuer has more than one [[links]] entry")
    return cfg, path.parent
