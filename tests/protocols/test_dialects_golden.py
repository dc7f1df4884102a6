"""Every dialect against messages jPOS 2.1.10 packed itself (../shared/golden/jpos/): our
fields pack to jPOS's bytes and jPOS's bytes unpack to its fields, with pyiso8583 (Codec) and
with the codec the switch uses (best_codec)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from protocols.codec import Codec
from protocols.dialects import DIALECTS, get_dialect
from protocols.fastcodec import FastCodec, best_codec
from protocols.message import Message

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT.parent / "shared" / "golden" / "jpos"
PACKAGERS = {
    "iso87-ascii": "ISO87APackagerBBitmap",
    "iso87-ascii-hex": "ISO87APackagerBBitmap",  # every vector: 52, 64, 128 as hex text too
    "iso87-bcd": "ISO87BPackager",
    "iso93-ascii": "ISO93APackager",
    "iso93-bcd": "ISO93BPackager",
}
# jPOS's ISO87APackagerBBitmap sends these as hex text, SPEC (iso87-ascii) as raw bytes.
HEX_TEXT_IN_JPOS = {"iso87-ascii": {"52", "64", "128"}}


def vectors(dialect: str) -> list[dict[str, Any]]:
    path = GOLDEN / f"{PACKAGERS[dialect]}.json"
    if not path.is_file():
        pytest.skip(
            f"{path} is absent: the jPOS vectors are read from ../shared, beside a checkout"
        )
    doc = json.loads(path.read_text())
    skip = HEX_TEXT_IN_JPOS.get(dialect, set())
    return [v for v in doc["vectors"] if not skip & set(v["fields"])]


def message(fields: dict[str, Any]) -> Message:
    return Message(
        fields["0"], {k: v for k, v in fields.items() if k not in ("0", "binary_fields")}
    )


def test_every_dialect_has_golden_vectors_and_terminal_is_iso87_ascii() -> None:
    assert set(PACKAGERS) == set(DIALECTS) - {"terminal"}
    assert get_dialect("terminal") is get_dialect("iso87-ascii")


@pytest.mark.parametrize("dialect", sorted(PACKAGERS))
@pytest.mark.parametrize("codec_kind", ["pyiso8583", "best"])
def test_golden_vectors_both_directions(dialect: str, codec_kind: str) -> None:
    spec = get_dialect(dialect)
    codec = Codec(spec) if codec_kind == "pyiso8583" else best_codec(spec)
    cases = vectors(dialect)
    assert len(cases) >= 6
    for case in cases:
        msg, raw = message(case["fields"]), bytes.fromhex(case["hex"])
        assert codec.encode(msg) == raw, case["name"]
        assert codec.decode(raw) == msg, case["name"]
        if isinstance(codec, FastCodec):  # real traffic takes the fast paths
            assert codec._encode_fast(msg) == raw, case["name"]
            assert codec._decode_fast(raw) == msg, case["name"]


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_the_switch_gets_the_fast_codec_for_every_dialect(dialect: str) -> None:
    assert type(best_codec(get_dialect(dialect))) is FastCodec
