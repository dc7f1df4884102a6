"""``issuer-sim run --conf conf/demo/issuer-sim.toml --issuer alpha``

With ``postings_file`` in the config, ``kill -USR1 <pid>`` makes the running simulator write
its posting file (``issuer_sim/postings.py``) for ``gateway journal reconcile``; ``kill -USR2
<pid>`` makes it announce a cutover (0800/201, field 15 today's UTC date) to the connected
gateway; ``kill -HUP <pid>`` makes it send a new ZPK (and ZAK) under the link's ZMK
(``issuer_sim.keys``)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from issuer_sim.accounts import AccountBook
from issuer_sim.config import IssuerSimConfig
from issuer_sim.emv import EmvAuthenticator
from issuer_sim.host import IssuerHost
from issuer_sim.pin import IssuerSecurity
from issuer_sim.server import IssuerServer, LiveFaults, fallback_logger
from kit import pki
from kit.conf import ConfigError, load
from kit.dataset import load_dataset
from kit.linkdialect import link_codec
from kit.logs import configure
from kit.runtime import default_backend, run, tune_gc
from protocols.framing import get_framing


def build_server(cfg: IssuerSimConfig, base: Path, issuer: str, port: int | None) -> IssuerServer:
    ep = cfg.endpoint(issuer)
    data = load_dataset(base / cfg.data)
    # PIN, CVV2 and link MAC keys under the dataset's LMK; PINs become PVVs here.
    security = IssuerSecurity.from_dataset(data, issuer)
    book = AccountBook.from_cards(issuer, data.cards, data.issuer_behaviour.synthetic, security)
    pki_dir = (base / cfg.pki_dir).resolve()
    pki.ensure_pki(pki_dir, [f"issuer-{issuer}"])
    ctx = pki.server_context(pki_dir, f"issuer-{issuer}", require_client_cert=True)
    f = ep.faults or cfg.faults
    faults = LiveFaults(
        f.latency_ms, f.drop_ratio, f.disconnect_after, f.apply_to_network, f.bad_mac_ratio
    )
    codec = link_codec(
        ep.dialect,
        header=ep.header,
        translation=ep.translation,
        clock=lambda: dt.datetime.now(dt.UTC),
        on_fallback=fallback_logger(issuer),
    )
    if security is not None:
        security.codec = codec  # link MACs over the dialect's bytes
    book.max_synthetic = cfg.max_synthetic_accounts
    host = IssuerHost(
        book, max_records=cfg.max_records, emv=EmvAuthenticator.for_issuer(data, issuer)
    )
    postings = (base / cfg.postings_file.format(issuer=issuer)) if cfg.postings_file else None
    return IssuerServer(
        host,
        ctx,
        faults=faults,
        bind=ep.host,
        port=ep.port if port is None else port,
        postings_file=postings,
        allowed_clients=ep.allowed_clients,
        codec=codec,
        framing=get_framing(ep.framing),
        alternate=link_codec(ep.also_accept, clock=lambda: dt.datetime.now(dt.UTC))
        if ep.also_accept
        else None,
        cutover_signal=True,
        key_change_signal=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="issuer-sim", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="serve one issuer on the issuer link (mutual TLS)")
    run_p.add_argument("--conf", type=Path, default=Path("conf/demo/issuer-sim.toml"))
    run_p.add_argument("--issuer", required=True)
    run_p.add_argument("--port", type=int, default=None)
    run_p.add_argument("--backend", choices=["asyncio", "uvloop", "trio"], default=None)
    args = parser.parse_args(argv)
    try:
        cfg = load(IssuerSimConfig, args.conf)
        configure(cfg.log_level)
        server = build_server(cfg, args.conf.parent, args.issuer, args.port)
    except (ConfigError, KeyError, ValueError) as exc:  # ValueError: a bad postings_file
        print(f"issuer-sim: {exc}", file=sys.stderr)
        return 2
    tune_gc((50_000, 50, 1_000))  # see kit.runtime.tune_gc
    run(server.run, args.backend or default_backend())
    return 0
