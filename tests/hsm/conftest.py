"""Fixtures of the HSM tests: the demo keys of demo.toml, in clear and under the demo LMK."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from hsm_sim.lmk import Lmk

DEMO = Path(__file__).resolve().parents[2] / "conf" / "demo" / "data.toml"


def demo_data() -> dict[str, Any]:
    with DEMO.open("rb") as fh:
        return tomllib.load(fh)


def demo_keys(*, aes: bool = False) -> list[tuple[str, str, str]]:
    """(name, clear key, kcv) for every TDES key in demo.toml (``aes``: every AES key instead,
    the BDKs of ``aes_dukpt`` terminals)."""
    data = demo_data()
    out = [] if aes else [("hsm.lmk", data["hsm"]["lmk"]["key"], data["hsm"]["lmk"]["kcv"])]
    for group in ("issuers", "terminals"):
        for item in data[group]:
            for name, value in item.items():
                is_aes = name == "bdk" and item.get("key_mode") == "aes_dukpt"
                if isinstance(value, dict) and "key" in value and is_aes == aes:
                    out.append((f"{item['id']}.{name}", value["key"], value["kcv"]))
    return out


LMK_HEX = demo_data()["hsm"]["lmk"]["key"]


@pytest.fixture
def lmk() -> Lmk:
    return Lmk(LMK_HEX)
