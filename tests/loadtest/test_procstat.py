"""``loadtest.procstat``: CPU time and time waiting for a CPU, read from /proc."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadtest.procstat import cpu_seconds, cpu_wait_seconds

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/schedstat").is_file() or not hasattr(os, "sched_setaffinity"),
    reason="Linux /proc with scheduler statistics, and CPU affinity, only",
)

_SPIN = "import time\nend = time.monotonic() + {secs}\nwhile time.monotonic() < end: pass\n"


def _spinners(count: int, secs: float) -> list[subprocess.Popen[bytes]]:
    cpu = min(os.sched_getaffinity(0))
    procs = []
    for _ in range(count):
        proc = subprocess.Popen([sys.executable, "-c", _SPIN.format(secs=secs)])
        os.sched_setaffinity(proc.pid, {cpu})  # all on one CPU: they must take turns
        procs.append(proc)
    return procs


def test_processes_sharing_one_cpu_wait_for_it() -> None:
    """Three busy processes pinned to one CPU run about a third of the time each and wait
    for the CPU the rest: the wait figure sees what the CPU figure cannot."""
    secs = 1.5
    procs = _spinners(3, secs)
    try:
        time.sleep(secs - 0.3)
        cpu = [cpu_seconds(p.pid) for p in procs]
        waited = [cpu_wait_seconds(p.pid) for p in procs]
    finally:
        for proc in procs:
            proc.wait(timeout=10)
    # Each has been runnable ~1.2 s: it ran for about a third of that, waited the rest.
    assert sum(waited) > 0.8 * sum(cpu) > 0
    assert all(w > 0.2 for w in waited)


def test_a_process_that_is_gone_raises() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=10)
    with pytest.raises(FileNotFoundError):
        cpu_wait_seconds(proc.pid)
