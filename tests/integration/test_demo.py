"""README's first command: the demo stack comes up, pos-sim gets an approval, SIGTERM stops all."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import ROOT

BIN = Path(sys.executable).parent
PORTS = (8583, 8584, 8080, 9090, 9583, 9584, 9585, 1500)


def _in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_demo_stack_serves_pos_sim_and_stops_cleanly() -> None:
    busy = [p for p in PORTS if _in_use(p)]
    if busy:
        pytest.skip(f"demo ports already in use: {busy} (is a demo running?)")
    demo = subprocess.Popen(
        [str(BIN / "gateway"), "demo", "--conf", "conf/demo"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert demo.poll() is None, "demo exited early"
            try:
                if httpx.get("http://127.0.0.1:9090/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "demo not ready within 60 s"
            time.sleep(0.2)
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
    finally:
        demo.send_signal(signal.SIGTERM)
        try:
            output, _ = demo.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            demo.kill()
            output, _ = demo.communicate()
    text = output.decode(errors="replace")
    assert demo.returncode == 0, text[-3000:]
    assert "payswitch demo stopped" in text
    assert "Traceback" not in text, text[-3000:]
    assert not [p for p in PORTS if _in_use(p)], "a demo process survived SIGTERM"
