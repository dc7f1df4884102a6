"""The issuer's side of key exchange, without sockets: import through the HSM core, KCV check,
refusals, the previous key accepted during its grace, answers sealed under the verifying ZAK."""

from __future__ import annotations

import time

import pytest

from hsm_sim import terminal
from hsm_sim.core import HsmCore
from hsm_sim.keyblock import Attributes
from hsm_sim.lmk import Lmk
from issuer_sim import keys
from issuer_sim.linkmac import LinkMac, link_mac_field
from issuer_sim.pin import IssuerSecurity
from protocols import hsm as proto
from protocols import keychange
from protocols.dialects import get_dialect
from protocols.fastcodec import best_codec
from protocols.message import Message
from tests.helpers import demo_dataset

DATA = demo_dataset()
ALPHA = DATA.issuer("alpha")
PAN = "4761730000000011"


class _Account:
    def __init__(self, pvv: str) -> None:
        self.wrong_pins = 0
        self.expiry = "2812"
        self._pvv = pvv

    @property
    def pvv(self) -> str:
        return self._pvv


@pytest.fixture
def security() -> IssuerSecurity:
    found = IssuerSecurity.from_dataset(DATA, "alpha")
    assert found is not None
    assert found.zmk is not None
    return found


def _switch_offer(security: IssuerSecurity, kind: str) -> tuple[Message, str]:
    """The 0800 a switch (its own HSM, another LMK) sends for a new key; and that key's KCV."""
    assert ALPHA.zmk is not None
    switch = HsmCore("0123456789ABCDEFFEDCBA9876543210")
    zmk = switch.blocks.wrap(Attributes("K0"), bytes.fromhex(ALPHA.zmk.key))
    usage, mode = ("P0", "B") if kind == "zpk" else ("M3", "C")
    _, body = switch.execute(
        proto.GenerateKey("FFF", "1", "S", zmk, "S", usage, "T", mode, "00", "E")
    )
    assert isinstance(body, proto.GeneratedKey)
    assert body.key_under_zmk is not None
    fields = {"7": "1207053000", "11": "000123"}
    fields.update(keychange.request(kind, body.key_under_zmk[1:], body.kcv, 1))
    return Message("0800", fields), body.kcv


def test_a_new_zpk_is_imported_and_the_old_one_still_accepted(security: IssuerSecurity) -> None:
    old_zpk = security.zpk
    assert old_zpk is not None
    msg, kcv = _switch_offer(security, "zpk")
    answer = keys.accept(security, msg)
    assert (answer.mti, answer["39"], answer["53"]) == ("0810", "00", msg["53"])
    assert security.zpk != old_zpk
    assert security.previous_zpk == old_zpk
    assert security.lmk.kcv(security.zpk or "") == kcv
    account = _Account(security.pvv(PAN, "1234"))
    old_block = terminal.pin_block_under_tpk(old_zpk, "1234", PAN, lmk=security.lmk).hex()
    new_block = terminal.pin_block_under_tpk(security.zpk or "", "1234", PAN, lmk=security.lmk)
    assert security.check_pin(account, PAN, new_block.hex()) is None
    assert security.check_pin(account, PAN, old_block) is None  # in flight when it changed
    wrong = terminal.pin_block_under_tpk(security.zpk or "", "9999", PAN, lmk=security.lmk)
    assert security.check_pin(account, PAN, wrong.hex()) == "55"
    security.previous_until = time.monotonic() - 1  # the grace is over
    assert security.check_pin(account, PAN, old_block) == "55"


def test_answers_are_sealed_under_the_zak_that_verified_the_request(
    security: IssuerSecurity,
) -> None:
    old_zak = security.zak
    assert old_zak is not None
    msg, _ = _switch_offer(security, "zak")
    assert keys.accept(security, msg)["39"] == "00"
    codec = best_codec(get_dialect("terminal"))
    lmk: Lmk = security.lmk
    for zak in (old_zak, security.zak or ""):
        link = LinkMac(codec, lmk.decrypt(zak))
        request = Message("0200", {"3": "000000", "4": "000000001000", "11": "000001"})
        request.fields["64"] = "00" * 8
        link.seal(request, link_mac_field(request.fields))
        assert security.check_mac(request) is None
        answer = Message("0210", {"3": "000000", "11": "000001", "39": "00"})
        security.seal(answer)
        expected = link.mac(link.data(answer, "64"))
        assert answer["64"] == expected.hex().upper()


@pytest.mark.parametrize("fault", ["tamper", "wrong_kcv", "malformed", "wrong_usage"])
def test_a_bad_key_change_is_refused_and_the_old_key_kept(
    security: IssuerSecurity, fault: str
) -> None:
    before = (security.zpk, security.zak, security.generation)
    msg, kcv = _switch_offer(security, "zpk")
    if fault == "tamper":
        block = msg["48"]
        msg.fields["48"] = block[:40] + ("0" if block[40] != "0" else "1") + block[41:]
    elif fault == "wrong_kcv":
        msg.fields["53"] = f"{int(kcv, 16) ^ 1:06X}" + msg["53"][6:]
    elif fault == "malformed":
        msg.fields["53"] = "not a kcv"
    else:
        msg.fields["70"] = keychange.ZAK_CHANGE  # a PIN key offered as the MAC key
    assert keys.accept(security, msg)["39"] == "63"
    assert (security.zpk, security.zak, security.generation) == before


def test_the_issuer_offers_a_key_and_undoes_it_when_refused(security: IssuerSecurity) -> None:
    before = (security.zpk, security.previous_zpk, security.generation)
    fields, undo = keys.offer(security, "zpk")
    assert fields["70"] == "161"
    assert fields["48"].startswith("B")  # version B under the TDES ZMK
    assert security.zpk != before[0]
    assert security.previous_zpk == before[0]
    undo(False)  # refused
    assert (security.zpk, security.previous_zpk, security.generation) == before
    fields, undo = keys.offer(security, "zpk")
    new = security.zpk
    undo(True)  # unanswered: the acquirer may have it, so it is still accepted
    assert security.zpk == before[0]
    assert security.previous_zpk == new
    with pytest.raises(ValueError, match="fault"):
        keys.offer(security, "zpk", fault="nonsense")


def test_key_change_wire_helpers() -> None:
    fields = keychange.request("zak", "B0096M3TC00N0000" + "0" * 80, "ABC123", 42)
    assert fields["70"] == "162"
    assert fields["53"] == "ABC12300004200000000"
    change = keychange.parse(Message("0800", {"7": "1207000000", "11": "000001", **fields}))
    assert (change.kind, change.kcv, change.generation) == ("zak", "ABC123", 42)
    for bad in ({"48": "short"}, {"53": "ABC123"}, {"48": "b" * 40}, {"70": "301"}):
        with pytest.raises(keychange.KeyChangeError):
            keychange.parse(Message("0800", {**fields, **bad}))
    with pytest.raises(keychange.KeyChangeError):
        keychange.request("tak", "B", "ABC123", 1)
