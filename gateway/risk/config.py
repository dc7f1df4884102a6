"""Risk and limits configuration: frozen dataclasses, loaded and validated from TOML.

The file format is the top level of ``conf/<profile>/risk.toml`` (see conf/demo/risk.toml). The
loader accepts a demo-only ``blacklist_pans`` list of clear PANs and replaces it by their keyed
hashes at load time: the config object never holds a clear PAN. Errors never quote input values
(a mistyped key or PAN must not end up in a log).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import zoneinfo
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic.dataclasses import dataclass

from gateway.risk.cardkey import card_key
from protocols.currency import is_payment_currency

_CFG = pydantic.ConfigDict(extra="forbid")

Action = Literal["decline", "alert"]
"""What a fired rule does: ``decline`` answers its response code, ``alert`` only reports."""

_DIGITS = re.compile(r"\d+")
_HASH = re.compile(r"[0-9a-f]{64}")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
_RC = re.compile(r"[0-9A-Z]{2}")


class ConfigError(ValueError):
    """An invalid risk configuration; the message names the file, the key and the reason only."""


def _digits(value: str, name: str, lengths: range) -> str:
    if not _DIGITS.fullmatch(value) or len(value) not in lengths:
        raise ValueError(f"{name} must be {lengths.start}-{lengths.stop - 1} digits")
    return value


def _currency(value: str, name: str) -> str:
    if not is_payment_currency(value):
        raise ValueError(f"{name} is not an ISO 4217 payment currency")
    return value


def _positive(value: int | None, name: str) -> int | None:
    if value is not None and value < 0:
        raise ValueError(f"{name} must be >= 0")
    return value


@dataclass(frozen=True, config=_CFG)
class Velocity:
    """More attempts (approved + declined) per card than ``count`` within ``seconds`` -> 65."""

    count: int = 5
    """attempts allowed in the window; the next one fires the rule"""
    seconds: int = 60
    """length of the sliding window"""

    @pydantic.field_validator("count", "seconds")
    @classmethod
    def _check(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v


@dataclass(frozen=True, config=_CFG)
class Limits:
    """Amount and frequency limits; in an override, ``None`` means inherit the base value."""

    max_single_amount: int | None = None
    """one transaction above this (minor units) -> 61"""
    daily_amount_per_card: int | None = None
    """approved amount per card per local calendar day, in ``limit_currency``, above this -> 61"""
    daily_count_per_card: int | None = None
    """approved transactions per card per local day above this -> 65"""
    velocity: Velocity | None = None
    """attempts per card in a sliding window -> 65"""

    @pydantic.field_validator("max_single_amount", "daily_amount_per_card", "daily_count_per_card")
    @classmethod
    def _non_negative(cls, v: int | None, info: pydantic.ValidationInfo) -> int | None:
        return _positive(v, str(info.field_name))


@dataclass(frozen=True, config=_CFG)
class CardRangeLimits(Limits):
    """Limits for cards whose PAN starts with ``prefix`` (the longest matching prefix wins)."""

    prefix: str = ""
    """1-8 leading PAN digits (the engine sees the first 8 digits only)"""

    @pydantic.field_validator("prefix")
    @classmethod
    def _check_prefix(cls, v: str) -> str:
        return _digits(v, "prefix", range(1, 9))


@dataclass(frozen=True, config=_CFG)
class MerchantLimits(Limits):
    """Limits for transactions at one merchant."""

    merchant_id: str = ""
    """merchant id as in field 42"""

    @pydantic.field_validator("merchant_id")
    @classmethod
    def _check_id(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("merchant_id must not be empty")
        return v


@dataclass(frozen=True, config=_CFG)
class CurrencyLimits(Limits):
    """Limits for transactions in one currency: ``max_single_amount`` is in that currency's
    minor units; daily amounts are one total per card in ``limit_currency``, so not here."""

    currency: str = ""
    """ISO 4217 numeric code, e.g. 840"""

    @pydantic.field_validator("currency")
    @classmethod
    def _check_currency(cls, v: str) -> str:
        return _currency(v, "currency")

    @pydantic.model_validator(mode="after")
    def _no_daily_amount(self) -> CurrencyLimits:
        if self.daily_amount_per_card is not None:
            raise ValueError(
                "daily amounts are in limit_currency: set them in the base, merchant or card "
                "range limits"
            )
        return self


@dataclass(frozen=True, config=_CFG)
class NoCvmLimit:
    """A contactless no-CVM cap for one currency, one MCC, or both (the most specific wins:
    both, then the MCC, then the currency)."""

    max_amount: int
    """the most one tap without CVM may be: in ``currency`` when given (and then only for
    requests in it), else in ``limit_currency``"""
    currency: str | None = None
    """ISO 4217 numeric code"""
    mcc: str | None = None
    """merchant category code"""

    @pydantic.field_validator("max_amount")
    @classmethod
    def _non_negative(cls, v: int) -> int:
        if v < 0:
            raise ValueError("max_amount must be >= 0")
        return v

    @pydantic.field_validator("currency")
    @classmethod
    def _check_currency(cls, v: str | None) -> str | None:
        return None if v is None else _currency(v, "currency")

    @pydantic.field_validator("mcc")
    @classmethod
    def _check_mcc(cls, v: str | None) -> str | None:
        return None if v is None else _digits(v, "mcc", range(4, 5))

    @pydantic.model_validator(mode="after")
    def _names_something(self) -> NoCvmLimit:
        if self.currency is None and self.mcc is None:
            raise ValueError("name a currency, an mcc or both (the base is no_cvm_max_amount)")
        return self


@dataclass(frozen=True, config=_CFG)
class ContactlessConfig:
    """Contactless taps without any CVM (no PIN, no consumer-device CVM): above the cap the
    answer is 65, "PIN required", so the terminal asks for the PIN and retries (a soft
    decline, as the schemes do)."""

    no_cvm_max_amount: int | None = None
    """in ``limit_currency``; None: no cap (but for ``no_cvm_limits``)"""
    no_cvm_limits: tuple[NoCvmLimit, ...] = ()
    """caps per currency and MCC, overriding the base"""

    @pydantic.field_validator("no_cvm_max_amount")
    @classmethod
    def _non_negative(cls, v: int | None) -> int | None:
        return _positive(v, "no_cvm_max_amount")

    @pydantic.model_validator(mode="after")
    def _unique(self) -> ContactlessConfig:
        keys = [(c.currency, c.mcc) for c in self.no_cvm_limits]
        if len(set(keys)) != len(keys):
            raise ValueError("no_cvm_limits lists the same currency and mcc twice")
        return self


@dataclass(frozen=True, config=_CFG)
class QrTiersConfig:
    """What a QR payer (the funding card's key) may pay by QR per local day, in
    ``limit_currency``, by the verification tier of the payment
    (:func:`gateway.risk.verification.qr_tier`): the day's QR total, this payment included,
    must fit the tier's cap. None: no cap of ours (the issuer's limit only)."""

    static: int | None = None
    """a static merchant-presented code, whatever the wallet verified"""
    one_factor: int | None = None
    """a dynamic code with fewer than two factors"""
    two_factor: int | None = None
    """two factors or more, no certificate among them"""
    certified: int | None = None
    """two factors or more with a device certificate or an e-signature"""

    @pydantic.field_validator("static", "one_factor", "two_factor", "certified")
    @classmethod
    def _non_negative(cls, v: int | None, info: pydantic.ValidationInfo) -> int | None:
        return _positive(v, str(info.field_name))


@dataclass(frozen=True, config=_CFG)
class StructuringConfig:
    """Payments just below a limit, repeated on one card: an alert naming the pattern
    (``below_single_amount``, ``below_no_cvm_cap``, ``below_qr_tier``), never a decline."""

    enabled: bool = False
    """off unless configured: each payment near a cap then costs one more counter step"""
    margin_percent: int = 10
    """"just below": within this share under the limit, the limit itself included"""
    count: int = 3
    """this many such payments per card and pattern within the window (this one included)
    alert; for a QR tier, whose cap is the day's total, this many days ending just below it"""
    window_seconds: int = 7 * 86_400
    """the sliding window: a week by default, as a day's cap is approached once a day"""

    @pydantic.model_validator(mode="after")
    def _check(self) -> StructuringConfig:
        if not 0 < self.margin_percent < 100:
            raise ValueError("margin_percent must be within 1-99")
        if self.count < 2 or self.window_seconds < 1:
            raise ValueError("count must be >= 2 and window_seconds >= 1")
        return self


@dataclass(frozen=True, config=_CFG)
class Actions:
    """Per rule: ``decline`` (answer the rule's code) or ``alert`` (report only, go on)."""

    pan_blacklist: Action = "decline"
    """PAN on the blacklist -> 59"""
    terminal_blacklist: Action = "decline"
    """terminal on the blacklist -> 59"""
    merchant_blacklist: Action = "decline"
    """merchant on the blacklist -> 59"""
    blocked_mcc: Action = "decline"
    """merchant category blocked -> 57"""
    single_amount: Action = "decline"
    """single amount above the limit -> 61"""
    daily_amount: Action = "decline"
    """daily amount per card above the limit -> 61"""
    daily_count: Action = "decline"
    """daily count per card above the limit -> 65"""
    velocity: Action = "decline"
    """too many attempts in the window -> 65"""
    impossible_travel: Action = "decline"
    """same card in another country within the window -> 59"""
    score: Action = "decline"
    """risk score at or above ``score.decline_at`` -> ``score.decline_rc``"""
    qr_tier: Action = "decline"
    """a QR payer's day total above the cap of the payment's verification tier -> 61"""
    no_cvm_cap: Action = "decline"
    """a contactless tap without CVM above its cap -> 65 ("PIN required")"""


@dataclass(frozen=True, config=_CFG)
class ScoreConfig:
    """Risk score: the sum of the points of the signals that fired, capped at 100."""

    enabled: bool = True
    """compute the score at all"""
    alert_at: int = 50
    """score at or above this raises an alert"""
    decline_at: int = 80
    """score at or above this declines (when ``actions.score`` is ``decline``)"""
    decline_rc: str = "59"
    """response code of a score decline"""
    amount_points: int = 30
    """points when the amount deviates from the card's usual amounts"""
    amount_z: float = 3.0
    """deviation threshold: (amount - mean) / max(std, amount_std_floor)"""
    amount_min_samples: int = 5
    """approved transactions the card needs before its amounts are judged"""
    amount_std_floor: int = 1000
    """lower bound of the standard deviation (minor units), so steady cards are not noisy"""
    profile_samples: int = 50
    """running mean/deviation: exact up to this many samples, then exponentially weighted"""
    new_country_points: int = 30
    """points when the merchant's country was never seen on the card (and is not its home)"""
    night_points: int = 10
    """points for transactions at night in the configured time zone"""
    night_start_hour: int = 0
    """night starts at this local hour (inclusive)"""
    night_end_hour: int = 6
    """night ends at this local hour (exclusive); may wrap midnight"""
    velocity_points: int = 20
    """points when the card's attempts in the velocity window reach ``velocity_attempts``"""
    velocity_attempts: int = 3
    """attempt count (this one included) that fires the velocity signal"""
    velocity_seconds: int = 60
    """window of the velocity signal when no velocity limit is configured"""
    mcc_points: dict[str, int] = pydantic.Field(default_factory=dict)
    """MCC risk table: merchant category -> points"""

    @pydantic.model_validator(mode="after")
    def _check(self) -> ScoreConfig:
        if not 0 <= self.alert_at <= self.decline_at:
            raise ValueError("need 0 <= alert_at <= decline_at")
        if not _RC.fullmatch(self.decline_rc):
            raise ValueError("decline_rc must be a 2-character response code")
        for hour in (self.night_start_hour, self.night_end_hour):
            if not 0 <= hour <= 24:
                raise ValueError("night hours must be within 0-24")
        if self.amount_min_samples < 1 or self.profile_samples < 1 or self.velocity_seconds < 1:
            raise ValueError("sample counts and windows must be >= 1")
        for mcc in self.mcc_points:
            _digits(mcc, "mcc_points key", range(4, 5))
        return self


@dataclass(frozen=True, config=_CFG)
class RedisConfig:
    """Redis counter backend (scale-out: every gateway process shares the counters)."""

    url: str = "redis://127.0.0.1:6379/0"
    """redis:// or rediss:// URL, optional password and database number"""
    prefix: str = "payswitch:risk:"
    """prefix of every key this engine writes"""
    pool_size: int = 16
    """connections per engine"""
    timeout_seconds: float = 0.5
    """per command, connect included; the transaction's own deadline is the caller's"""

    @pydantic.model_validator(mode="after")
    def _check(self) -> RedisConfig:
        if not self.url.startswith(("redis://", "rediss://")):
            raise ValueError("url must start with redis:// or rediss://")
        if self.pool_size < 1 or self.timeout_seconds <= 0:
            raise ValueError("pool_size must be >= 1 and timeout_seconds > 0")
        return self


@dataclass(frozen=True, config=_CFG)
class AlertsConfig:
    """Where alerts and risk declines go besides the callbacks the gateway registers."""

    ring_size: int = 1000
    """recent alerts kept in memory for the admin endpoint"""
    webhook_url: str | None = None
    """POST each event as JSON here (http:// or https://); none by default"""
    webhook_timeout_seconds: float = 2.0
    """per POST"""
    webhook_queue_size: int = 1000
    """events waiting for the webhook; beyond this they are dropped and counted"""

    @pydantic.model_validator(mode="after")
    def _check(self) -> AlertsConfig:
        if self.ring_size < 1 or self.webhook_queue_size < 1 or self.webhook_timeout_seconds <= 0:
            raise ValueError("ring_size and webhook_queue_size must be >= 1, timeout > 0")
        if self.webhook_url is not None and not self.webhook_url.startswith(
            ("http://", "https://")
        ):
            raise ValueError("webhook_url must be http:// or https://")
        return self


@dataclass(frozen=True, config=_CFG)
class RiskConfig(Limits):
    """The whole risk stage: base limits (inherited fields), lists, overrides, score, backend."""

    backend: Literal["memory", "redis"] = "memory"
    """where counters live: this process, or Redis shared by every gateway process"""
    timezone: str = "Asia/Shanghai"
    """the calendar day of daily limits and the night of the score are in this zone"""
    pan_hash_key: str = pydantic.Field(default="", repr=False)
    """hex HMAC-SHA256 key for card keys and the PAN blacklist (test key in demo conf only)"""
    pan_hash_key_env: str = "PAYSWITCH_RISK_PAN_KEY"
    """environment variable that, when set, supplies pan_hash_key instead of the file"""
    fail_mode: Literal["closed", "open"] = "closed"
    """counter store unreachable: ``closed`` declines 96, ``open`` skips the stateful rules"""
    limit_currency: str = "156"
    """ISO 4217 numeric code of the amount limits and of each card's one daily total"""
    rates: dict[str, Decimal] = pydantic.Field(default_factory=dict)
    """ISO 4217 numeric code -> major units of ``limit_currency`` per major unit of it; a
    counted transaction in a currency that is neither is declined 12"""
    blocked_mccs: tuple[str, ...] = ()
    """merchant category codes declined with 57"""
    blacklist_pan_hashes: tuple[str, ...] = ()
    """card keys (lowercase hex HMAC-SHA256 of the PAN) declined with 59"""
    blacklist_terminals: tuple[str, ...] = ()
    """terminal ids (field 41) declined with 59"""
    blacklist_merchants: tuple[str, ...] = ()
    """merchant ids (field 42) declined with 59"""
    impossible_travel_minutes: int | None = None
    """same card at merchants in different countries within this many minutes -> 59"""
    card_ranges: tuple[CardRangeLimits, ...] = ()
    """limit overrides per PAN prefix (most specific layer)"""
    merchant_limits: tuple[MerchantLimits, ...] = ()
    """limit overrides per merchant"""
    currency_limits: tuple[CurrencyLimits, ...] = ()
    """limit overrides per currency (least specific layer)"""
    actions: Actions = pydantic.Field(default_factory=Actions)
    """decline or alert, per rule"""
    contactless: ContactlessConfig = pydantic.Field(default_factory=ContactlessConfig)
    """caps of contactless taps without CVM"""
    qr_tiers: QrTiersConfig = pydantic.Field(default_factory=QrTiersConfig)
    """a QR payer's daily caps by verification tier"""
    structuring: StructuringConfig = pydantic.Field(default_factory=StructuringConfig)
    """the anti-structuring alert (payments repeatedly just below a limit)"""
    score: ScoreConfig = pydantic.Field(default_factory=ScoreConfig)
    """risk score signals and thresholds"""
    redis: RedisConfig = pydantic.Field(default_factory=RedisConfig)
    """Redis backend settings (backend = "redis")"""
    alerts: AlertsConfig = pydantic.Field(default_factory=AlertsConfig)
    """alert ring and webhook"""
    memory_max_cards: int = 1_000_000
    """in-memory backend: per-card state kept for at most this many cards (least recent go)"""
    profile_ttl_days: int = 180
    """a card's amount profile and known countries are forgotten this long after its last
    approval (both backends; attempts without an approval do not extend it)"""

    @pydantic.field_validator("timezone")
    @classmethod
    def _check_tz(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown time zone") from None
        return v

    @pydantic.field_validator("limit_currency")
    @classmethod
    def _check_limit_currency(cls, v: str) -> str:
        return _currency(v, "limit_currency")

    @pydantic.field_validator("rates")
    @classmethod
    def _check_rates(cls, v: dict[str, Decimal]) -> dict[str, Decimal]:
        for code, rate in v.items():
            _currency(code, "a rates key")
            if not rate > 0:
                raise ValueError("rates must be > 0")
        return v

    @pydantic.field_validator("pan_hash_key")
    @classmethod
    def _check_key(cls, v: str) -> str:
        if v and (not _HEX.fullmatch(v) or len(v) < 32):
            raise ValueError("pan_hash_key must be hex, at least 16 bytes")
        return v

    @pydantic.field_validator("blocked_mccs")
    @classmethod
    def _check_mccs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for mcc in v:
            _digits(mcc, "blocked MCC", range(4, 5))
        return v

    @pydantic.field_validator("blacklist_pan_hashes")
    @classmethod
    def _check_hashes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for i, item in enumerate(v):
            if not _HASH.fullmatch(item):
                raise ValueError(f"item {i} is not a 64-hex-digit lowercase card key")
        return v

    @pydantic.field_validator("impossible_travel_minutes", "memory_max_cards", "profile_ttl_days")
    @classmethod
    def _check_positive(cls, v: int | None, info: pydantic.ValidationInfo) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"{info.field_name} must be >= 1")
        return v

    @pydantic.model_validator(mode="after")
    def _check_overrides(self) -> RiskConfig:
        for name, keys in (
            ("card_ranges", [o.prefix for o in self.card_ranges]),
            ("merchant_limits", [o.merchant_id for o in self.merchant_limits]),
            ("currency_limits", [o.currency for o in self.currency_limits]),
        ):
            if len(set(keys)) != len(keys):
                raise ValueError(f"{name} lists the same key twice")
        if self.limit_currency in self.rates:
            raise ValueError("rates: no rate for the limit currency (it is the unit)")
        return self

    def pan_key(self) -> bytes:
        """The HMAC key for :func:`gateway.risk.cardkey.card_key`; ConfigError when none is set."""
        if not self.pan_hash_key:
            raise ConfigError(f"no pan_hash_key configured (set it or ${self.pan_hash_key_env})")
        return bytes.fromhex(self.pan_hash_key)


def _format_errors(error: pydantic.ValidationError) -> str:
    parts = []
    for item in error.errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in item["loc"]) or "<top>"
        parts.append(f"{loc}: {item['msg']}")
    return "; ".join(parts)


def config_from_mapping(
    data: Mapping[str, Any], *, env: Mapping[str, str] | None = None, source: str = "<mapping>"
) -> RiskConfig:
    """Validate a parsed TOML table; clear ``blacklist_pans`` are hashed here and not kept.

    ``env`` defaults to ``os.environ``; the variable named by ``pan_hash_key_env`` overrides
    ``pan_hash_key`` from the file.
    """
    env = os.environ if env is None else env
    values = dict(data)
    clear_pans = values.pop("blacklist_pans", [])
    env_name = values.get("pan_hash_key_env", "PAYSWITCH_RISK_PAN_KEY")
    if isinstance(env_name, str) and env.get(env_name):
        values["pan_hash_key"] = env[env_name].strip()
    try:
        config = RiskConfig(**values)
    except pydantic.ValidationError as exc:
        raise ConfigError(f"risk config {source}: {_format_errors(exc)}") from None
    except TypeError as exc:  # not a table at all
        raise ConfigError(f"risk config {source}: {type(exc).__name__}") from None
    if not isinstance(clear_pans, list):
        raise ConfigError(f"risk config {source}: blacklist_pans must be a list")
    if not clear_pans:
        return config
    if not config.pan_hash_key:
        raise ConfigError(f"risk config {source}: blacklist_pans needs a pan_hash_key")
    key = config.pan_key()
    hashes = list(config.blacklist_pan_hashes)
    for i, pan in enumerate(clear_pans):
        if not isinstance(pan, str) or not _DIGITS.fullmatch(pan) or not 12 <= len(pan) <= 19:
            raise ConfigError(f"risk config {source}: blacklist_pans item {i} is not a PAN")
        hashes.append(card_key(pan, key))
    return dataclasses.replace(config, blacklist_pan_hashes=tuple(dict.fromkeys(hashes)))


def load_config(path: str | Path, *, env: Mapping[str, str] | None = None) -> RiskConfig:
    """Parse and validate a risk TOML file; raises :class:`ConfigError` with the reason."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"risk config {source}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"risk config {source}: not valid TOML ({exc})") from None
    return config_from_mapping(data, env=env, source=source)
