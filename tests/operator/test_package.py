"""The distribution: ``python -m build`` makes an sdist and, from it, a wheel, which installs
into a clean venv whose commands run, with the conf templates as package data."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow


def run(*cmd: str | Path, cwd: Path | None = None) -> str:
    out = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, check=False, timeout=300
    )
    assert out.returncode == 0, f"{cmd}: {out.stdout}\n{out.stderr}"
    return out.stdout


def test_wheel_from_the_sdist_installs_and_runs_in_a_clean_venv(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    # Default build: the sdist first, then the wheel built from the unpacked sdist, so the
    # wheel also proves the sdist is complete.
    run(sys.executable, "-m", "build", "--outdir", dist, ROOT)
    (sdist,) = dist.glob("payswitch-*.tar.gz")
    (wheel,) = dist.glob("payswitch-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert "gateway/conf_templates/demo/gateway.toml" in names
    assert "gateway/conf_templates/scaleout/haproxy.cfg" in names
    assert not any(n.startswith(("ops/", "tests/", "conf/")) for n in names), "not importable"
    assert sdist.stat().st_size > 0

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    bin_dir = venv / "bin"
    run(bin_dir / "pip", "install", "--quiet", "--disable-pip-version-check", wheel)

    site = tmp_path / "site"
    out = run(bin_dir / "gateway", "init-conf", site)
    shipped = sorted(
        p.relative_to(ROOT / "conf") for p in (ROOT / "conf").rglob("*") if p.is_file()
    )
    assert f"{len(shipped)} files" in out  # every template of conf/, nothing else
    assert (
        sorted(p.relative_to(site / "conf") for p in (site / "conf").rglob("*") if p.is_file())
        == shipped
    )
    out = run(bin_dir / "gateway", "check-config", cwd=site)
    assert "conf/demo/gateway.toml: ok (3 issuer links" in out
    out = run(bin_dir / "gateway", "check-config", "--conf", "conf/scaleout/node1.toml", cwd=site)
    assert "risk on redis, journal on postgres" in out
    assert "purchase" in run(bin_dir / "pos-sim", "--help")
    # The commands come from the venv's site-packages, not from this checkout.
    where = run(bin_dir / "python", "-c", "import gateway; print(gateway.__file__)", cwd=site)
    assert str(venv) in where
