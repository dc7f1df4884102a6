"""Config loading and validation, the demo profile, card keys and the PAN tool."""

from __future__ import annotations

import io
import tomllib
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.risk import (
    ConfigError,
    RiskConfig,
    TxnKind,
    card_key,
    config_from_mapping,
    kind_from_iso,
    load_config,
    mask_pan,
)
from gateway.risk.cardkey import PanError, looks_clear
from gateway.risk.pan import main
from tests.risk.conftest import KEY, KEY_HEX

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONF = ROOT / "conf" / "demo" / "risk.toml"
DEMO_DATA = ROOT / "conf" / "demo" / "data.toml"


def test_demo_profile_carries_demo_toml_risk_values() -> None:
    config = load_config(DEMO_CONF, env={})
    with open(DEMO_DATA, "rb") as f:
        demo = tomllib.load(f)["risk"]
    assert config.max_single_amount == demo["max_single_amount"]
    assert config.daily_amount_per_card == demo["daily_amount_per_card"]
    assert config.daily_count_per_card == demo["daily_count_per_card"]
    assert config.velocity is not None
    assert (config.velocity.count, config.velocity.seconds) == (
        demo["velocity"]["count"],
        demo["velocity"]["seconds"],
    )
    assert list(config.blocked_mccs) == demo["blocked_mccs"]
    assert config.impossible_travel_minutes == demo["impossible_travel_minutes"]
    key = config.pan_key()
    assert set(config.blacklist_pan_hashes) == {card_key(p, key) for p in demo["blacklist_pans"]}
    assert config.timezone == "Asia/Shanghai"


def test_demo_data_risk_table_loads_with_clear_pans_hashed() -> None:
    with open(DEMO_DATA, "rb") as f:
        table = tomllib.load(f)["risk"]
    config = config_from_mapping(table, env={"PAYSWITCH_RISK_PAN_KEY": KEY_HEX})
    assert config.blacklist_pan_hashes == (card_key("4761730000000052", KEY),)
    assert "4761730000000052" not in repr(config)
    assert KEY_HEX not in repr(config)  # the key is not shown either


def test_env_key_overrides_file_key(tmp_path: Path) -> None:
    path = tmp_path / "risk.toml"
    path.write_text(f'pan_hash_key = "{"ab" * 32}"\nblacklist_pans = ["4761730000000052"]\n')
    config = load_config(path, env={"PAYSWITCH_RISK_PAN_KEY": KEY_HEX})
    assert config.pan_key() == KEY
    assert config.blacklist_pan_hashes == (card_key("4761730000000052", KEY),)
    assert load_config(path, env={}).pan_key() == bytes.fromhex("ab" * 32)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("max_single_amount = -5", "max_single_amount: Value error, max_single_amount must be"),
        ("unknown_rule = 1", "unknown_rule"),
        ('timezone = "Mars/Olympus"', "timezone: Value error, unknown time zone"),
        ("velocity = { count = 0, seconds = 60 }", "velocity.count"),
        ('blocked_mccs = ["79"]', "blocked MCC must be 4-4 digits"),
        ('blacklist_pan_hashes = ["4761730000000052"]', "item 0 is not a 64-hex-digit"),
        ('backend = "postgres"', "backend"),
        ('[actions]\nvelocity = "ignore"', "actions.velocity"),
        ("[score]\nalert_at = 90\ndecline_at = 80", "alert_at <= decline_at"),
        ('[[card_ranges]]\nprefix = "47617"\n[[card_ranges]]\nprefix = "47617"', "twice"),
        ('[redis]\nurl = "http://x"', "redis"),
        ('blacklist_pans = ["4761730000000052"]', "needs a pan_hash_key"),
        ('pan_hash_key = "zz"', "pan_hash_key must be hex"),
        ("max_single_amount = [", "not valid TOML"),
        ('limit_currency = "999"', "limit_currency is not an ISO 4217 payment"),
        ('[rates]\n"157" = 1.0', "rates: Value error, a rates key is not an ISO 4217 payment"),
        ('[rates]\n"840" = 0', "rates: Value error, rates must be > 0"),
        ('[rates]\n"840" = -7.1', "rates: Value error, rates must be > 0"),
        ('[rates]\n"840" = nan', "rates.840: Input should be a finite number"),
        ('[rates]\n"156" = 1.0', "rates: no rate for the limit currency"),
        ('[[currency_limits]]\ncurrency = "000"', "not an ISO 4217 payment currency"),
        (
            '[[currency_limits]]\ncurrency = "840"\ndaily_amount_per_card = 1',
            "daily amounts are in limit_currency",
        ),
    ],
)
def test_broken_file_refused_with_reason(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "risk.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match="risk config") as info:
        load_config(path, env={})
    message = str(info.value)
    assert reason in message
    assert str(path) in message
    assert "4761730000000052" not in message  # input values are never echoed


def test_demo_rates_are_exact_decimals() -> None:
    config = load_config(DEMO_CONF, env={})
    assert config.limit_currency == "156"
    assert config.rates["840"] == Decimal("7.1")  # the TOML float, not 7.0999999999999996


def test_clear_pan_in_list_is_not_echoed(tmp_path: Path) -> None:
    path = tmp_path / "risk.toml"
    path.write_text(f'pan_hash_key = "{KEY_HEX}"\nblacklist_pans = ["4761-7300"]\n')
    with pytest.raises(ConfigError, match="item 0 is not a PAN") as info:
        load_config(path, env={})
    assert "4761-7300" not in str(info.value)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config("/nonexistent/risk.toml")


def test_defaults_are_valid_and_key_required_when_used() -> None:
    config = RiskConfig()
    assert config.backend == "memory"
    with pytest.raises(ConfigError, match="no pan_hash_key"):
        config.pan_key()


def test_card_key_and_masks() -> None:
    key = card_key("4761730000000011", KEY)
    assert len(key) == 64
    assert key == card_key("4761730000000011", KEY)
    assert key != card_key("4761730000000011", b"\x01" * 32)
    assert mask_pan("4761730000000011") == "476173******0011"
    assert looks_clear("4761730000000011")
    assert not looks_clear("476173******0011")
    with pytest.raises(PanError):
        card_key("4761-7300", KEY)
    with pytest.raises(PanError):
        card_key("4761730000000011", b"short")


def test_pan_tool(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("4761730000000052\n\nnot-a-pan\n"))
    assert main(["--conf", str(DEMO_CONF)]) == 1
    out, err = capsys.readouterr()
    demo_key = load_config(DEMO_CONF, env={}).pan_key()
    assert out == f"{card_key('4761730000000052', demo_key)}  # 476173******0052\n"
    assert "line 3" in err
    assert "not-a-pan" not in err
    monkeypatch.setenv("PAYSWITCH_RISK_PAN_KEY", KEY_HEX)
    monkeypatch.setattr("sys.stdin", io.StringIO("4761730000000011\n"))
    assert main([]) == 0
    assert capsys.readouterr().out.startswith(card_key("4761730000000011", KEY))
    monkeypatch.delenv("PAYSWITCH_RISK_PAN_KEY")
    assert main([]) == 2


@pytest.mark.parametrize(
    ("mti", "pcode", "kind", "counts"),
    [
        ("0200", "000000", TxnKind.PURCHASE, True),
        ("0200", "010000", TxnKind.CASH, True),
        ("0100", "000000", TxnKind.AUTHORIZATION, True),
        ("0200", "200000", TxnKind.REFUND, False),
        ("0200", "310000", TxnKind.BALANCE_INQUIRY, False),
        ("0220", "000000", TxnKind.COMPLETION, False),
        ("0400", "000000", TxnKind.OTHER, False),
        ("0800", "990000", TxnKind.OTHER, False),
    ],
)
def test_kind_from_iso(mti: str, pcode: str, kind: TxnKind, counts: bool) -> None:
    assert kind_from_iso(mti, pcode) == (kind, counts)
