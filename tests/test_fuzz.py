"""The fuzz targets (``fuzz/``): their checks under hypothesis, the seed corpus, the crashes the
campaign found (each stays here as a regression input), and a bounded atheris smoke."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.__main__ import CORPUS
from fuzz.targets import TARGETS
from tests.tools import in_ci

ROOT = Path(__file__).resolve().parents[1]
NAMES = sorted(TARGETS)
SMOKE_RUNS = 2000

# (target, input) of every crash fuzzing found; the fix is named in the commit that added it.
CRASHES: list[tuple[str, bytes]] = [
    ("field48", "92\u00b23".encode()),  # "²".isdigit() but int("²") raised ValueError
]
TEXT_TARGETS = ("field48", "qr-mpm")  # decoders of str: any code point may come


def test_every_target_has_a_small_seed_corpus() -> None:
    assert sorted(p.name for p in CORPUS.iterdir() if p.is_dir()) == NAMES
    files = [p for p in CORPUS.rglob("*") if p.is_file()]
    assert all(len(list((CORPUS / name).iterdir())) >= 2 for name in NAMES)
    assert sum(p.stat().st_size for p in files) < 200_000


@pytest.mark.parametrize("name", NAMES)
def test_seed_corpus_holds_the_properties(name: str) -> None:
    for seed in sorted((CORPUS / name).iterdir()):
        TARGETS[name](seed.read_bytes())


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=512))
def test_random_bytes_hold_the_properties(name: str, data: bytes) -> None:
    TARGETS[name](data)


@pytest.mark.parametrize("name", TEXT_TARGETS)
@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=64))
def test_random_text_holds_the_properties(name: str, text: str) -> None:
    TARGETS[name](text.encode())


@pytest.mark.parametrize(("name", "data"), CRASHES)
def test_crashes_found_by_fuzzing_stay_fixed(name: str, data: bytes) -> None:
    TARGETS[name](data)


@pytest.mark.slow
def test_atheris_smoke_runs_every_target(tmp_path: Path) -> None:
    if importlib.util.find_spec("atheris") is None:
        if in_ci():
            pytest.fail("atheris is not installed and CI=true: the dev extra must bring it")
        pytest.skip("atheris is not installed: pip install -e '.[dev]'")
    smoke = ["all", "--runs", str(SMOKE_RUNS), "--work", str(tmp_path)]
    # Two at a time (CI has 2 cores): most of a target's 2-3 s is its child's start.
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "fuzz", *smoke, "--jobs", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert time.monotonic() - start < 90
    for name in NAMES:
        assert f"fuzz {name}: exit 0" in done.stdout
