"""Framing and terminal dialect keys: an unknown value is refused by ``gateway check-config``
(and by issuer-sim's loader) with the key's path; the demo has its UnionPay-style listener."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main as gateway_main
from gateway.config import load_gateway_config
from issuer_sim.config import IssuerSimConfig
from kit.conf import ConfigError, load
from tests.helpers import DEMO_CONF


def test_demo_has_a_tpdu_bcd_listener_beside_the_spec_ones() -> None:
    cfg, _ = load_gateway_config(DEMO_CONF / "gateway.toml")
    t = cfg.terminal
    assert (t.port, t.tls_port, t.framing, t.dialect) == (8583, 8584, "binary2", "iso87-ascii")
    [cup] = t.listeners
    assert (cup.name, cup.port, cup.tls, cup.framing, cup.dialect) == (
        "cup",
        8585,
        False,
        "binary2-tpdu",
        "iso87-bcd",
    )
    assert {link.framing for link in cfg.links} == {"binary2"}
    sim = load(IssuerSimConfig, DEMO_CONF / "issuer-sim.toml")
    assert {ep.framing for ep in sim.issuers} == {"binary2"}


@pytest.mark.parametrize(
    ("toml", "path", "what"),
    [
        ('[terminal]\nframing = "ascii2"\n', "terminal.framing", "unknown framing 'ascii2'"),
        ('[terminal]\ndialect = "iso93-bcd"\n', "terminal.dialect", "unknown terminal dialect"),
        (
            '[[terminal.listeners]]\nname = "cup"\nport = 1\nframing = "tpdu"\n',
            "terminal.listeners.0.framing",
            "unknown framing 'tpdu'",
        ),
        (
            '[[terminal.listeners]]\nname = "cup"\nport = 1\ndialect = "jpos"\n',
            "terminal.listeners.0.dialect",
            "unknown terminal dialect 'jpos'",
        ),
        (
            '[[links]]\nissuer = "alpha"\nendpoints = ["h:1"]\nframing = "binary4"\n',
            "links.0.framing",
            "unknown framing 'binary4'",
        ),
        (
            '[[links]]\nissuer = "alpha"\nendpoints = ["h:1"]\ntpdu = "6100030000"\n',
            "links.0.tpdu",
            "should match pattern",
        ),
        (
            '[terminal]\nmax_frame = 10000\nframing = "ascii4"\n',
            "terminal",
            "framing: ascii4 carries at most 9999 bytes",
        ),
        (
            '[[terminal.listeners]]\nname = "tls"\nport = 1\n',
            "terminal",
            "names must be unique and not tcp or tls",
        ),
    ],
)
def test_check_config_refuses_with_the_keys_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str, path: str, what: str
) -> None:
    conf = tmp_path / "gateway.toml"
    conf.write_text(f'data = "{DEMO_CONF / "data.toml"}"\nrisk = ""\n' + toml)
    assert gateway_main(["check-config", "--conf", str(conf)]) == 2
    err = capsys.readouterr().err
    assert f"  {path}: " in err
    assert what in err


def test_check_config_takes_every_framing(tmp_path: Path) -> None:
    conf = tmp_path / "gateway.toml"
    conf.write_text(
        f'data = "{DEMO_CONF / "data.toml"}"\nrisk = ""\n[terminal]\nframing = "ascii4"\n'
        '[[terminal.listeners]]\nname = "cup"\nport = 0\nframing = "binary2-tpdu"\n'
        'dialect = "iso87-bcd"\n[[links]]\nissuer = "alpha"\nendpoints = ["h:1"]\n'
        'framing = "binary2-tpdu"\ntpdu = "6000050001"\n'
    )
    assert gateway_main(["check-config", "--conf", str(conf)]) == 0


def test_issuer_sim_refuses_an_unknown_framing_with_its_path(tmp_path: Path) -> None:
    conf = tmp_path / "issuer-sim.toml"
    conf.write_text('[[issuers]]\nid = "beta"\nallowed_clients = ["switch"]\nframing = "x"\n')
    with pytest.raises(ConfigError, match=r"issuers\.0\.framing: .*unknown framing 'x'"):
        load(IssuerSimConfig, conf)
