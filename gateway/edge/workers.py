"""Several gateway worker processes on one machine (use every core).

``workers = N`` in the gateway config makes ``gateway run`` a supervisor: it starts N
``gateway run --worker I`` children. Every worker listens on the same terminal ports with
SO_REUSEPORT (the kernel spreads connections; worker 0 alone serves the QR API, whose payment
and idempotency stores are per process), has its own admin port (base + I), its own
node number (base + I, so RRNs never collide) and its own issuer links. With card affinity
(the default, ``gateway/edge/affinity.py``) each card's requests run in the worker that owns
the card, so limits, duplicates, reversals and stand-in stay exact with per-process state; the
supervisor gives the workers a private socket directory for that. The supervisor restarts a
worker that dies and stops them all on SIGINT/SIGTERM; SIGHUP is passed on (rule reload).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import anyio
from anyio.abc import Process

from gateway.config import GatewayConfig
from gateway.edge.affinity import ENV_DIR
from kit.logs import get_logger

log = get_logger("gateway.edge.workers")

MAX_NODE = 35  # the last base-36 digit of an RRN


def worker_config(cfg: GatewayConfig, index: int) -> GatewayConfig:
    """The config worker ``index`` runs with: its node number and admin port."""
    if not 0 <= index < cfg.workers:
        raise ValueError(f"worker {index} out of range 0..{cfg.workers - 1}")
    node = cfg.node + index
    if node > MAX_NODE:
        raise ValueError(f"node {cfg.node} + {cfg.workers} workers exceeds {MAX_NODE}")
    admin = cfg.admin
    if admin.port > 0:
        admin = dataclasses.replace(admin, port=admin.port + index)
    qr_api = cfg.qr_api
    if index > 0:
        # QR payments and idempotency keys live in the serving process: one worker serves
        # the QR API so a retried payment always meets its first attempt.
        qr_api = dataclasses.replace(qr_api, port=-1)
    return dataclasses.replace(cfg, node=node, admin=admin, qr_api=qr_api)


async def supervise(conf: Path, workers: int, backend: str | None) -> None:
    """Run ``workers`` children until a signal; restart any that exits on its own."""
    argv = [str(Path(sys.executable).parent / "gateway"), "run", "--conf", str(conf)]
    if backend:
        argv += ["--backend", backend]
    procs: dict[int, Process] = {}
    stopping = False
    # The workers' private socket directory for card affinity (mkdtemp: mode 0700).
    sockets = tempfile.mkdtemp(prefix="payswitch-workers-")
    env = {**os.environ, ENV_DIR: sockets}

    async def keep(index: int) -> None:
        delay = 0.5
        while not stopping:
            proc = await anyio.open_process(
                [*argv, "--worker", str(index)], stdout=None, stderr=None, env=env
            )
            procs[index] = proc
            code = await proc.wait()
            if stopping:
                return
            log.warning("worker_exited", worker=index, code=code, restart_in=delay)
            await anyio.sleep(delay)
            delay = min(delay * 2, 10.0)

    try:
        async with anyio.create_task_group() as tg:
            for index in range(workers):
                tg.start_soon(keep, index)
            sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
            with anyio.open_signal_receiver(*sigs) as signals:
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        for proc in procs.values():
                            if proc.returncode is None:
                                proc.send_signal(signal.SIGHUP)
                        continue
                    stopping = True
                    break
            tg.cancel_scope.cancel()
    finally:
        stopping = True
        with anyio.CancelScope(shield=True):
            for proc in procs.values():
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs.values():
                with anyio.move_on_after(15):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        shutil.rmtree(sockets, ignore_errors=True)
