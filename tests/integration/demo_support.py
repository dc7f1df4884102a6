"""The shipped demo (``gateway demo``) on its fixed ports, for the tests that must run it as a
user does: started from the checkout, ready when the admin port's /readyz says so, stopped
with SIGTERM. Never run two of these tests in parallel."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers import ROOT

BIN = Path(sys.executable).parent
PORTS = (8583, 8584, 8585, 8080, 9090, 9583, 9584, 9585, 1500)
ADMIN = "http://127.0.0.1:9090"


def in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Demo:
    process: subprocess.Popen[bytes]
    output: str = ""
    """Everything the demo printed, once it has stopped."""

    def assert_stopped_cleanly(self) -> None:
        assert self.process.returncode == 0, self.output[-3000:]
        assert "payswitch demo stopped" in self.output
        assert "Traceback" not in self.output, self.output[-3000:]
        assert not [p for p in PORTS if in_use(p)], "a demo process survived SIGTERM"


@contextmanager
def running_demo() -> Iterator[Demo]:
    busy = [p for p in PORTS if in_use(p)]
    if busy:
        pytest.skip(f"demo ports already in use: {busy} (is a demo running?)")
    # A file, not a pipe: the demo logs every transaction, and a pipe nobody reads until the
    # end fills up (64 KiB) and stops the whole stack after a few hundred under load.
    with tempfile.TemporaryFile() as log:
        demo = Demo(
            subprocess.Popen(
                [str(BIN / "gateway"), "demo", "--conf", "conf/demo"],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                assert demo.process.poll() is None, "demo exited early"
                try:
                    if httpx.get(f"{ADMIN}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "demo not ready within 60 s"
                time.sleep(0.2)  # another process's readiness: polled, no event to await
            yield demo
        finally:
            demo.process.send_signal(signal.SIGTERM)
            try:
                demo.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                demo.process.kill()
                demo.process.wait()
            log.seek(0)
            demo.output = log.read().decode(errors="replace")
