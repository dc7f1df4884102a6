"""CPU time, time waiting for a CPU and peak RSS of a process from /proc (Linux), for
per-transaction CPU figures, and free loopback ports for the processes a benchmark starts."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, *, children: bool = True) -> float:
    """User + system CPU seconds consumed so far by ``pid`` and (``children``) its live
    descendants (a gateway with ``workers > 1`` is a supervisor: its workers do the work)."""

    def used(proc: int) -> float:
        fields = Path(f"/proc/{proc}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK

    return _summed(pid, children, used)


def cpu_wait_seconds(pid: int, *, children: bool = True) -> float:
    """Seconds ``pid``'s threads (and ``children``'s) spent runnable but waiting for a CPU
    (field 2 of ``/proc/PID/task/TID/schedstat``). Beside the CPU time it tells a process
    that is short of cores (it waits to run) from one that waits for its peers (it sleeps):
    only the first gets faster with less CPU spent elsewhere on the machine."""

    def waited(proc: int) -> float:
        total = 0
        for task in Path(f"/proc/{proc}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[1])
            except (OSError, IndexError, ValueError):
                continue  # a thread that just ended, or a kernel without schedstats
        return total / 1e9

    return _summed(pid, children, waited)


def _summed(pid: int, children: bool, read: Callable[[int], float]) -> float:
    """``read`` of ``pid`` plus, with ``children``, of its live descendants: ``pid`` gone
    raises ``OSError``, a child that just ended counts for nothing."""
    total = 0.0
    for proc in (pid, *(descendants(pid) if children else ())):
        try:
            total += read(proc)
        except OSError:
            if proc == pid:
                raise
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
