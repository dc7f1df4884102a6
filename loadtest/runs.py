"""One generator run as ``loadtest`` and ``loadtest bench`` both make it (apart from the CLI,
which imports the bench lazily: no import cycle)."""

from __future__ import annotations

import sys
from typing import Any

from loadtest.generator import LoadConfig, LoadGenerator
from loadtest.mix import TxnFactory, load_data
from loadtest.qr_client import QrClient


async def run_generator(cfg: LoadConfig, *, progress: bool = True) -> dict[str, Any]:
    """One generator run with its QR client; the summary dict (as --json writes it)."""
    import random

    factory = TxnFactory(
        load_data(cfg.data),
        terminal=cfg.terminal,
        prefixes=cfg.prefixes,
        amount=(cfg.amount, max(cfg.amount, cfg.amount_max)),
        rnd=random.Random(cfg.seed),
    )
    connections = max(4, min(256, cfg.in_flight if not cfg.rate else cfg.connections * 8))
    emit = (lambda line: print(line, file=sys.stderr, flush=True)) if progress else None
    if not cfg.qr_url:
        return (await LoadGenerator(cfg, factory).run(emit)).summary()
    async with QrClient(
        cfg.qr_url, factory.qr_api_key, connections=connections, timeout=cfg.timeout
    ) as qr:
        stats = await LoadGenerator(cfg, factory, qr=qr).run(emit)
    return stats.summary()


def backend_args(name: str) -> tuple[str, dict[str, Any]]:
    if name == "uvloop":
        return "asyncio", {"use_uvloop": True}
    return name, {}
