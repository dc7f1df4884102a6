"""Codec (pyiso8583) against FastCodec, per dialect, on a chip purchase (SPEC's 22-field 0200,
or the same purchase as each dialect carries it): ``python -m benchmarks.codec [--runs 7]
[--number 2000] [--dialect NAME]``.

Each run times decode and encode of both codecs in turn (so that both see the same machine
load) with ``time.process_time``; the figures are medians over the runs, in microseconds per
message, and the ratios come from the same run. The clock is imported in :func:`main` only:
``protocols`` stays free of clocks and I/O when imported.
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable

from protocols.codec import Codec
from protocols.dialects import DIALECTS, get_dialect
from protocols.fastcodec import FastCodec
from protocols.message import Message


def sample_0200() -> Message:
    """A chip purchase as SPEC describes it (2, 3, 4, 7, 11-14, 22, 23, 41, 42, 49, 52, 53, 55,
    64) plus 18, 25, 32, 43 and 90 (secondary bitmap): 22 fields, 4 of them binary."""
    return Message(
        "0200",
        {
            "2": "4761730000000011",
            "3": "000000",
            "4": "000000001250",
            "7": "1127101500",
            "11": "000123",
            "12": "101500",
            "13": "1127",
            "14": "2912",
            "18": "5411",
            "22": "051",
            "23": "001",
            "25": "00",
            "32": "123456",
            "41": "T0000002",
            "42": "M00000000000001",
            "43": "PAYSWITCH DEMO MERCHANT   SHANGHAI    CN",
            "49": "156",
            "52": "0123456789ABCDEF",
            "53": "FFFF9876543210E00001",
            # 9F26 ARQC, 9F27, 9F10, 9F37, 9F36, 95, 9A, 9C, 9F02, 9F03, 5F2A, 82, 9F1A
            "55": (
                "9F2608AABBCCDDEEFF0011"
                "9F270180"
                "9F100706010A03A00000"
                "9F3704A1B2C3D4"
                "9F36020001"
                "95050000000000"
                "9A03241127"
                "9C0100"
                "9F0206000000001250"
                "9F0306000000000000"
                "5F2A020156"
                "82023900"
                "9F1A020156"
            ),
            "64": "0011223344556677",
            "90": "0200000123112710150000000000001" + "0" * 11,
        },
    )


def sample(dialect: str = "iso87-ascii") -> Message:
    """:func:`sample_0200` as ``dialect`` carries it; iso87-bcd without SPEC's 20-character KSN
    (53 is n16 there); the 1993 dialects as a 1200, with 12 as YYMMDDhhmmss, 22 as the
    12-character POS data code, 24 the function code and 56 for 90, without 13 and 25 (other
    meanings in 1993)."""
    fields = sample_0200().fields
    if dialect.startswith("iso87-ascii"):
        return Message("0200", fields)
    del fields["53"]
    if not dialect.startswith("iso93"):
        return Message("0200", fields)
    del fields["13"], fields["25"], fields["90"]
    fields.update(
        {"12": "241127101500", "22": "51010151334C", "24": "200", "56": "0200000123241127101500"}
    )
    return Message("1200", fields)


def measure(
    clock: Callable[[], float], runs: int, number: int, dialect: str = "iso87-ascii"
) -> dict[str, dict[str, float]]:
    """Median microseconds per message, per codec and operation, and the ratios."""
    spec = get_dialect(dialect)
    ref, fast = Codec(spec), FastCodec(spec)
    msg = sample(dialect)
    raw = ref.encode(msg)
    if fast.encode(msg) != raw or fast.decode(raw) != msg or ref.decode(raw) != msg:
        raise SystemExit("FastCodec and Codec disagree on the sample: not benchmarking")

    def per_message(op: Callable[[], object]) -> float:
        start = clock()
        for _ in range(number):
            op()
        return (clock() - start) / number * 1e6

    ops: dict[str, Callable[[], object]] = {
        "Codec decode": lambda: ref.decode(raw),
        "FastCodec decode": lambda: fast.decode(raw),
        "Codec encode": lambda: ref.encode(msg),
        "FastCodec encode": lambda: fast.encode(msg),
    }
    samples: dict[str, list[float]] = {name: [] for name in ops}
    for op in ops.values():  # warm-up: FastCodec's plan memo, pyiso8583's first calls
        for _ in range(100):
            op()
    for _ in range(runs):
        for name, op in ops.items():
            samples[name].append(per_message(op))
    ratios: dict[str, list[float]] = {"decode": [], "encode": []}
    for i in range(runs):
        for what in ratios:
            ratios[what].append(samples[f"Codec {what}"][i] / samples[f"FastCodec {what}"][i])
    return {
        "us_per_message": {name: statistics.median(v) for name, v in samples.items()},
        "best_us_per_message": {name: min(v) for name, v in samples.items()},
        "ratio": {what: statistics.median(v) for what, v in ratios.items()},
    }


def main(argv: list[str] | None = None) -> None:
    import time  # the bench's clock; never imported by the sans-IO modules

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs (median reported)")
    parser.add_argument("--number", type=int, default=2000, help="messages per timed run")
    names = [name for name in DIALECTS if name != "terminal"]  # the alias of iso87-ascii
    parser.add_argument("--dialect", choices=names, help="one dialect (default: every one)")
    args = parser.parse_args(argv)

    print(f"runs={args.runs} number={args.number} clock=process_time; us/message: median (best)")
    load_before = os.getloadavg()
    for dialect in [args.dialect] if args.dialect else names:
        result = measure(time.process_time, args.runs, args.number, dialect)
        us, best = result["us_per_message"], result["best_us_per_message"]
        msg = sample(dialect)
        size = len(FastCodec(get_dialect(dialect)).encode(msg))
        print(f"{dialect}: {msg.mti} of {len(msg.fields)} fields, {size} bytes")
        for what in ("decode", "encode"):
            ref, fast = f"Codec {what}", f"FastCodec {what}"
            print(
                f"  {what}: Codec {us[ref]:6.2f} ({best[ref]:6.2f})   "
                f"FastCodec {us[fast]:5.2f} ({best[fast]:5.2f})   "
                f"ratio {result['ratio'][what]:4.1f}x (median of per-run ratios)"
            )
        ref_fwd = 2 * (us["Codec decode"] + us["Codec encode"])
        fast_fwd = 2 * (us["FastCodec decode"] + us["FastCodec encode"])
        print(
            f"  forwarding (2 decodes + 2 encodes): Codec {ref_fwd:.1f} us,"
            f" FastCodec {fast_fwd:.1f} us"
        )
    load_after = os.getloadavg()
    print(
        "load average before/after: "
        + " ".join(f"{x:.2f}" for x in load_before)
        + " / "
        + " ".join(f"{x:.2f}" for x in load_after)
        + f" on {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
