"""README's first command: the demo stack comes up, pos-sim gets an approval, SIGTERM stops all."""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers import ROOT
from tests.integration.demo_support import BIN, running_demo


@pytest.mark.slow
def test_demo_stack_serves_pos_sim_and_stops_cleanly() -> None:
    with running_demo() as demo:
        out = subprocess.run(
            [
                str(BIN / "pos-sim"),
                "purchase",
                "--terminal",
                "T0000001",
                "--pan",
                "4761730000000011",
                "--amount",
                "1250",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "response_code        00" in out.stdout
        assert "4761730000000011" not in out.stdout  # masked
        tls = subprocess.run(
            [
                str(BIN / "pos-sim"),
                "balance",
                "--port",
                "8584",
                "--tls-ca",
                "var/certs/ca.pem",
                "--pan",
                "4761730000000011",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert tls.returncode == 0, tls.stdout + tls.stderr
        # The UnionPay-style listener on 8585: TPDU framing, iso87-bcd, the TPDU swapped.
        cup = subprocess.run(
            [str(BIN / "pos-sim"), "purchase", "--cup", "--pan", "4761730000000011"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert cup.returncode == 0, cup.stdout + cup.stderr
        assert "TPDU sent 6000030000, answered 6000000003" in cup.stdout
    demo.assert_stopped_cleanly()
