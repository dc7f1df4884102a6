"""What deriving the payer's verification costs per transaction: ``python -m
benchmarks.verification [--number 20000] [--repeat 5]``.

Times, in µs per call (best of ``--repeat`` runs of ``--number`` calls, one core), what the
risk stage adds: the entry-mode test every assessed request pays, :func:`card_cvm` on a
contactless tap as the stage calls it (field 55 as CheckEmv decoded it: no CVM, CDCVM; a PIN
block), the same decoding field 55 itself (a caller without CheckEmv), and :func:`qr_tier` on
a QR payment. The requests are built once, beforehand.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable
from pathlib import Path

from gateway.risk.verification import card_cvm, qr_tier
from kit.dataset import load_dataset
from loadtest.pos_sim import card_for
from protocols import emv

DATA = Path(__file__).resolve().parents[1] / "conf" / "demo" / "data.toml"

CONTACTLESS = "07"


def cases() -> dict[str, Callable[[], object]]:
    card = card_for(load_dataset(DATA), "5413330000000019")
    icc = card.icc_data(1250)
    tap = {"2": card.pan, "22": "071", "55": icc.encode().hex().upper()}
    cdcvm = tap | {"55": icc.extended([("9F6C", b"\x00\x80")]).encode().hex().upper()}
    pin = tap | {"52": "0123456789ABCDEF"}
    magstripe = {"2": card.pan, "22": "021"}
    factors = frozenset({"password", "biometric"})

    def stage_check(fields: dict[str, str]) -> object:
        # what CheckRisk does for every assessed request, with CheckEmv's decoded field 55
        entry = fields.get("22")
        if entry is None or entry[:2] != CONTACTLESS:
            return None
        return card_cvm(fields, icc_of[id(fields)])

    icc_of = {id(f): emv.decode(bytes.fromhex(f["55"])) for f in (tap, cdcvm, pin)}
    return {
        "magstripe (entry-mode test only)": lambda: stage_check(magstripe),
        "contactless, no CVM": lambda: stage_check(tap),
        "contactless, CDCVM": lambda: stage_check(cdcvm),
        "contactless, PIN block": lambda: stage_check(pin),
        "contactless, no CVM, decoding 55 itself": lambda: card_cvm(tap),
        "QR tier (two factors)": lambda: qr_tier(True, factors),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    for name, fn in cases().items():
        best = min(timeit.repeat(fn, number=args.number, repeat=args.repeat))
        print(f"{name:40s} {best / args.number * 1e6:7.2f} µs")


if __name__ == "__main__":
    main()
