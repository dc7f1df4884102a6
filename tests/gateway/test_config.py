from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from gateway.cli import main as gateway_main
from gateway.config import load_gateway_config
from kit.conf import ConfigError
from kit.dataset import Dataset, load_dataset
from tests.helpers import DEMO_CONF, ROOT


def test_demo_config_loads() -> None:
    cfg, base = load_gateway_config(DEMO_CONF / "gateway.toml")
    assert cfg.terminal.port == 8583
    assert cfg.terminal.tls_port == 8584
    assert cfg.admin.port == 9090
    assert [link.issuer for link in cfg.links] == ["alpha", "beta", "gamma"]
    assert base == DEMO_CONF


def test_demo_data_holds_the_shared_contract() -> None:
    """Every entry of the shared demo.toml is in conf/demo/data.toml, in the same order; ours
    may have more (T0000003, AES DUKPT, is not in the shared data yet)."""
    shared = ROOT.parent / "shared" / "demo" / "demo.toml"
    if not shared.exists():
        pytest.skip("shared/demo/demo.toml is not beside this checkout")
    theirs, ours = load_dataset(shared), load_dataset(DEMO_CONF / "data.toml")
    for f in dataclasses.fields(Dataset):
        contract, mine = getattr(theirs, f.name), getattr(ours, f.name)
        if isinstance(contract, tuple):
            seen = [_as_contract(item, contract) for item in mine]
            assert [item for item in seen if item in contract] == list(contract), f.name
        else:
            assert mine == contract, f.name
    assert "T0000003" in {t.id for t in ours.terminals}


# Fields our demo data adds to items of the shared data (issue 17: the links' ZMKs).
_ADDITIONS = ("zmk",)


def _as_contract(item: object, contract: tuple[object, ...]) -> object:
    """``item`` without what we add, when the shared data does not have it."""
    if not dataclasses.is_dataclass(item) or isinstance(item, type):
        return item
    names = {f.name for f in dataclasses.fields(item)}
    added = {
        name: None
        for name in _ADDITIONS
        if name in names and all(getattr(c, name, None) is None for c in contract)
    }
    return dataclasses.replace(item, **added) if added else item


def test_demo_otp_enrolment_is_the_shared_one() -> None:
    import tomllib

    shared = ROOT.parent / "shared" / "demo" / "otp.toml"
    if not shared.exists():
        pytest.skip("shared/demo/otp.toml is not beside this checkout")
    ours = tomllib.loads((DEMO_CONF / "otp.toml").read_text())
    assert tomllib.loads(shared.read_text()) == ours
    assert ours["payers"]  # the step-up demo needs enrolled payers


def test_unknown_key_is_rejected_with_its_path(tmp_path: Path) -> None:
    conf = tmp_path / "gateway.toml"
    conf.write_text(
        '[terminal]\nport = 1\nprot = 2\n[[links]]\nissuer = "a"\nendpoints = []\ntimout = 3\n'
    )
    with pytest.raises(ConfigError) as info:
        load_gateway_config(conf)
    text = str(info.value)
    assert "terminal.prot: unknown key" in text
    assert "links.0.timout: unknown key" in text


def test_wrong_type_is_rejected(tmp_path: Path) -> None:
    conf = tmp_path / "gateway.toml"
    conf.write_text('[terminal]\nport = "eighty"\n')
    with pytest.raises(ConfigError, match=r"terminal\.port"):
        load_gateway_config(conf)


def test_check_config_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gateway_main(["check-config", "--conf", str(DEMO_CONF / "gateway.toml")]) == 0
    assert "ok" in capsys.readouterr().out
    bad = tmp_path / "gateway.toml"
    bad.write_text("nonsense = 1\n")
    assert gateway_main(["check-config", "--conf", str(bad)]) == 2
    assert "nonsense: unknown key" in capsys.readouterr().err


def test_keys_never_in_repr() -> None:
    data = load_dataset(DEMO_CONF / "data.toml")
    text = repr(data)
    assert "6D61BA0EAED6548F1A86086208A886AB" not in text
    assert "4761730000000011" not in text


def test_standin_limit_currency_is_iso_4217(tmp_path: Path) -> None:
    conf = tmp_path / "gateway.toml"
    conf.write_text('[standin]\nlimit_currency = "999"\n')  # XXX: no currency
    with pytest.raises(ConfigError, match=r"standin\.limit_currency: .*ISO 4217"):
        load_gateway_config(conf)
    conf.write_text('[standin]\nlimit_currency = "840"\n')
    assert load_gateway_config(conf)[0].standin.limit_currency == "840"


def test_check_config_refuses_stand_in_and_risk_limits_in_two_currencies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the risk stage on, stand-in limits are in its limit_currency (converted with its
    rates): a different [standin] limit_currency would give them another meaning."""
    risk = tmp_path / "risk.toml"
    risk.write_text('limit_currency = "840"\n')
    conf = tmp_path / "gateway.toml"
    head = (
        f'data = "{DEMO_CONF / "data.toml"}"\nrisk = "{risk}"\n'
        f'journal = "{DEMO_CONF / "journal.toml"}"\n[standin]\n'
    )
    conf.write_text(head)  # limit_currency left at 156
    assert gateway_main(["check-config", "--conf", str(conf)]) == 2
    err = capsys.readouterr().err
    assert "[standin] limit_currency 156" in err
    assert 'limit_currency "840"' in err
    conf.write_text(head + 'limit_currency = "840"\n')
    assert gateway_main(["check-config", "--conf", str(conf)]) == 0


@pytest.mark.parametrize(
    ("toml", "refused"),
    [
        (
            "[terminal]\nidle_timeout = 30.0\nrequest_timeout = 30.0\n",
            r"terminal: .*terminal\.idle_timeout \(30 s\) must be greater than"
            r" terminal\.request_timeout \(30 s\): a terminal waiting for its answer sends nothing",
        ),
        (
            "[qr_api.limits]\nmax_connections = 10\nmax_connections_per_address = 11\n",
            r"qr_api\.limits: .*max_connections_per_address must not exceed max_connections",
        ),
        ("[admin.limits]\nmax_connections = 0\n", r"admin\.limits\.max_connections: .*equal to 1"),
        ("duplicate_max_entries = 0\n", r"duplicate_max_entries: .*equal to 1"),
        ("ksn_memory = -5\n", r"ksn_memory: .*equal to 1"),
    ],
)
def test_check_config_refuses_limits_that_cannot_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str, refused: str
) -> None:
    """Refused with the key's path and why (issue 15: the limits and the soak's caps)."""
    bad = tmp_path / "gateway.toml"
    bad.write_text(toml)
    assert gateway_main(["check-config", "--conf", str(bad)]) == 2
    err = capsys.readouterr().err
    assert re.search(refused, err), err


def test_link_key_settings_are_checked_with_their_path(tmp_path: Path) -> None:
    conf = tmp_path / "gateway.toml"
    conf.write_text(
        '[[links]]\nissuer = "a"\nendpoints = []\nkey_rotation_interval = -1\n'
        'key_exchange_on_sign_on = "maybe"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_gateway_config(conf)
    text = str(info.value)
    assert "links.0.key_rotation_interval" in text
    assert "links.0.key_exchange_on_sign_on" in text


def test_the_business_day_is_configured_and_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, _ = load_gateway_config(DEMO_CONF / "gateway.toml")
    assert (cfg.switch.cutover, cfg.switch.timezone) == ("23:00", "Asia/Shanghai")
    default, _ = load_gateway_config(_write(tmp_path, ""))
    assert (default.switch.cutover, default.switch.timezone) == ("00:00", "UTC")
    assert default.switch.calendar().cutover.isoformat() == "00:00:00"
    conf = _write(
        tmp_path,
        '[switch]\ncutover = "24:00"\ntimezone = "Mars/Olympus"\ncutover_timeout = 0\n'
        '[[links]]\nissuer = "alpha"\nendpoints = []\nsend_settlement_date = "sometimes"\n',
    )
    assert gateway_main(["check-config", "--conf", str(conf)]) == 2
    err = capsys.readouterr().err
    assert "switch.cutover: " in err
    assert "switch.timezone: " in err
    assert "Mars/Olympus" in err
    assert "switch.cutover_timeout: " in err
    assert "links.0.send_settlement_date: " in err


def _write(tmp_path: Path, text: str) -> Path:
    conf = tmp_path / "gateway.toml"
    conf.write_text(text)
    return conf
