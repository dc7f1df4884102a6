"""Per-link dialect configuration (issue 16 item 4): ``dialect``, ``header`` and
``translation`` on the gateway's links and the issuer simulator's issuers, refused with the
key's path when wrong; the demo's two ends agree; issuer-sim run speaks its configured
dialect."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from pathlib import Path

import pytest

from gateway.cli import main as gateway_main
from gateway.config import load_gateway_config
from issuer_sim.cli import build_server
from issuer_sim.config import IssuerSimConfig
from kit.conf import ConfigError, build, load
from protocols.dialects import get_dialect
from protocols.fastcodec import best_codec
from protocols.message import Message
from protocols.translate import LinkCodec
from tests.helpers import DEMO_CONF

LINK = '[[links]]\nissuer = "alpha"\nendpoints = ["127.0.0.1:9583"]\n'


def check(tmp_path: Path, link_extra: str) -> tuple[int, str]:
    conf = tmp_path / "gateway.toml"
    data = (DEMO_CONF / "data.toml").resolve()
    conf.write_text(f'data = "{data}"\nrisk = ""\n{LINK}{link_extra}')
    return gateway_main(["check-config", "--conf", str(conf)]), str(conf)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('dialect = "iso99-ebcdic"\n', r"links.0.dialect: .*unknown ISO 8583 dialect 'iso99"),
        ('dialect = "iso93-bcd"\nheader = "\\u0001"\n', r"links.0.header: .*printable ASCII"),
        (
            'dialect = "iso93-bcd"\n[links.translation]\nresponse_codes = { "51" = "11" }\n',
            r"links.0: .*translation.response_codes.51: '11' is not a 3-digit action code",
        ),
        (
            'dialect = "iso93-bcd"\n[links.translation]\nfallback = "00"\n',
            r"links.0: .*translation.fallback: '00' must be a 2-character decline",
        ),
        (
            'dialect = "iso93-bcd"\n[links.translation]\nmti = { "0400" = "0420" }\n',
            r"links.0: .*translation.mti.0400: '0420' is not a 1993 MTI",
        ),
        (
            'dialect = "iso87-bcd"\n[links.translation]\nfallback = "05"\n',
            r"links.0: .*translation: dialect 'iso87-bcd' is the canonical version",
        ),
        ('dialect = "iso93-bcd"\n[links.translation]\nfalback = "05"\n', r"falback: unknown"),
    ],
)
def test_check_config_refuses_bad_link_dialects_with_the_keys_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, expected: str
) -> None:
    code, _ = check(tmp_path, extra)
    assert code == 2
    assert re.search(expected, capsys.readouterr().err)


def test_check_config_accepts_and_names_the_link_dialects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = (
        'dialect = "iso93-ascii"\nheader = "ISO026000075"\n[links.translation]\n'
        'fallback = "96"\nresponse_codes = { "51" = "199" }\nmti = { "0400" = "1400" }\n'
    )
    code, _ = check(tmp_path, extra)
    assert code == 0
    assert "alpha iso93-ascii" in capsys.readouterr().out


def test_issuer_sim_refuses_an_unknown_dialect_with_its_path() -> None:
    doc = {"issuers": [{"id": "gamma", "allowed_clients": ["switch"], "dialect": "iso93"}]}
    with pytest.raises(ConfigError, match=r"issuers\.0\.dialect: .*unknown ISO 8583 dialect"):
        build(IssuerSimConfig, doc, "issuer-sim.toml")


def test_the_demo_links_and_issuer_hosts_speak_the_same_dialects() -> None:
    gw, _ = load_gateway_config(DEMO_CONF / "gateway.toml")
    sim = load(IssuerSimConfig, DEMO_CONF / "issuer-sim.toml")
    links = {link.issuer: (link.dialect, link.header, link.translation) for link in gw.links}
    hosts = {ep.id: (ep.dialect, ep.header, ep.translation) for ep in sim.issuers}
    assert links == hosts
    assert {i: d for i, (d, _, _) in links.items()} == {
        "alpha": "terminal",
        "beta": "iso87-bcd",
        "gamma": "iso93-bcd",
    }


def test_issuer_sim_run_answers_1993_requests_in_1993(pki_dir: Path) -> None:
    """gamma as ``issuer-sim run`` builds it from the demo config: a 1200 balance inquiry in,
    a 1210 with a 3-digit action code out."""
    cfg = load(IssuerSimConfig, DEMO_CONF / "issuer-sim.toml")
    cfg = dataclasses.replace(cfg, data=str(DEMO_CONF / "data.toml"), pki_dir=str(pki_dir))
    server = build_server(cfg, DEMO_CONF, "gamma", 0)
    assert isinstance(server.codec, LinkCodec)
    now = dt.datetime.now(dt.UTC)
    wire = best_codec(get_dialect("iso93-bcd"))
    request = Message(
        "1200",
        {
            "2": "6250940000000019",
            "3": "310000",
            "4": "000000000000",
            "7": now.strftime("%m%d%H%M%S"),
            "11": "000042",
            "12": now.strftime("%y%m%d%H%M%S"),
            "14": "3012",
            "22": "21010121314C",
            "24": "200",
            "41": "T0000001",
            "42": "M00000000000001",
            "49": "156",
        },
    )
    served = server.serve_frame(wire.encode(request))
    assert served is not None
    answer, _ = served
    assert answer is not None
    reply = wire.decode(server.encode(answer))
    assert (reply.mti, reply["39"], reply["24"], reply["11"]) == ("1210", "000", "200", "000042")
    assert reply["12"] == request["12"]
    assert reply["54"] == "0002156C000005000000"
