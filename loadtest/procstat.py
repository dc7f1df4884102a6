"""CPU time and peak RSS of a process from /proc (Linux), for per-transaction CPU figures, and
free loopback ports for the processes a benchmark starts."""

from __future__ import annotations

import os
import socket
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, *, children: bool = True) -> float:
    """User + system CPU seconds consumed so far by ``pid`` and (``children``) its live
    descendants (a gateway with ``workers > 1`` is a supervisor: its workers do the work)."""
    total = 0.0
    for proc in (pid, *(descendants(pid) if children else ())):
        try:
            fields = Path(f"/proc/{proc}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            if proc == pid:
                raise
            continue  # a child that just ended
        total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


def descendants(pid: int) -> list[int]:
    """Live descendants of ``pid`` (from /proc/PID/task/*/children)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found.extend(children)
            todo.extend(children)
    return found


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the process that binds it may still race)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
