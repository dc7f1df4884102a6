"""``pos-sim``: send one transaction to a running gateway and print the answer.

    pos-sim purchase --terminal T0000001 --pan 4761730000000011 --amount 1250
    pos-sim reverse  --terminal T0000001 --pan 4761730000000011 --amount 1250 \
                     --original-stan 000123 --original-time 1127101500
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.dataset import load_dataset
from loadtest.terminal_client import TerminalClient, build_request
from protocols.message import Message
from protocols.redact import redact_fields

PROCESSING = {
    "purchase": "000000",
    "cash": "010000",
    "refund": "200000",
    "balance": "310000",
    "preauth": "000000",
    "completion": "000000",
    "reverse": "000000",
}
MTI = {
    "purchase": "0200",
    "cash": "0200",
    "refund": "0200",
    "balance": "0200",
    "preauth": "0100",
    "completion": "0220",
    "reverse": "0400",
    "echo": "0800",
}
NAMES = {
    "2": "pan",
    "3": "processing",
    "4": "amount",
    "7": "transmission",
    "11": "stan",
    "37": "rrn",
    "38": "auth_code",
    "39": "response_code",
    "41": "terminal",
    "54": "additional_amounts",
    "55": "icc_data",
    "70": "network_code",
}


def _merchant_of(conf_data: Path, terminal: str) -> str:
    try:
        for t in load_dataset(conf_data).terminals:
            if t.id == terminal:
                return t.merchant
    except Exception:
        pass
    return "M00000000000001"


def build(args: argparse.Namespace) -> Message:
    command = args.command
    mti = MTI[command]
    if command == "echo":
        return Message(
            "0800",
            {
                "7": build_request(
                    "0800", terminal=args.terminal, merchant="", pan=None, amount=0
                ).fields["7"],
                "11": args.stan or "000001",
                "41": args.terminal,
                "70": "301",
            },
        )
    extra: dict[str, str] = {}
    if command in ("reverse", "completion") and args.original_stan:
        orig_mti = "0100" if command == "completion" else args.original_mti
        extra["90"] = f"{orig_mti}{args.original_stan}{args.original_time}{'0' * 22}"
    amount = 0 if command == "balance" else args.amount
    return build_request(
        mti,
        terminal=args.terminal,
        merchant=args.merchant or _merchant_of(args.data, args.terminal),
        pan=args.pan,
        amount=amount,
        processing=PROCESSING[command],
        expiry=args.expiry,
        currency=args.currency,
        entry_mode=args.entry_mode,
        stan=args.stan,
        transmission=args.transmission,
        extra=extra,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pos-sim", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=sorted(MTI))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8583)
    parser.add_argument(
        "--tls-ca",
        type=Path,
        default=None,
        help="use TLS (port 8584 in the demo), trusting this CA file",
    )
    parser.add_argument("--terminal", default="T0000001")
    parser.add_argument("--merchant", default=None)
    parser.add_argument("--pan", default="4761730000000011")
    parser.add_argument("--expiry", default=None)
    parser.add_argument("--amount", type=int, default=1250)
    parser.add_argument("--currency", default="156")
    parser.add_argument("--entry-mode", default="021")
    parser.add_argument("--stan", default=None)
    parser.add_argument("--transmission", default=None, help="field 7, MMDDhhmmss (UTC)")
    parser.add_argument("--original-stan", default=None)
    parser.add_argument("--original-time", default=None)
    parser.add_argument("--original-mti", default="0200")
    parser.add_argument("--data", type=Path, default=Path("conf/demo/data.toml"))
    args = parser.parse_args(argv)
    request = build(args)
    try:
        with TerminalClient(args.host, args.port, tls_ca=args.tls_ca) as client:
            response = client.exchange(request)
    except OSError as exc:
        print(
            f"pos-sim: cannot reach the gateway at {args.host}:{args.port}: {exc}", file=sys.stderr
        )
        return 2
    print(f"request  {request.mti}  stan={request.fields.get('11')} time={request.fields.get('7')}")
    print(f"response {response.mti}")
    for key, value in sorted(redact_fields(response.fields).items(), key=lambda kv: int(kv[0])):
        print(f"  {key:>3} {NAMES.get(key, ''):<20} {value}")
    return 0 if response.fields.get("39") == "00" else 1
