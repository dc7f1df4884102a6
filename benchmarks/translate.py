"""What a translated issuer link costs against untranslated ones: ``python -m
benchmarks.translate [--runs 7] [--number 2000]``.

One link round as the switch does it per transaction: encode the canonical issuer request
(the purchase QueryIssuer builds) and decode the issuer's answer (a 0210 with 38, 39, 54).
Links: ``iso87-ascii`` (SPEC's form, no translation), ``iso87-bcd`` (another encoding of the
same version, no translation) and ``iso93-bcd`` (translated both ways by
:class:`protocols.translate.LinkCodec`); plus the translation alone (``to_link`` of the
request and ``from_link`` of the answer). Medians over the runs of ``time.process_time``, in
microseconds; the ops take turns within each run, so they see the same machine load.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
from collections.abc import Callable

from protocols.codec import Codec
from protocols.dialects import get_dialect
from protocols.fastcodec import best_codec
from protocols.message import Message
from protocols.translate import LinkCodec, Translator

NOW = dt.datetime(2026, 12, 7, 10, 15, tzinfo=dt.UTC)


def issuer_request() -> Message:
    """A PIN chip purchase as QueryIssuer sends it (ISSUER_FIELDS plus 7, 11, 18, 32, 37, 52)."""
    return Message(
        "0200",
        {
            "2": "6250940000000019",
            "3": "000000",
            "4": "000000001250",
            "7": "1207101500",
            "11": "000123",
            "12": "101500",
            "13": "1207",
            "14": "3012",
            "18": "5411",
            "22": "051",
            "23": "001",
            "32": "12345678",
            "37": "0HOUKKE8YJ60",
            "41": "T0000001",
            "42": "M00000000000001",
            "49": "156",
            "52": "0123456789ABCDEF",
            "55": "9F2608AABBCCDDEEFF00119F2701809F3704A1B2C3D49F36020001",
        },
    )


def issuer_answer() -> Message:
    """The host's approval of :func:`issuer_request` (what issuer_sim echoes and adds)."""
    req = issuer_request().fields
    echo = {k: req[k] for k in ("2", "3", "4", "7", "11", "12", "13", "32", "37", "41", "42")}
    return Message(
        "0210",
        {**echo, "49": "156", "38": "100001", "39": "00", "54": "0002156C000004998750"},
    )


def link_codecs() -> dict[str, Codec]:
    return {
        "iso87-ascii": best_codec(get_dialect("iso87-ascii")),
        "iso87-bcd": best_codec(get_dialect("iso87-bcd")),
        "iso93-bcd": LinkCodec(
            best_codec(get_dialect("iso93-bcd")), Translator(), clock=lambda: NOW
        ),
    }


def measure(clock: Callable[[], float], runs: int, number: int) -> dict[str, float]:
    """Median microseconds per link round (encode request + decode answer), per link, and of
    the translation alone."""
    request, answer = issuer_request(), issuer_answer()
    ops: dict[str, Callable[[], object]] = {}
    for name, codec in link_codecs().items():
        # The answer as the host sends it: its bytes in the link's dialect.
        raw_answer = codec.encode(answer)
        back = codec.decode(raw_answer)
        if (back.mti, back.fields) != (answer.mti, answer.fields):
            raise SystemExit(f"{name}: the answer does not come back as sent: not benchmarking")

        def round_trip(c: Codec = codec, raw: bytes = raw_answer) -> object:
            c.encode(request)
            return c.decode(raw)

        ops[name] = round_trip
    translator = Translator()
    link_answer = translator.to_link(answer, NOW)
    ops["translation alone"] = lambda: (
        translator.to_link(request, NOW),
        translator.from_link(link_answer),
    )

    def per_round(op: Callable[[], object]) -> float:
        start = clock()
        for _ in range(number):
            op()
        return (clock() - start) / number * 1e6

    samples: dict[str, list[float]] = {name: [] for name in ops}
    for op in ops.values():  # warm-up: FastCodec's plan memo
        for _ in range(200):
            op()
    for _ in range(runs):
        for name, op in ops.items():
            samples[name].append(per_round(op))
    return {name: statistics.median(v) for name, v in samples.items()}


def main(argv: list[str] | None = None) -> None:
    import time  # the bench's clock; never imported by the sans-IO modules

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs (median reported)")
    parser.add_argument("--number", type=int, default=2000, help="link rounds per timed run")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    result = measure(time.process_time, args.runs, args.number)
    base = result["iso87-ascii"]
    print(f"runs={args.runs} number={args.number} clock=process_time")
    print("us per link round (encode the issuer request + decode the answer), median:")
    for name, us in result.items():
        extra = "" if name == "translation alone" else f"   {us - base:+6.2f} vs iso87-ascii"
        print(f"  {name:18} {us:6.2f}{extra}")
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
