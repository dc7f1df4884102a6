"""``pos-sim``: send one transaction to a running gateway and print the answer.

    pos-sim purchase --terminal T0000001 --pan 4761730000000011 --amount 1250
    pos-sim reverse  --terminal T0000001 --pan 4761730000000011 --amount 1250 \
                     --original-stan 000123 --original-time 1127101500
    pos-sim contactless --terminal N0000001 --pan 5413330000000019 --amount 1250

``contactless`` plays the card too: it builds field 55 with an ARQC under the card's keys (derived
from the demo IMK-AC of the card's issuer, or of the funding card's issuer for a token), sends
22 = 071 and 23, and verifies the ARPC in the answer's tag 91. The card's ATC is kept in
``var/pos-sim-atc.json`` (by masked PAN) so that each run uses a higher one, as a card does.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hmac
import json
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

from gateway.dataset import Dataset, load_dataset
from hsm_sim import emv as hsm_emv
from loadtest.terminal_client import TerminalClient, build_request
from protocols import emv
from protocols.message import Message
from protocols.redact import mask_pan, redact_fields

PROCESSING = {
    "purchase": "000000",
    "cash": "010000",
    "refund": "200000",
    "balance": "310000",
    "preauth": "000000",
    "completion": "000000",
    "reverse": "000000",
    "contactless": "000000",
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
    "contactless": "0200",
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


# Contactless: the card's side of EMV ----------------------------------------------------------

IAD = bytes.fromhex("0110A00001220000000000000000000000FF")  # issuer application data (9F10)
AIP = bytes.fromhex("1980")  # application interchange profile (82): CDA, cardholder verif.


@dataclass(slots=True)
class SimulatedCard:
    """An EMV card or wallet: its ICC keys derive from the issuer's IMK-AC (test keys only)."""

    pan: str = field(repr=False)
    psn: str
    """PAN sequence number, 2 digits."""
    imk_ac: bytes = field(repr=False)
    atc: int = 1

    def icc_data(
        self,
        amount: int,
        *,
        currency: str = "156",
        country: str = "156",
        date: dt.date | None = None,
        transaction_type: str = "00",
        unpredictable: bytes | None = None,
    ) -> emv.Tlv:
        """Field 55 of one transaction: SPEC's tags with a fresh ARQC; the ATC moves on."""
        atc = self.atc.to_bytes(2, "big")
        self.atc += 1
        today = date or dt.datetime.now(dt.UTC).date()
        terminal_data = emv.Tlv(
            [
                ("9F02", emv.bcd_encode(amount, 6)),
                ("9F03", emv.bcd_encode(0, 6)),
                ("9F1A", emv.bcd_encode(int(country), 2)),
                ("95", bytes(5)),
                ("5F2A", emv.bcd_encode(int(currency), 2)),
                ("9A", bytes.fromhex(today.strftime("%y%m%d"))),
                ("9C", bytes.fromhex(transaction_type)),
                ("9F37", unpredictable or secrets.token_bytes(4)),
                ("82", AIP),
                ("9F36", atc),
                ("9F10", IAD),
            ]
        )
        arqc = hsm_emv.compute_arqc(
            self.imk_ac, self.pan, self.psn, atc, emv.arqc_input(terminal_data)
        )
        return emv.Tlv([("9F26", arqc), ("9F27", b"\x80"), *terminal_data.pairs()])

    def check_issuer_auth(self, icc: emv.Tlv, response_55: str | None) -> tuple[bool, str]:
        """Verify tag 91 (ARPC || ARC) of the answer to ``icc``, as the card would."""
        if not response_55:
            return False, "no field 55 in the answer"
        try:
            tag91 = emv.decode(bytes.fromhex(response_55)).get("91")
        except (ValueError, emv.TlvError):
            return False, "field 55 of the answer is not BER-TLV"
        if tag91 is None or len(tag91) != 10:
            return False, "no tag 91 (ARPC + ARC) in the answer"
        arqc, atc = icc.get("9F26"), icc.get("9F36")
        if arqc is None or atc is None:
            return False, "the request carried no ARQC"
        arpc, arc = tag91[:8], tag91[8:]
        icc_mk = hsm_emv.derive_icc_master_key(self.imk_ac, self.pan, self.psn)
        session_key = hsm_emv.derive_session_key(icc_mk, atc)
        expected = hsm_emv.generate_arpc_method_1(session_key, arqc, arc)
        if not hmac.compare_digest(expected, arpc):
            return False, f"ARPC does not verify (ARC {arc.hex().upper()})"
        return True, f"ARPC verified, ARC {arc.hex().upper()}"


def card_for(data: Dataset, pan: str, *, atc: int = 1) -> SimulatedCard:
    """The card (or wallet, for a token: personalised with its funding card's keys)."""
    funding = next((t.pan for t in data.tokens if t.token == pan), pan)
    card = next((c for c in data.cards if c.pan == funding), None)
    if card is None:
        raise KeyError("card not in the dataset")
    issuer = data.issuer(card.issuer)
    if issuer.imk_ac is None:
        raise KeyError(f"issuer {issuer.id} has no IMK-AC in the dataset")
    return SimulatedCard(funding, card.pan_seq, bytes.fromhex(issuer.imk_ac.key), atc)


def _next_atc(state: Path, card: SimulatedCard) -> int:
    """The card's counter across runs (keyed by masked PAN; never the PAN itself)."""
    key = f"{mask_pan(card.pan)}/{card.psn}"
    try:
        counters = json.loads(state.read_text())
    except (OSError, ValueError):
        counters = {}
    atc = int(counters.get(key, 0)) + 1
    counters[key] = atc
    try:
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps(counters, indent=1))
    except OSError:
        pass
    return atc


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
    parser.add_argument("--atc", type=int, default=None, help="contactless: the card's ATC")
    parser.add_argument("--atc-state", type=Path, default=Path("var/pos-sim-atc.json"))
    args = parser.parse_args(argv)
    request = build(args)
    card: SimulatedCard | None = None
    icc = emv.Tlv()
    if args.command == "contactless":
        try:
            data = load_dataset(args.data)
            card = card_for(data, args.pan)
        except Exception as exc:
            print(f"pos-sim: no card keys for this PAN in {args.data}: {exc}", file=sys.stderr)
            return 2
        card.atc = args.atc if args.atc is not None else _next_atc(args.atc_state, card)
        country = next(
            (m.country for t in data.terminals for m in data.merchants
             if t.id == args.terminal and m.id == t.merchant),
            "156",
        )  # fmt: skip
        icc = card.icc_data(args.amount, currency=args.currency, country=country)
        request.fields.update({"22": "071", "23": f"0{card.psn}", "55": icc.encode().hex().upper()})
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
    if card is not None:
        verified, note = card.check_issuer_auth(icc, response.fields.get("55"))
        print(f"  card: {note}")
        if not verified:
            return 1
    return 0 if response.fields.get("39") == "00" else 1
