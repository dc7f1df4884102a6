"""Journal configuration (frozen, unknown keys are errors) and key loading.

Keys are given as hex in the TOML (demo and tests only) or, in production, as the name of an
environment variable holding the hex. Example (``conf/demo/journal.toml``)::

    [journal]
    backend = "sqlite"
    path = "var/journal.sqlite3"
    active_key_id = "k1"
    keys = [{ id = "k1", env = "PAYSWITCH_JOURNAL_K1" }]
    lookup_key = { env = "PAYSWITCH_JOURNAL_LOOKUP" }
    chain_key = { env = "PAYSWITCH_JOURNAL_CHAIN" }
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic.dataclasses import dataclass

from gateway.journal.chain import Chain
from gateway.journal.errors import JournalConfigError
from gateway.journal.protect import DataProtector

_FROZEN = pydantic.ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(config=_FROZEN)
class SecretSpec:
    """A secret: hex in the file (demo/tests), or the name of an environment variable."""

    hex: str = dataclasses.field(default="", repr=False)
    """The key as hex (demo and tests only: never put production keys in conf/)."""
    env: str = ""
    """Name of an environment variable holding the key as hex."""

    def resolve(self, what: str, environ: Mapping[str, str]) -> bytes:
        if bool(self.hex) == bool(self.env):
            raise JournalConfigError(f"{what}: give exactly one of 'hex' or 'env'")
        text = self.hex
        if self.env:
            if self.env not in environ:
                raise JournalConfigError(f"{what}: environment variable {self.env} is not set")
            text = environ[self.env]
        try:
            return bytes.fromhex(text.strip())
        except ValueError:
            raise JournalConfigError(f"{what}: the key is not valid hex") from None


@dataclass(config=_FROZEN)
class KeySpec:
    """One AES-256 data key with its id (the id is stored with every ciphertext)."""

    id: str = ""
    """Key id, 1-32 printable ASCII chars (e.g. ``k2026a``)."""
    hex: str = dataclasses.field(default="", repr=False)
    """64 hex digits (demo and tests only)."""
    env: str = ""
    """Name of an environment variable holding the 64 hex digits."""


@dataclass(config=_FROZEN)
class JournalConfig:
    """Transaction journal and store-and-forward storage."""

    backend: Literal["sqlite", "postgres"] = "sqlite"
    """Embedded SQLite (default) or PostgreSQL (scale-out; asyncio only)."""
    path: str = "var/journal.sqlite3"
    """SQLite database file."""
    dsn: str = ""
    """PostgreSQL DSN (password better in PGPASSWORD or ~/.pgpass than here)."""
    schema: str = "payswitch_journal"
    """PostgreSQL schema holding the journal tables (created if missing)."""
    synchronous: Literal["FULL", "NORMAL", "OFF"] = "FULL"
    """SQLite sync level of durable writes; non-durable writes use NORMAL (OFF if OFF)."""
    writer: Literal["loop", "process"] = "loop"
    """SQLite: where batches are written. ``loop``: on the event loop (fsync in a thread);
    ``process``: in a writer process of the gateway's own (gateway/journal/writer.py), so
    the chain, SQL, fsync and checkpoints run on another core. Same guarantees either way."""
    busy_timeout_ms: int = pydantic.Field(default=5000, ge=0)
    """SQLite: wait this long for a lock held by another process (e.g. the archive CLI)."""
    group_commit_max_batch: int = pydantic.Field(default=512, ge=1)
    """Most records committed in one transaction (1 = one commit per write)."""
    group_commit_max_delay_ms: float = pydantic.Field(default=0.0, ge=0.0)
    """Extra wait for more records before a commit; 0 = commit at once (records arriving
    during a commit form the next batch, which is where group commit gets its batches)."""
    queue_size: int = pydantic.Field(default=10000, ge=1)
    """Writes waiting for the committer before writers block (back-pressure)."""
    pool_size: int = pydantic.Field(default=4, ge=1)
    """PostgreSQL: connections of the read pool (one more is used for writing)."""
    retention_days: int = pydantic.Field(default=1826, ge=1)
    """Age after which records may be archived (explicit ``archive`` command only)."""
    duplicate_window_hours: float = pydantic.Field(default=24.0, gt=0)
    """Duplicate transmissions are detected within this window."""
    active_key_id: str = ""
    """Id of the key that encrypts new data; every configured key decrypts."""
    keys: tuple[KeySpec, ...] = ()
    """AES-256 data keys (several during a rotation)."""
    lookup_key: SecretSpec = SecretSpec()
    """HMAC-SHA256 key of the PAN lookup hash (32+ bytes)."""
    chain_key: SecretSpec = SecretSpec()
    """HMAC-SHA256 key of the tamper-evidence chain (32+ bytes)."""

    def __post_init__(self) -> None:
        if not _SCHEMA.match(self.schema):
            raise ValueError("schema must be a lower-case SQL identifier")
        if self.backend == "postgres" and not self.dsn:
            raise ValueError("backend 'postgres' needs a dsn")
        if self.backend == "postgres" and self.writer == "process":
            raise ValueError("writer 'process' is for the sqlite backend (PostgreSQL writes)")


@dataclasses.dataclass(frozen=True, slots=True)
class JournalKeys:
    """Resolved key material (never log it)."""

    protector: DataProtector
    chain: Chain


def resolve_keys(config: JournalConfig, environ: Mapping[str, str] | None = None) -> JournalKeys:
    """Load the keys named by ``config`` (from the file or the environment)."""
    env = os.environ if environ is None else environ
    if not config.keys:
        raise JournalConfigError("no data key configured (journal.keys)")
    keys: dict[str, bytes] = {}
    for spec in config.keys:
        if spec.id in keys:
            raise JournalConfigError(f"key id {spec.id!r} is configured twice")
        keys[spec.id] = SecretSpec(hex=spec.hex, env=spec.env).resolve(f"key {spec.id!r}", env)
    active = config.active_key_id or (config.keys[0].id if len(config.keys) == 1 else "")
    if not active:
        raise JournalConfigError("several keys configured: set active_key_id")
    chain_key = config.chain_key.resolve("chain_key", env)
    if len(chain_key) < 32:
        raise JournalConfigError("chain_key must be at least 32 bytes")
    lookup_key = config.lookup_key.resolve("lookup_key", env)
    return JournalKeys(DataProtector(keys, active, lookup_key), Chain(chain_key))


def config_from_mapping(data: Mapping[str, Any], source: str = "<config>") -> JournalConfig:
    """Build a config from a ``[journal]`` table (or a document holding one)."""
    table = data.get("journal", data)
    if not isinstance(table, dict):
        raise JournalConfigError(f"{source}: [journal] must be a table")
    try:
        return pydantic.TypeAdapter(JournalConfig).validate_python(table)
    except pydantic.ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            unknown = err["type"] in ("extra_forbidden", "unexpected_keyword_argument")
            what = "unknown key" if unknown else err["msg"]
            problems.append(f"  journal.{where}: {what}")
        raise JournalConfigError(
            f"{source}: invalid configuration\n" + "\n".join(problems)
        ) from None


def load_config(path: str | Path) -> JournalConfig:
    """Read the journal config from a TOML file (``[journal]`` table or a bare document)."""
    file = Path(path)
    try:
        with file.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise JournalConfigError(f"{file}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise JournalConfigError(f"{file}: not valid TOML: {exc}") from None
    # A relative SQLite path is relative to the working directory, like every path in conf/.
    return config_from_mapping(data, str(file))


_NODE_FILE = re.compile(r"-node(\d+)$")


def node_path(path: str, node: int) -> str:
    """The SQLite file of worker node ``node`` (``workers > 1``: one writer per file)."""
    base = Path(path)
    return str(base.with_stem(f"{base.stem}-node{node}"))


def node_paths(path: str) -> dict[int, str]:
    """The per-node SQLite files next to ``path`` that exist, by node number."""
    base = Path(path)
    found: dict[int, str] = {}
    for candidate in base.parent.glob(f"{base.stem}-node*{base.suffix}"):
        if candidate.suffix != base.suffix:
            continue
        match = _NODE_FILE.search(candidate.stem[len(base.stem) :])
        if match is not None and candidate.stem == f"{base.stem}-node{match.group(1)}":
            found[int(match.group(1))] = str(candidate)
    return dict(sorted(found.items()))
