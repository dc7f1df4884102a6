"""The issuer's card security: PIN (Visa PVV), CVV2 and the issuer-link MAC.

Everything goes through the HSM simulator's core (:mod:`hsm_sim.issuer`, the functions behind
its ``EC``, ``CY`` and ``M6``/``M8`` commands), with the issuer's keys held under the LMK, as an
issuer host with a local HSM would. A card's PIN is turned into its PVV at load and forgotten;
the PIN of a synthetic card range (one PIN for millions of cards, so no PVV per card can be
made in advance) is kept only as a PIN block under the LMK and turned into the card's PVV when
the card is first seen.

Rules (SPEC's codes; where SPEC is silent, the choice is written here and in the README):

* PIN (field 52, ISO format 0 under the issuer's ZPK, on 0100/0200): a wrong PIN is ``55``;
  once ``pin_tries`` wrong PINs in a row have been entered, the card answers ``75`` to every
  PIN transaction, right PIN or not, until its counter is reset
  (:meth:`AccountBook.reset_pin_tries`); a right PIN before that resets the counter. A PIN block
  that does not decrypt to a valid block counts as a wrong PIN.
* CVV2 on manual entry (field 22 starting ``01``): carried in field 48 (additional data,
  private) as subelement ``92``, written ``92`` + 2-digit length ``03`` + the 3 digits
  (Mastercard's DE 48 subelement 92 layout), checked with the CVK and service code ``000``. A
  wrong or missing CVV2 is ``05``; a field 48 that cannot be parsed is ``30``.
* MAC on the issuer link (issuers with a ZAK): every 01xx/02xx/04xx request must carry an ISO
  9797-1 algorithm 3 MAC under the ZAK (field 64, or 128 with a secondary bitmap, over the
  message without its last 8 bytes); missing or wrong is answered ``63``. Answers to those
  requests carry a MAC the same way, under the ZAK that verified the request. Network messages
  (08xx) are not MACed.
* Key changes (``issuer_sim.keys``): after a new ZPK or ZAK the previous one is still accepted
  for ``PREVIOUS_KEY_GRACE`` seconds (the acquirer's messages in flight were made with it): a
  PIN or MAC is checked under the current key, then under the previous one.
"""

from __future__ import annotations

import dataclasses
import hmac
import time
from collections.abc import Iterable
from typing import Protocol

from hsm_sim import issuer as core
from hsm_sim import pinblock as _pinblock
from hsm_sim import terminal as _terminal
from hsm_sim.errors import HsmCryptoError
from hsm_sim.lmk import Lmk, resolve_key
from issuer_sim.linkmac import LinkMac, link_mac_field
from kit.dataset import Dataset, SyntheticRange
from kit.keys import dataset_lmk, key_under_lmk
from protocols.codec import Codec
from protocols.dialects import get_dialect
from protocols.errors import ProtocolError
from protocols.fastcodec import best_codec
from protocols.mac import MAC_LENGTH
from protocols.message import Message
from protocols.validate import Field48Error, parse_field48


class PinAccount(Protocol):
    """What the PIN and CVV2 checks read and move on a card's account
    (``issuer_sim.accounts.Account``, which uses this module)."""

    wrong_pins: int
    expiry: str

    @property
    def pvv(self) -> str: ...


CVV2_TAG = "92"
"""Field 48 subelement carrying the CVV2 (tag 2 digits, length 2 digits, value)."""
CVV2_SERVICE_CODE = "000"
PVKI = "1"
MACED_CLASSES = frozenset("124")
"""MTI classes (second digit) whose messages carry a MAC on a MACed issuer link."""
PREVIOUS_KEY_GRACE = 120.0
"""Seconds a replaced ZPK or ZAK is still accepted after a key change."""
_REFERENCE_ACCOUNT = "000000000000"
"""Account number of the PIN blocks a synthetic range's PIN is kept in (under the LMK)."""


def field48_cvv2(cvv2: str) -> str:
    """Field 48 carrying only a CVV2 (``92`` ``03`` + digits), as a terminal sends it."""
    return f"{CVV2_TAG}{len(cvv2):02d}{cvv2}"


@dataclasses.dataclass(slots=True)
class IssuerSecurity:
    """One issuer's keys under the LMK and the checks that use them."""

    issuer: str
    lmk: Lmk = dataclasses.field(repr=False)
    zpk: str | None = dataclasses.field(default=None, repr=False)
    pvk: str | None = dataclasses.field(default=None, repr=False)
    cvk: str | None = dataclasses.field(default=None, repr=False)
    zak: str | None = dataclasses.field(default=None, repr=False)
    pin_tries: int = 3
    zmk: str | None = dataclasses.field(default=None, repr=False)
    """The link's ZMK under the LMK: new ZPKs and ZAKs travel under it (issuer_sim.keys)."""
    generation: int = 0
    previous_zpk: str | None = dataclasses.field(default=None, repr=False)
    previous_zak: str | None = dataclasses.field(default=None, repr=False)
    previous_until: float = 0.0
    """``time.monotonic()`` until which the previous ZPK and ZAK are still accepted."""
    pin_storage_key: str = dataclasses.field(default="", repr=False)
    """Key (under the LMK) of the PIN blocks synthetic ranges keep their PIN in; random."""
    codec: Codec = dataclasses.field(
        default_factory=lambda: best_codec(get_dialect("terminal")), repr=False
    )
    _links: dict[tuple[object, ...], LinkMac] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    """MAC contexts by what they were built from (ZAK, LMK, codec): the current and the
    previous ZAK's, each built once."""
    _answer_zak: str | None = dataclasses.field(default=None, init=False, repr=False, compare=False)
    """The ZAK that verified the request being answered (its answer is sealed under it)."""
    _sealed: tuple[Message, bytes] | None = dataclasses.field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if not self.pin_storage_key:
            self.pin_storage_key, _ = self.lmk.generate()

    @classmethod
    def from_dataset(cls, data: Dataset, issuer_id: str) -> IssuerSecurity | None:
        """The issuer's security from the dataset; ``None`` without an ``[hsm]`` LMK."""
        lmk = dataset_lmk(data)
        if lmk is None:
            return None
        issuer = data.issuer(issuer_id)
        return cls(
            issuer=issuer_id,
            lmk=lmk,
            zpk=key_under_lmk(lmk, issuer.zpk, f"issuer {issuer_id} zpk"),
            pvk=key_under_lmk(lmk, issuer.pvk, f"issuer {issuer_id} pvk"),
            cvk=key_under_lmk(lmk, issuer.cvk, f"issuer {issuer_id} cvk"),
            zak=key_under_lmk(lmk, issuer.zak, f"issuer {issuer_id} zak"),
            pin_tries=data.issuer_behaviour.pin_tries,
            zmk=key_under_lmk(lmk, issuer.zmk, f"issuer {issuer_id} zmk"),
        )

    # ---------------------------------------------------------------- PIN data at load

    def pvv(self, pan: str, pin: str) -> str:
        """The card's PVV (what the issuer stores instead of the PIN); ``""`` without a PVK."""
        if self.pvk is None:
            return ""
        return core.derive_pvv(self.pvk, pan, pin, PVKI, lmk=self.lmk)

    def protect_pin(self, pin: str) -> str:
        """A PIN kept encrypted: an ISO format 0 block (reference account) under the PIN
        storage key, itself under the LMK (hex)."""
        block = _terminal.pin_block_under_tpk(
            self.pin_storage_key, pin, _REFERENCE_ACCOUNT, lmk=self.lmk
        )
        return block.hex().upper()

    def pvv_from_protected(self, pan: str, protected: str) -> str:
        """The PVV of a card whose PIN is kept encrypted (see :meth:`protect_pin`)."""
        if self.pvk is None:
            return ""
        pin = _pinblock.decrypt_pin_block(
            resolve_key(self.pin_storage_key, self.lmk),
            _pinblock.FORMAT_ISO0,
            bytes.fromhex(protected),
            _REFERENCE_ACCOUNT,
        )
        return core.derive_pvv(self.pvk, pan, pin, PVKI, lmk=self.lmk)

    # ---------------------------------------------------------------- transaction checks

    def check_pin(self, account: PinAccount, pan: str, pin_block: str) -> str | None:
        """``None`` when the PIN is right, else ``55`` or ``75`` (see the module doc)."""
        if account.wrong_pins >= self.pin_tries:
            return "75"
        ok = False
        if self.pvk is not None and account.pvv:
            for zpk in self._accepted(self.zpk, self.previous_zpk):
                try:
                    ok = core.verify_pin_block_pvv(
                        zpk, self.pvk, pin_block, pan, account.pvv, PVKI, lmk=self.lmk
                    )
                except HsmCryptoError:
                    ok = False  # not a valid PIN block under this ZPK: a wrong PIN
                if ok:
                    break
        if ok:
            account.wrong_pins = 0
            return None
        account.wrong_pins += 1
        return "55"

    def check_cvv2(self, account: PinAccount, pan: str, field48: str | None) -> str | None:
        """``None`` when the CVV2 in field 48 is right; ``05`` wrong or missing, ``30`` bad 48."""
        try:
            cvv2 = parse_field48(field48 or "").get(CVV2_TAG)
        except Field48Error:
            return "30"
        if cvv2 is None or self.cvk is None:
            return "05"
        try:
            ok = core.verify_cvv(
                self.cvk, pan, account.expiry, CVV2_SERVICE_CODE, cvv2, lmk=self.lmk
            )
        except HsmCryptoError:
            ok = False
        return None if ok else "05"

    def card_cvv2(self, pan: str, expiry: str) -> str:
        """The CVV2 printed on a card (tests and the terminal simulator)."""
        if self.cvk is None:
            raise LookupError(f"issuer {self.issuer} has no CVK")
        return core.generate_cvv(self.cvk, pan, expiry, CVV2_SERVICE_CODE, lmk=self.lmk)

    # ---------------------------------------------------------------- issuer-link MAC

    def _accepted(self, current: str | None, previous: str | None) -> list[str]:
        """The keys a PIN or MAC may be under: the current one, then the previous one while
        its grace lasts (a key change's messages in flight)."""
        keys = [current] if current is not None else []
        if previous is not None and time.monotonic() < self.previous_until:
            keys.append(previous)
        return keys

    def _maced(self, msg: Message) -> bool:
        return self.zak is not None and msg.mti[1:2] in MACED_CLASSES

    def _link_mac(self, zak: str) -> LinkMac:
        """A ZAK's MAC contexts, built once (a MAC is two per transaction on this link)."""
        source = (zak, self.lmk, self.codec)
        link = self._links.get(source)
        if link is None:
            if len(self._links) >= 4:
                self._links.clear()
            link = self._links[source] = LinkMac(self.codec, resolve_key(zak, self.lmk))
        return link

    def check_mac(self, msg: Message) -> str | None:
        """``None`` when the request's MAC is right (or the link uses none), else ``63``."""
        self._answer_zak = None
        if not self._maced(msg):
            return None
        value = msg.fields.get(field := link_mac_field(msg.fields))
        if value is None or len(value) != 2 * MAC_LENGTH:
            return "63"
        try:
            received = bytes.fromhex(value)
            for zak in self._accepted(self.zak, self.previous_zak):
                link = self._link_mac(zak)
                if hmac.compare_digest(link.mac(link.data(msg, field)), received):
                    self._answer_zak = zak
                    return None
        except (ValueError, ProtocolError, HsmCryptoError):
            return "63"
        return "63"

    def seal(self, answer: Message) -> Message:
        """``answer`` with its MAC added, on a MACed link (unchanged otherwise): under the ZAK
        that verified the request, else the current one."""
        if self._maced(answer):
            zak = self._answer_zak or self.zak
            assert zak is not None
            frame = self._link_mac(zak).seal(answer, link_mac_field(answer.fields))
            self._sealed = (answer, frame)
        self._answer_zak = None
        return answer

    def take_encoded(self, answer: Message) -> bytes | None:
        """The encoding of ``answer`` when it is the message sealed last (sealing encodes it
        anyway), else ``None``; handed out once."""
        sealed = self._sealed
        if sealed is None or sealed[0] is not answer:
            return None
        self._sealed = None
        return sealed[1]


def without_pins(ranges: Iterable[SyntheticRange]) -> tuple[SyntheticRange, ...]:
    """Synthetic ranges with their clear PIN blanked (the PIN is kept under the LMK instead)."""
    return tuple(dataclasses.replace(r, pin="") for r in ranges)
