"""What the load generators send: a weighted mix of transaction kinds built from the demo data.

Kinds (``--mix magstripe=60,pin_tpk=15,...``):

* ``magstripe``   0200 purchase, track 2 (35), entry mode 021, terminal T0000001;
* ``pin_tpk``     the same with a format-0 PIN block under T0000001's TPK (52);
* ``pin_dukpt``   the same on the DUKPT terminal T0000002: PIN block under the DUKPT PIN key of
                  an incrementing KSN (53) derived from the demo BDK, MAC in 64 (TAK);
* ``contactless`` 0200, entry mode 071, PAN + expiry + PAN sequence 23, field 55 with an ARQC
                  from the card's issuer IMK-AC, on the NFC terminal N0000001; a tap above
                  ``no_cvm_max`` (the demo's no-CVM cap) is a phone wallet's, with the
                  consumer-device CVM in 9F6C, so the switch does not ask for a PIN (65);
* ``qr``          a consumer-presented QR payment over the HTTP API (POST /v1/qr/payments),
                  with ``payer_verification`` when ``qr_verification`` names factors;
* ``reversal``    a 0400 for an approved terminal purchase of this run (oldest first); while
                  none is waiting, the draw falls back to the other kinds.

Cards are fresh Luhn-valid PANs in the synthetic ranges (``issuer_behaviour.synthetic``), one
per transaction, so per-card velocity and daily-count rules never trip. PIN blocks, DUKPT, MAC
and ARQC come from :mod:`hsm_sim.terminal`, the builders a PIN pad or card would use.
"""

from __future__ import annotations

import collections
import datetime as dt
import itertools
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kit.dataset import Dataset, SyntheticRange, Terminal, load_dataset
from loadtest.wire import LeanCodec
from protocols.dialects import get_dialect
from protocols.keys import original_data
from protocols.message import Message
from protocols.validate import card_of

KINDS = ("magstripe", "pin_tpk", "pin_dukpt", "contactless", "qr", "reversal")
ISO_KINDS = frozenset({"magstripe", "pin_tpk", "pin_dukpt", "contactless", "reversal"})
SCENARIOS: dict[str, str] = {
    "plain": "magstripe=1",
    "pin": "pin_tpk=1",
    "mixed": "magstripe=50,pin_tpk=15,pin_dukpt=10,contactless=15,qr=5,reversal=5",
}
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT / "conf" / "demo" / "data.toml"
# ANSI X9.24 test KSN of T0000002 (demo.toml comment); the counter part is ours to advance.
DEFAULT_KSN = "FFFF9876543210E00000"
DEMO_NO_CVM_MAX = 100_000
"""conf/demo/risk.toml [contactless] no_cvm_max_amount (CNY 1,000): the kit speaks only the
wire, so the number is repeated here (a test checks it against the file)."""
_CDCVM = b"\x00\x80"  # 9F6C byte 2 bit 8: consumer-device CVM performed
_AIDS = {"4": "A0000000031010", "5": "A0000000041010"}  # Visa, Mastercard credit/debit


class MixError(ValueError):
    """A ``--mix`` text that cannot be understood."""


def parse_mix(text: str) -> dict[str, float]:
    """``"magstripe=3,pin_tpk=1"`` (or a scenario name) -> kind -> weight (positive)."""
    text = SCENARIOS.get(text.strip(), text)
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        if name not in KINDS:
            raise MixError(f"unknown mix item {name!r}; known: {', '.join(KINDS)}")
        try:
            weight = float(value) if sep else 1.0
        except ValueError:
            raise MixError(f"weight of {name!r} is not a number: {value!r}") from None
        if weight < 0 or weight != weight:
            raise MixError(f"weight of {name!r} must be zero or positive")
        if weight:
            weights[name] = weights.get(name, 0.0) + weight
    if not set(weights) - {"reversal"}:
        raise MixError("the mix needs at least one purchase kind besides reversal")
    return weights


_DOUBLED = bytes.maketrans(b"0123456789", b"0246813579")
"""An ASCII digit -> the digit of its Luhn doubling (2d, less 9 above 9)."""


def luhn_check_digit(body: str) -> str:
    """The digit that makes ``body`` + digit pass the Luhn check."""
    if body.isascii() and body.isdigit():
        # The same sum with the byte loops in C (a fresh PAN per request).
        raw = body.encode()
        return str(-(sum(raw[-1::-2].translate(_DOUBLED)) + sum(raw[-2::-2]) - 48 * len(raw)) % 10)
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = ord(ch) - 48
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str(-total % 10)


def fresh_pan(prefix: str, rnd: random.Random, length: int = 16) -> str:
    """A random Luhn-valid PAN of ``length`` digits starting with ``prefix``."""
    free = length - 1 - len(prefix)
    body = prefix + f"{rnd.randrange(10**free):0{free}d}"
    return body + luhn_check_digit(body)


@dataclass(slots=True)
class Txn:
    """One request ready to go: what it is, its matching key and its bytes (or QR body)."""

    kind: str
    stan: str = ""
    payload: bytes = b""
    """Encoded ISO 8583 message (MAC included), without the length prefix."""
    original: Message | None = None
    """For reversible purchases: the request, kept to build its reversal if approved."""
    qr_body: dict[str, Any] | None = None


@dataclass
class Weighted:
    """Weighted draws over kinds, by cumulative weights (bisect-free for a handful of kinds)."""

    weights: Mapping[str, float]
    kinds: list[str] = field(init=False)
    cumulative: list[float] = field(init=False)

    def __post_init__(self) -> None:
        self.kinds = list(self.weights)
        self.cumulative = list(itertools.accumulate(self.weights.values()))

    def draw(self, rnd: random.Random) -> str:
        x = rnd.random() * self.cumulative[-1]
        for kind, edge in zip(self.kinds, self.cumulative, strict=True):
            if x < edge:
                return kind
        return self.kinds[-1]


class TxnFactory:
    """Builds each kind of request from the dataset; one instance per generator (not shared
    across threads: it holds the STAN and KSN counters)."""

    def __init__(
        self,
        dataset: Dataset,
        *,
        terminal: str = "T0000001",
        dukpt_terminal: str = "T0000002",
        nfc_terminal: str = "N0000001",
        prefixes: tuple[str, ...] = (),
        amount: tuple[int, int] = (100, 5000),
        currency: str = "156",
        ksn: str | None = None,
        rnd: random.Random | None = None,
        no_cvm_max: int | None = DEMO_NO_CVM_MAX,
        qr_verification: tuple[str, ...] = (),
        cards: int = 0,
    ) -> None:
        """``no_cvm_max``: taps above it carry a consumer-device CVM (None: never);
        ``qr_verification``: the factors QR payments state (empty: the member is left out);
        ``cards``: a population of that many card numbers per synthetic range, drawn at random
        (0: a fresh card per request). A real switch sees its cards again; per-card state (the
        risk engine's day totals, its card map) then levels off as it does in production."""
        self.dataset = dataset
        self.no_cvm_max = no_cvm_max
        self.qr_verification = list(qr_verification)
        self.codec = LeanCodec(get_dialect("terminal"))
        self.rnd = rnd or random.Random()
        self.amount = amount
        self.currency = currency
        self._terminals = {t.id: t for t in dataset.terminals}
        self.terminal_id, self.dukpt_terminal_id, self.nfc_terminal_id = (
            terminal,
            dukpt_terminal,
            nfc_terminal,
        )
        synthetic = dataset.issuer_behaviour.synthetic
        if prefixes:
            chosen = [r for r in synthetic if r.prefix in prefixes]
            unknown = set(prefixes) - {r.prefix for r in chosen}
            if unknown:
                raise MixError(f"no synthetic range with prefix {sorted(unknown)} in the dataset")
        else:
            chosen = list(synthetic)
        if not chosen:
            raise MixError("the dataset has no issuer_behaviour.synthetic card range")
        self.ranges: list[SyntheticRange] = chosen
        self.cards = cards
        self._pools: dict[str, list[str]] = {}
        imks = {i.id: i.imk_ac.key for i in dataset.issuers if i.imk_ac is not None}
        self._imk = imks
        self.chip_ranges = [r for r in chosen if r.issuer in imks]
        self._stan = itertools.count(self.rnd.randrange(999999))
        self._atc = itertools.count(self.rnd.randrange(1, 0xFFFF))
        self._card_atc: dict[str, int] = {}
        """With a card population: each chip card's own ATC, rising by one per use (an issuer
        declines an ATC not above the last it saw; one shared counter wraps at 65535)."""
        self._ksn = ksn or self._random_ksn(DEFAULT_KSN)
        self._clock_second = -1
        self._clock_value = ("", "", "", "")
        self.approved: collections.deque[Message] = collections.deque(maxlen=100_000)
        qr = dataset.qr_acquirers[0] if dataset.qr_acquirers else None
        self.qr_api_key = qr.api_key if qr is not None else ""
        self.qr_merchant = qr.merchants[0] if qr is not None and qr.merchants else ""

    # -- prerequisites ------------------------------------------------------------------

    def missing(self, kind: str) -> str | None:
        """Why ``kind`` cannot be built from this dataset, or ``None``."""
        if kind in ("magstripe", "pin_tpk", "reversal"):
            t = self._terminals.get(self.terminal_id)
            if t is None:
                return f"terminal {self.terminal_id} is not in the dataset"
            if kind == "pin_tpk" and t.tpk is None:
                return f"terminal {self.terminal_id} has no TPK"
            return None
        if kind == "pin_dukpt":
            t = self._terminals.get(self.dukpt_terminal_id)
            if t is None or t.bdk is None:
                return f"terminal {self.dukpt_terminal_id} is not a DUKPT terminal with a BDK"
            if t.mac_required and t.tak is None:
                return f"terminal {self.dukpt_terminal_id} requires a MAC but has no TAK"
            return None
        if kind == "contactless":
            if self.nfc_terminal_id not in self._terminals:
                return f"terminal {self.nfc_terminal_id} is not in the dataset"
            if not self.chip_ranges:
                return "no synthetic range belongs to an issuer with an IMK-AC (ARQC key)"
            return None
        if kind == "qr":
            if not self.qr_api_key or not self.qr_merchant:
                return "the dataset has no QR acquirer with an API key and a merchant"
            return None
        return f"unknown kind {kind!r}"

    # -- counters -----------------------------------------------------------------------

    def next_stan(self) -> str:
        return f"{next(self._stan) % 999999 + 1:06d}"

    def _random_ksn(self, base: str) -> str:
        # A random start in the lower half of the 21-bit counter, so separate runs (and
        # separate locust users) rarely reuse a KSN and never exhaust the counter.
        from hsm_sim.terminal import next_ksn

        raw = int(base, 16) & ~0x1FFFFF | self.rnd.randrange(0x0FFFFF)
        return next_ksn(f"{raw:020X}")

    def next_ksn(self) -> str:
        from hsm_sim.terminal import next_ksn

        ksn = self._ksn
        self._ksn = next_ksn(ksn)
        return ksn

    # -- builders -----------------------------------------------------------------------

    def build(self, kind: str) -> Txn:
        """One request of ``kind`` (not ``reversal``: see :meth:`take_original`)."""
        if kind == "magstripe":
            return self._card_present(kind, self._terminal(self.terminal_id), pin=False)
        if kind == "pin_tpk":
            return self._card_present(kind, self._terminal(self.terminal_id), pin=True)
        if kind == "pin_dukpt":
            return self._card_present(kind, self._terminal(self.dukpt_terminal_id), pin=True)
        if kind == "contactless":
            return self._contactless()
        if kind == "qr":
            return Txn("qr", qr_body=self.qr_body())
        raise MixError(f"cannot build {kind!r} directly")

    def take_original(self) -> Message | None:
        """The oldest approved purchase not yet reversed, or ``None``."""
        return self.approved.popleft() if self.approved else None

    def note_approved(self, original: Message) -> None:
        self.approved.append(original)

    def _terminal(self, terminal_id: str) -> Terminal:
        return self._terminals[terminal_id]

    def _clock(self) -> tuple[str, str, str, str]:
        """Fields 7, 12, 13 and the EMV date YYMMDD for this second (computed once a second:
        the generator builds thousands of requests per second)."""
        second = int(time.time())
        if second != self._clock_second:
            now = dt.datetime.fromtimestamp(second, dt.UTC)  # the demo terminals keep UTC
            stamp = now.strftime("%y%m%d%H%M%S")
            self._clock_value = (stamp[2:], stamp[6:], stamp[2:6], stamp[:6])
            self._clock_second = second
        return self._clock_value

    def _base(self, terminal: Terminal, entry_mode: str, amount: int) -> dict[str, str]:
        f7, f12, f13, _ = self._clock()
        return {
            "3": "000000",
            "4": f"{amount:012d}",
            "7": f7,
            "11": self.next_stan(),
            "12": f12,
            "13": f13,
            "22": entry_mode,
            "41": terminal.id,
            "42": terminal.merchant,
            "49": self.currency,
        }

    def _pan(self, prefix: str) -> str:
        if not self.cards:
            return fresh_pan(prefix, self.rnd)
        pool = self._pools.get(prefix)
        if pool is None:
            pool = self._pools[prefix] = [fresh_pan(prefix, self.rnd) for _ in range(self.cards)]
        return self.rnd.choice(pool)

    def _amount(self) -> int:
        lo, hi = self.amount
        return lo if lo >= hi else self.rnd.randint(lo, hi)

    def _card_present(self, kind: str, terminal: Terminal, *, pin: bool) -> Txn:
        card = self.rnd.choice(self.ranges)
        pan = self._pan(card.prefix)
        fields = self._base(terminal, "021", self._amount())
        fields["35"] = f"{pan}={card.expiry}1010000000000"
        if pin:
            from hsm_sim import terminal as pinpad

            if terminal.key_mode == "dukpt":
                assert terminal.bdk is not None
                ksn = self.next_ksn()
                block = pinpad.pin_block_under_dukpt(terminal.bdk.key, ksn, card.pin, pan)
                fields["53"] = ksn
            else:
                assert terminal.tpk is not None
                block = pinpad.pin_block_under_tpk(terminal.tpk.key, card.pin, pan)
            fields["52"] = block.hex().upper()
        msg = Message("0200", fields)
        # A MAC terminal's reversal carries field 90 after 64, where SPEC's "MAC over all but
        # the last 8 bytes" is ambiguous (64 or 128): only MAC-less terminals' purchases are
        # offered for reversal.
        original = None if terminal.mac_required else msg
        return Txn(kind, fields["11"], self.encode(msg, terminal), original=original)

    def _contactless(self) -> Txn:
        from hsm_sim import terminal as pinpad
        from hsm_sim.emv import arqc_data

        terminal = self._terminal(self.nfc_terminal_id)
        card = self.rnd.choice(self.chip_ranges)
        pan = self._pan(card.prefix)
        amount = self._amount()
        fields = self._base(terminal, "071", amount)
        psn = "01"
        if self.cards:
            count = self._card_atc[pan] = min(self._card_atc.get(pan, 0) + 1, 0xFFFF)
        else:
            count = next(self._atc) % 0xFFFF + 1
        atc = count.to_bytes(2, "big")
        currency = bytes.fromhex(self.currency.rjust(4, "0"))
        tags: dict[str, bytes] = {
            "9F02": bytes.fromhex(f"{amount:012d}"),
            "9F03": bytes(6),
            "9F1A": currency,
            "95": bytes(5),
            "5F2A": currency,
            "9A": bytes.fromhex(self._clock()[3]),
            "9C": b"\x00",
            "9F37": self.rnd.randbytes(4),
            "82": b"\x19\x80",
            "9F36": atc,
            "9F10": bytes.fromhex("06010A03A00000"),
        }
        arqc = pinpad.compute_arqc(self._imk[card.issuer], pan, psn, atc, arqc_data(tags))
        tlv = {"9F26": arqc, "9F27": b"\x80", **tags}
        if self.no_cvm_max is not None and amount > self.no_cvm_max:
            tlv["9F6C"] = _CDCVM
        fields.update({"2": pan, "14": card.expiry, "23": f"0{psn}", "55": _tlv_hex(tlv)})
        msg = Message("0200", fields)
        return Txn("contactless", fields["11"], self.encode(msg, terminal), original=msg)

    def reversal(self, original: Message) -> Txn:
        """A full reversal (0400) of ``original`` (answered ``00``, from a MAC-less terminal)."""
        f = original.fields
        terminal = self._terminal(f["41"])
        if terminal.mac_required:
            raise MixError("reversals are only built for terminals without a MAC")
        pan, _ = card_of(original)
        fields = self._base(terminal, f.get("22", "021"), int(f["4"]))
        fields.update({"2": pan, "3": f["3"], "49": f["49"]})
        fields["90"] = original_data(original.mti, f["11"], f["7"])
        msg = Message("0400", fields)
        return Txn("reversal", fields["11"], self.encode(msg, terminal))

    def encode(self, msg: Message, terminal: Terminal) -> bytes:
        """Encoded request; with field 64 (retail MAC under the TAK) when the terminal MACs."""
        if not terminal.mac_required:
            return self.codec.encode(msg.mti, msg.fields)
        from hsm_sim.terminal import retail_mac

        assert terminal.tak is not None
        msg.fields["64"] = "0" * 16
        raw = self.codec.encode(msg.mti, msg.fields)
        mac = retail_mac(terminal.tak.key, raw[:-8])
        msg.fields["64"] = mac.hex().upper()
        return raw[:-8] + mac

    def qr_body(self) -> dict[str, Any]:
        """A consumer-presented QR payment request (SPEC "QR acquirer API")."""
        from protocols import qr_cpm

        card = self.rnd.choice(self.ranges)
        pan = self._pan(card.prefix)
        payload = qr_cpm.build(aid=_AIDS.get(pan[0], "A0000000031010"), pan=pan, expiry=card.expiry)
        body: dict[str, Any] = {
            "qr": payload,
            "amount": self._amount(),
            "currency": self.currency,
            "merchant_id": self.qr_merchant,
            "idempotency_key": uuid.UUID(bytes=self.rnd.randbytes(16)).hex,
        }
        if self.qr_verification:
            body["payer_verification"] = self.qr_verification
        return body


def _tlv_hex(tags: Mapping[str, bytes]) -> str:
    from protocols.emv import encode

    return encode(list(tags.items())).hex().upper()


def load_data(path: Path | None = None) -> Dataset:
    """The dataset at ``path``, else conf/demo/data.toml of this checkout."""
    return load_dataset(path or DEFAULT_DATA)
