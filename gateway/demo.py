"""``gateway demo``: the whole stack in the foreground, one child process per service.

Ctrl-C or SIGTERM stops every child (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import anyio
from anyio.abc import Process

from gateway.config import GatewayConfig, load_gateway_config
from issuer_sim.config import IssuerSimConfig
from kit import pki
from kit.conf import load


def _banner(cfg: GatewayConfig, issuers: list[str]) -> str:
    t = cfg.terminal
    more = "".join(
        f"\n              {x.name} 127.0.0.1:{x.port} ({x.framing}, {x.dialect})"
        for x in t.listeners
    )
    dialects = {link.issuer: link.dialect for link in cfg.links}
    hosts = ", ".join(f"{i} ({dialects[i]})" if i in dialects else i for i in issuers)
    return f"""
payswitch demo is starting
  terminals   tcp 127.0.0.1:{t.port}   tls 127.0.0.1:{t.tls_port}{more}
  QR API      http://127.0.0.1:{cfg.qr_api.port}/v1/qr/payments
  dashboard   http://127.0.0.1:{cfg.admin.port}/dashboard  (viewer token: demo-viewer-TEST-ONLY)
  admin       http://127.0.0.1:{cfg.admin.port}/readyz  /metrics  /status  /alerts  (bearer token)
  issuers     {hosts} (issuer-sim), HSM 127.0.0.1:1500 (hsm-sim)
  logs        JSON lines below, PANs masked
try it:
  .venv/bin/pos-sim purchase --terminal T0000001 --pan 4761730000000011 --amount 1250
  .venv/bin/pos-sim purchase --terminal T0000002 --pan 4761730000000011 --amount 1250 --pin 1234
  .venv/bin/pos-sim contactless --terminal N0000001 --pan 5413330000000019 --amount 1250
  .venv/bin/pos-sim purchase --cup --terminal T0000001 --pan 4761730000000011 --amount 1250
  .venv/bin/qr-sim --help
Ctrl-C stops everything.
"""


async def run_demo(conf_dir: Path) -> int:
    gw_cfg, base = load_gateway_config(conf_dir / "gateway.toml")
    sim_path = conf_dir / "issuer-sim.toml"
    sim_cfg = load(IssuerSimConfig, sim_path)
    pki_dir = (base / gw_cfg.pki_dir).resolve()
    names = [gw_cfg.terminal.tls_cert, *(lk.client_cert for lk in gw_cfg.links)]
    names += [f"issuer-{ep.id}" for ep in sim_cfg.issuers]
    pki.ensure_pki(pki_dir, sorted(set(names)))
    bindir = Path(sys.executable).parent
    commands: list[list[str]] = [
        [str(bindir / "issuer-sim"), "run", "--conf", str(sim_path), "--issuer", ep.id]
        for ep in sim_cfg.issuers
    ]
    hsm_conf = conf_dir / "hsm.toml"
    if hsm_conf.exists() and (bindir / "hsm-sim").exists():
        commands.insert(0, [str(bindir / "hsm-sim"), "run", "--conf", str(hsm_conf)])
    commands.append([str(bindir / "gateway"), "run", "--conf", str(conf_dir / "gateway.toml")])
    print(
        _banner(gw_cfg, [ep.id for ep in sim_cfg.issuers]),
        flush=True,
    )
    procs: list[Process] = []
    exit_code = 0
    try:
        async with anyio.create_task_group() as tg:
            for cmd in commands:
                proc = await anyio.open_process(cmd, stdout=None, stderr=None)
                procs.append(proc)
                tg.start_soon(_watch, proc, cmd, tg.cancel_scope)
                await anyio.sleep(0.3)  # issuers first, so the gateway signs on at once
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    break
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            exit_code = await _stop_all(procs)
    print("payswitch demo stopped", flush=True)
    return exit_code


async def _watch(proc: Process, cmd: list[str], scope: anyio.CancelScope) -> None:
    code = await proc.wait()
    print(f"demo: {Path(cmd[0]).name} exited with {code}; stopping the demo", flush=True)
    scope.cancel()


async def _stop_all(procs: list[Process]) -> int:
    for proc in procs:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    worst = 0
    for proc in procs:
        with anyio.move_on_after(5):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        code = proc.returncode or 0
        if code not in (0, -signal.SIGTERM):
            worst = code
    return 0 if worst in (0, -signal.SIGTERM) else 1
