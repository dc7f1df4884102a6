"""The bench's config rewriting (also what the jPOS rig's mkconf uses): every file a demo config
names must still be found once the config is written elsewhere. The rig's ps-demo row could not
start when the QR API's ``otp_enrolment`` was added and stayed relative."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loadtest.bench import DEMO, materialize, relocate


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
    from loadtest.bench import spoken_by_the_load_client

    doc = materialize(DEMO / "issuer-sim.toml", "issuer_sim.config", "IssuerSimConfig")
    dialects = {i["id"]: i.get("dialect") for i in doc["issuers"]}
    assert dialects == {"alpha": "terminal", "beta": "iso87-bcd", "gamma": "iso93-bcd"}
    for issuer in doc["issuers"]:
        plain = spoken_by_the_load_client(issuer)
        assert plain["dialect"] == "terminal"
        assert plain["id"] == issuer["id"]
        assert "translation" not in plain
