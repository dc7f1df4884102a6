"""The bench's config rewriting (also what the jPOS rig's mkconf uses): every file a demo config
names must still be found once the config is written elsewhere. The rig's ps-demo row could not
start when the QR API's ``otp_enrolment`` was added and stayed relative."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loadtest.bench import DEMO, materialize, relocate, start_stack


def _strings(doc: Any, key: str = "") -> list[tuple[str, str]]:
    if isinstance(doc, dict):
        return [pair for k, v in doc.items() for pair in _strings(v, k)]
    if isinstance(doc, list):
        return [pair for v in doc for pair in _strings(v, key)]
    return [(key, doc)] if isinstance(doc, str) else []


@pytest.mark.parametrize(
    ("name", "module", "cls"),
    [
        ("gateway.toml", "gateway.config", "GatewayConfig"),
        ("issuer-sim.toml", "issuer_sim.config", "IssuerSimConfig"),
        ("hsm.toml", "hsm_sim.config", "HsmConfig"),
    ],
)
def test_every_file_a_demo_config_names_is_made_absolute(name: str, module: str, cls: str) -> None:
    doc = relocate(materialize(DEMO / name, module, cls), DEMO, {})
    # ``journal`` stays relative on purpose: the bench and the rig write their own fresh
    # journal.toml beside the rewritten gateway.toml.
    named = [
        (key, value)
        for key, value in _strings(doc)
        if value and key != "journal" and (DEMO / value).is_file()
    ]
    # A relative name of a file beside the config would not be found from another directory.
    assert [(k, v) for k, v in named if not Path(v).is_absolute()] == []
    if name == "gateway.toml":
        keys = {k for k, v in _strings(doc) if Path(v).is_absolute()}
        assert {"data", "risk", "otp_enrolment"} <= keys


def test_the_issuer_alone_speaks_what_the_load_client_writes() -> None:
    """``--target issuer`` drives issuer-sim with the load generator, which writes SPEC's
    dialect: the demo's beta (iso87-bcd) and gamma (iso93-bcd) are benched on it."""
    from issuer_sim.config import IssuerSimConfig
    from kit.conf import build
    from loadtest.bench import spoken_by_the_load_client

    doc = materialize(DEMO / "issuer-sim.toml", "issuer_sim.config", "IssuerSimConfig")
    dialects = {i["id"]: i.get("dialect") for i in doc["issuers"]}
    assert dialects == {"alpha": "terminal", "beta": "iso87-bcd", "gamma": "iso93-bcd"}
    for issuer in doc["issuers"]:
        plain = spoken_by_the_load_client(issuer)
        assert plain["dialect"] == "terminal"
        assert plain["id"] == issuer["id"]
        assert "translation" not in plain
        # A valid issuer-sim config as rewritten (beta's also_accept = "iso87-ascii" beside
        # the terminal dialect was refused: `loadtest bench --target issuer` did not start).
        build(IssuerSimConfig, {**doc, "issuers": [plain]}, "rewritten")


def test_an_overridden_profile_file_is_the_one_the_gateway_reads(tmp_path: Path) -> None:
    """The soak lowers risk.toml's memory_max_cards: the gateway must read the rewritten copy,
    not the profile's (the path was made absolute to the profile's, and the soak's first hour
    ran with the default cap: RSS grew with every new card and looked like a leak)."""
    import tomllib

    overrides = {"risk.toml": {"memory_max_cards": 1234}}
    with start_stack(
        DEMO, tmp_path, backend="asyncio", issuers=[], gateway=False, hsm=False,
        overrides=overrides,
    ):  # fmt: skip
        gw = tomllib.loads((tmp_path / "gateway.toml").read_text())
        risk = Path(gw["risk"])
        assert risk == tmp_path / "risk.toml"
        assert tomllib.loads(risk.read_text())["memory_max_cards"] == 1234
        assert Path(gw["data"]) == (DEMO / "data.toml").resolve()  # not overridden: the profile's
