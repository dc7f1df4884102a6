"""``pos-sim``: send one transaction to a running gateway and print the answer.

    pos-sim purchase --terminal T0000001 --pan 4761730000000011 --amount 1250
    pos-sim reverse  --terminal T0000001 --pan 4761730000000011 --amount 1250 \
                     --original-stan 000123 --original-time 1127101500
    pos-sim contactless --terminal N0000001 --pan 5413330000000019 --amount 1250
    pos-sim purchase --cup --terminal T0000001 --pan 4761730000000011 --amount 1250

``--cup`` plays a UnionPay-style POS on the demo's 8585 listener: a 2-byte length and a 5-byte
TPDU (``--tpdu``, default ``6000030000``) before each message, ISO 8583:1987 in BCD; the answer's
TPDU (addresses swapped) is printed. ``--framing`` and ``--dialect`` choose them one by one.

``contactless`` plays the card too: it builds field 55 with an ARQC under the card's keys (derived
from the demo IMK-AC of the card's issuer, or of the funding card's issuer for a token), sends
22 = 071 and 23, and verifies the ARPC in the answer's tag 91. The card's ATC is kept in
``var/pos-sim-atc.json`` (by masked PAN) so that each run uses a higher one, as a card does.

PINs and MACs, as the terminal's PIN pad would do them with its keys from the dataset:

    pos-sim purchase --terminal T0000001 --pan 4761730000000011 --amount 1250 --pin 1234
    pos-sim purchase --terminal T0000002 --pan 4761730000000011 --amount 1250 --pin 1234
    pos-sim purchase --terminal T0000003 --pan 4761730000000011 --amount 1250 --pin 1234

``--pin`` adds field 52, ISO format 0 under the terminal's TPK, or under the DUKPT key of the
next KSN for a DUKPT terminal (sent in field 53). An AES DUKPT terminal (X9.24-3) sends field 123
instead: the 24-hex KSN and the ISO format 4 block under that KSN's AES PIN key. The KSN is
``--ksn`` when given, else the one after the last used, kept in ``var/pos-sim-ksn.json`` per
terminal (starting from the ANSI test KSN ``FFFF9876543210E00000``, or for AES DUKPT the
X9.24-3 supplement's initial key ID at counter 0, ``123456789012345600000000``). A terminal
with ``mac_required`` gets its field 64 MAC under the TAK (``--mac none`` leaves it out, ``--mac
bad`` sends a wrong one). ``--cvv2`` sends a manual entry (22 = 011) with the CVV2 in field 48
(subelement 92).
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

from hsm_sim import emv as hsm_emv
from hsm_sim import terminal as pinpad
from issuer_sim.pin import field48_cvv2
from kit.dataset import Dataset, Terminal, load_dataset
from loadtest.terminal_client import TERMINAL_TPDU, TerminalClient, build_request
from protocols import emv
from protocols.codec import Codec
from protocols.dialects import get_dialect
from protocols.errors import ProtocolError
from protocols.framing import FRAMINGS, get_framing
from protocols.keys import original_data
from protocols.mac import mac_field, mac_input
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


# PIN pad: PIN blocks, DUKPT KSNs and the MAC ----------------------------------------------------

INITIAL_KSN = "FFFF9876543210E00000"
"""The demo DUKPT terminals' initial KSN (ANSI X9.24-1 test KSN, counter 0)."""
INITIAL_AES_KSN = "123456789012345600000000"
"""The demo AES DUKPT terminal's initial KSN (X9.24-3 supplement's initial key ID, counter 0)."""
CODEC = Codec(get_dialect("terminal"))


def terminal_of(data: Dataset, terminal_id: str) -> Terminal:
    for terminal in data.terminals:
        if terminal.id == terminal_id:
            return terminal
    raise KeyError(f"terminal {terminal_id} is not in the dataset")


def add_pin_block(
    request: Message, terminal: Terminal, pin: str, pan: str, ksn: str | None = None
) -> None:
    """Field 52 (and 53 for DUKPT), or 123 for AES DUKPT, as the terminal's PIN pad builds them
    (test keys only)."""
    if terminal.key_mode == "aes_dukpt":
        if terminal.bdk is None or ksn is None:
            raise ValueError(f"terminal {terminal.id}: AES DUKPT needs a BDK and a KSN")
        block = pinpad.pin_block_under_aes_dukpt(terminal.bdk.key, ksn, pin, pan)
        request.fields["123"] = ksn.upper() + block.hex().upper()
        return
    if terminal.key_mode == "dukpt":
        if terminal.bdk is None or ksn is None:
            raise ValueError(f"terminal {terminal.id}: DUKPT needs a BDK and a KSN")
        block = pinpad.pin_block_under_dukpt(terminal.bdk.key, ksn, pin, pan)
        request.fields["53"] = ksn.upper()
    else:
        if terminal.tpk is None:
            raise ValueError(f"terminal {terminal.id} has no TPK")
        block = pinpad.pin_block_under_tpk(terminal.tpk.key, pin, pan)
    request.fields["52"] = block.hex().upper()


def add_mac(request: Message, tak: str, *, wrong: bool = False, codec: Codec | None = None) -> None:
    """The MAC field (64; 128 with a secondary bitmap) over the request as ``codec`` (the
    terminal's dialect; SPEC's by default) encodes it, TAK in clear."""
    mac = bytearray(pinpad.retail_mac(tak, mac_input(codec or CODEC, request)))
    if wrong:
        mac[-1] ^= 0x01
    request.fields[mac_field(request.fields)] = mac.hex().upper()


def next_ksn_for(state: Path, terminal_id: str, *, aes: bool = False) -> str:
    """The KSN after the last one this terminal used (kept in ``state`` across runs); ``aes``:
    an AES DUKPT terminal's (24 hex)."""
    try:
        used = json.loads(state.read_text())
    except (OSError, ValueError):
        used = {}
    if aes:
        ksn = pinpad.next_aes_ksn(used.get(terminal_id, INITIAL_AES_KSN))
    else:
        ksn = pinpad.next_ksn(used.get(terminal_id, INITIAL_KSN))
    used[terminal_id] = ksn
    try:
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps(used, indent=1))
    except OSError:
        pass
    return ksn


def secure(args: argparse.Namespace, request: Message) -> str | None:
    """Add the PIN block, CVV2 and MAC the options ask for; an error message, or None."""
    if args.cvv2 is not None:
        request.fields["48"] = field48_cvv2(args.cvv2)
        if args.entry_mode is None:
            request.fields["22"] = "011"
    if args.pin is None and args.mac == "none":
        return None
    try:
        terminal = terminal_of(load_dataset(args.data), args.terminal)
    except Exception as exc:
        if args.pin is None:
            return None  # no keys known: send as is (the gateway says whether a MAC was due)
        return f"no keys for terminal {args.terminal} in {args.data}: {exc}"
    if args.pin is not None and args.pan:
        ksn = None
        if terminal.key_mode in ("dukpt", "aes_dukpt"):
            aes = terminal.key_mode == "aes_dukpt"
            ksn = args.ksn or next_ksn_for(args.ksn_state, terminal.id, aes=aes)
        try:
            add_pin_block(request, terminal, args.pin, args.pan, ksn)
        except Exception as exc:  # a bad PIN or KSN: say so, never echo it
            return f"cannot build the PIN block: {type(exc).__name__}"
    if terminal.mac_required and args.mac != "none" and terminal.tak is not None:
        codec = Codec(get_dialect(args.dialect))
        add_mac(request, terminal.tak.key, wrong=args.mac == "bad", codec=codec)
    return None


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
        extra["90"] = original_data(orig_mti, args.original_stan, args.original_time)
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
        entry_mode=args.entry_mode or "021",
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
    parser.add_argument("--port", type=int, default=None, help="default 8583 (--cup: 8585)")
    parser.add_argument(
        "--cup",
        action="store_true",
        help="as a UnionPay-style POS to the demo's 8585 listener: binary2-tpdu, iso87-bcd",
    )
    parser.add_argument(
        "--framing", choices=sorted(FRAMINGS), default=None, help="default binary2 (--cup: TPDU)"
    )
    parser.add_argument("--dialect", default=None, help="default iso87-ascii (--cup: iso87-bcd)")
    parser.add_argument(
        "--tpdu",
        default=TERMINAL_TPDU.hex(),
        help="TPDU framing: the TPDU sent, 10 hex (60, destination, source)",
    )
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
    parser.add_argument(
        "--entry-mode", default=None, help="field 22 (default 021; 011 with --cvv2)"
    )
    parser.add_argument("--stan", default=None)
    parser.add_argument("--transmission", default=None, help="field 7, MMDDhhmmss (UTC)")
    parser.add_argument("--original-stan", default=None)
    parser.add_argument("--original-time", default=None)
    parser.add_argument("--original-mti", default="0200")
    parser.add_argument("--data", type=Path, default=Path("conf/demo/data.toml"))
    parser.add_argument("--atc", type=int, default=None, help="contactless: the card's ATC")
    parser.add_argument("--atc-state", type=Path, default=Path("var/pos-sim-atc.json"))
    parser.add_argument(
        "--pin", default=None, help="PIN entered: adds field 52 (and 53), or 123 for AES DUKPT"
    )
    parser.add_argument(
        "--ksn", default=None, help="DUKPT KSN (20 hex, AES DUKPT 24) instead of the next one"
    )
    parser.add_argument("--ksn-state", type=Path, default=Path("var/pos-sim-ksn.json"))
    parser.add_argument("--cvv2", default=None, help="manual entry with this CVV2 (field 48)")
    parser.add_argument(
        "--mac",
        choices=["auto", "none", "bad"],
        default="auto",
        help="field 64 of mac_required terminals: computed (auto), left out, or wrong",
    )
    args = parser.parse_args(argv)
    args.port = args.port or (8585 if args.cup else 8583)
    args.framing = args.framing or ("binary2-tpdu" if args.cup else "binary2")
    args.dialect = args.dialect or ("iso87-bcd" if args.cup else "iso87-ascii")
    try:
        get_dialect(args.dialect)
        tpdu = bytes.fromhex(args.tpdu)
        if len(tpdu) != 5 or tpdu[0] != 0x60:
            raise ValueError("a TPDU is 10 hex digits beginning with 60")
    except (KeyError, ValueError) as exc:
        print(f"pos-sim: {exc}", file=sys.stderr)
        return 2
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
        problem = secure(args, request)  # last: the MAC covers everything above
    except ProtocolError as exc:  # the MAC's input: a field this dialect cannot carry
        problem = f"{args.dialect}: {exc}"
    if problem is not None:
        print(f"pos-sim: {problem}", file=sys.stderr)
        return 2
    try:
        with TerminalClient(
            args.host,
            args.port,
            tls_ca=args.tls_ca,
            framing=get_framing(args.framing),
            dialect=args.dialect,
            tpdu=tpdu,
        ) as client:
            response = client.exchange(request)
            answer_tpdu = client.answer_tpdu
    except OSError as exc:
        print(
            f"pos-sim: cannot reach the gateway at {args.host}:{args.port}: {exc}", file=sys.stderr
        )
        return 2
    except ProtocolError as exc:  # a field this dialect cannot carry, or a broken answer
        print(f"pos-sim: {args.dialect}: {exc}", file=sys.stderr)
        return 2
    print(f"request  {request.mti}  stan={request.fields.get('11')} time={request.fields.get('7')}")
    if "52" in request.fields:
        ksn = request.fields.get("53")
        print(f"  PIN block sent under {'DUKPT, KSN ' + ksn if ksn else 'the TPK'}")
    if "123" in request.fields:  # the KSN only, as for TDES DUKPT: never the PIN block
        print(f"  PIN block sent under AES DUKPT, KSN {request.fields['123'][:24]}")
    if "64" in request.fields or "128" in request.fields:
        print(f"  MAC sent ({'wrong on purpose' if args.mac == 'bad' else 'TAK'})")
    if answer_tpdu is not None:
        print(f"  TPDU sent {tpdu.hex().upper()}, answered {answer_tpdu.hex().upper()}")
    print(f"response {response.mti}")
    for key, value in sorted(redact_fields(response.fields).items(), key=lambda kv: int(kv[0])):
        print(f"  {key:>3} {NAMES.get(key, ''):<20} {value}")
    if card is not None:
        verified, note = card.check_issuer_auth(icc, response.fields.get("55"))
        print(f"  card: {note}")
        if not verified:
            return 1
    return 0 if response.fields.get("39") == "00" else 1
