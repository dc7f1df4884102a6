"""Inline limits and risk engine (see gateway/risk/README.md for the design and the API)."""

from __future__ import annotations

from gateway.risk.alerts import AlertEvent, AlertHub, AlertSink, WebhookSink
from gateway.risk.cardkey import card_key, mask_pan
from gateway.risk.config import ConfigError, RiskConfig, config_from_mapping, load_config
from gateway.risk.counters import CounterStore, MemoryCounterStore, StoreError
from gateway.risk.engine import RiskEngine, build_store
from gateway.risk.model import (
    Reservation,
    RiskDecision,
    RiskInput,
    RiskInputError,
    RuleHit,
    TxnKind,
    kind_from_iso,
)
from gateway.risk.redis_counters import RedisCounterStore

__all__ = [
    "AlertEvent",
    "AlertHub",
    "AlertSink",
    "ConfigError",
    "CounterStore",
    "MemoryCounterStore",
    "RedisCounterStore",
    "Reservation",
    "RiskConfig",
    "RiskDecision",
    "RiskEngine",
    "RiskInput",
    "RiskInputError",
    "RuleHit",
    "StoreError",
    "TxnKind",
    "WebhookSink",
    "build_store",
    "card_key",
    "config_from_mapping",
    "kind_from_iso",
    "load_config",
    "mask_pan",
]
