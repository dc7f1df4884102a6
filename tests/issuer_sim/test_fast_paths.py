"""The issuer simulator's shortcuts give exactly what the plain versions give.

MAC arithmetic with cached cipher contexts, the MAC input without a message copy, sealing that
returns the encoded answer, the Luhn check in C, the PVV of a synthetic card derived when first
needed."""

from __future__ import annotations

import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm_sim import mac as core_mac
from hsm_sim import terminal as pinpad
from hsm_sim.errors import HsmCryptoError, KeyLengthError
from issuer_sim.accounts import AccountBook, luhn_ok
from issuer_sim.linkmac import LinkMac, RetailMac, link_mac_field
from issuer_sim.pin import IssuerSecurity
from protocols import validate
from protocols.codec import Codec
from protocols.dialects import get_dialect
from protocols.errors import ProtocolError
from protocols.fastcodec import best_codec
from protocols.mac import MAC_LENGTH, mac_field, mac_input
from protocols.message import Message
from tests.helpers import demo_dataset

CODEC = best_codec(get_dialect("terminal"))
DATA = demo_dataset()
ZAK = bytes.fromhex("7579EFBC851FC24098042A029B8083CE")

VALUES = {
    "38": "123456",
    "39": "00",
    "54": "0002156C000000001000",
    "55": "9108AABBCCDDEEFF0011",
    "90": "0" * 42,
    "95": "0" * 42,
    "100": "123456",
    "128": "00" * 8,
}
BASE = {
    "2": "4761739000000004",
    "3": "000000",
    "4": "000000001250",
    "7": "1127101500",
    "11": "000123",
    "12": "101500",
    "13": "1127",
    "32": "123456",
    "37": "ABC123DEF456",
    "41": "T0000001",
    "42": "M00000000000001",
    "49": "156",
}


@given(st.binary(min_size=16, max_size=16), st.lists(st.binary(max_size=300), max_size=6))
def test_retail_mac_equals_the_hsm_core(key: bytes, messages: list[bytes]) -> None:
    mac = RetailMac(key)
    for data in messages:  # one instance, several MACs: its chaining state never leaks
        assert mac.mac(data) == core_mac.retail_mac(key, data, padding=1)


def test_retail_mac_refuses_a_single_length_key() -> None:
    with pytest.raises(KeyLengthError):
        RetailMac(bytes(8))


KEYS = st.sampled_from(["39", "38", "54", "55", "64", "70", "90", "95", "128", "100", "007", "x"])


@given(st.sets(KEYS))
def test_link_mac_field_equals_the_gateways(extra: set[str]) -> None:
    fields = {**BASE, **dict.fromkeys(extra, "0")}
    assert link_mac_field(fields) == mac_field(fields)


MAC_VALUES = st.one_of(
    st.none(),
    st.binary(min_size=8, max_size=8).map(lambda b: b.hex().upper()),
    st.binary(min_size=8, max_size=8).map(lambda b: b.hex()),
    st.text(alphabet="0123456789ABCDEFG ", min_size=16, max_size=16),
    st.text(alphabet="0123456789ABCDEF", max_size=20),
)


@settings(max_examples=300)
@given(
    st.sets(st.sampled_from(["38", "39", "54", "90", "95", "100", "128"])),
    st.sampled_from(["64", "128"]),
    MAC_VALUES,
    st.sampled_from([CODEC, Codec(get_dialect("terminal"))]),
)
def test_mac_data_equals_mac_input(
    extra: set[str], field: str, value: str | None, codec: Codec
) -> None:
    fields = {**BASE}
    for key in sorted(extra, key=int):
        fields[key] = VALUES[key]
    if value is not None:
        fields[field] = value
    msg = Message("0200", fields)
    link = LinkMac(codec, ZAK)
    expected: bytes | type[Exception]
    try:
        expected = mac_input(codec, msg) if mac_field(fields) == field else b""
    except ProtocolError:
        expected = ProtocolError
    if expected == b"":
        return  # only ever asked for the field mac_field names
    if expected is ProtocolError:
        with pytest.raises(ProtocolError):
            link.data(msg, field)
    else:
        assert link.data(msg, field) == expected
    assert msg.fields == fields  # never changed


def _old_seal(msg: Message) -> Message:
    mac = core_mac.retail_mac(ZAK, mac_input(CODEC, msg))
    msg.fields[mac_field(msg.fields)] = mac.hex().upper()
    return msg


@given(st.sets(st.sampled_from(["38", "54", "55", "90", "95", "100"])), st.booleans())
def test_seal_gives_the_old_fields_and_the_encoded_message(
    extra: set[str], with_placeholder: bool
) -> None:
    fields = {**BASE}
    for key in sorted(extra, key=int):
        fields[key] = VALUES[key]
    fields["39"] = "00"
    if with_placeholder:
        fields[mac_field(fields)] = "FF" * 8
    old = _old_seal(Message("0210", dict(fields)))
    new = Message("0210", dict(fields))
    frame = LinkMac(CODEC, ZAK).seal(new, link_mac_field(new.fields))
    assert new.fields == old.fields
    assert list(new.fields) == list(old.fields)
    assert frame == CODEC.encode(old)


def test_seal_leaves_the_message_as_it_was_when_it_cannot_be_encoded() -> None:
    msg = Message("0210", {**BASE, "4": "not an amount that fits the field"})
    before = dict(msg.fields)
    with pytest.raises(ProtocolError):
        LinkMac(CODEC, ZAK).seal(msg, "64")
    assert msg.fields == before


def _old_check(security: IssuerSecurity, msg: Message) -> str | None:
    if security.zak is None or msg.mti[1:2] not in "124":
        return None
    value = msg.fields.get(mac_field(msg.fields))
    if value is None or len(value) != 2 * MAC_LENGTH:
        return "63"
    try:
        expected = pinpad.retail_mac(security.zak, mac_input(CODEC, msg), lmk=security.lmk)
        return None if hmac.compare_digest(expected, bytes.fromhex(value)) else "63"
    except (ValueError, ProtocolError, HsmCryptoError):
        return "63"


@settings(max_examples=200)
@given(
    st.sampled_from(["0200", "0100", "0400", "0800"]),
    st.sets(st.sampled_from(["90", "95", "128"])),
    st.sampled_from(["right", "wrong", "lower", "none", "garbage"]),
)
def test_check_mac_decides_as_before(mti: str, extra: set[str], mac: str) -> None:
    security = IssuerSecurity.from_dataset(DATA, "alpha")
    assert security is not None
    assert security.zak is not None
    fields = {**BASE}
    for key in sorted(extra, key=int):
        fields[key] = VALUES[key]
    msg = Message(mti, fields)
    field = mac_field(fields)
    right = pinpad.retail_mac(security.zak, mac_input(CODEC, msg), lmk=security.lmk).hex()
    value = {"right": right.upper(), "wrong": "00" * 8, "lower": right, "garbage": "ZZ" * 8}
    if mac in value:
        msg.fields[field] = value[mac]
    assert security.check_mac(msg) == _old_check(security, msg)
    assert security.check_mac(msg) == _old_check(security, msg)  # cached contexts: again


def test_a_changed_zak_is_used_at_once() -> None:
    security = IssuerSecurity.from_dataset(DATA, "alpha")
    assert security is not None
    answer = security.seal(Message("0210", {**BASE, "39": "00"}))
    security.zak = security.lmk.encrypt(bytes(range(16)))
    msg = Message("0210", {**BASE, "39": "00"})
    security.seal(msg)
    assert msg.fields["64"] != answer.fields["64"]
    assert (
        msg.fields["64"]
        == core_mac.retail_mac(bytes(range(16)), mac_input(CODEC, msg)).hex().upper()
    )


def test_encoded_answer_is_handed_out_once_and_only_for_the_sealed_message() -> None:
    security = IssuerSecurity.from_dataset(DATA, "alpha")
    assert security is not None
    answer = security.seal(Message("0210", {**BASE, "39": "00"}))
    assert security.take_encoded(Message("0210", dict(answer.fields))) is None
    assert security.take_encoded(answer) == CODEC.encode(answer)
    assert security.take_encoded(answer) is None


@given(st.text(alphabet="0123456789", max_size=24) | st.text(max_size=20))
def test_luhn_equals_the_protocol_check(pan: str) -> None:
    assert luhn_ok(pan) == validate.luhn_ok(pan)


def test_synthetic_card_pvv_is_derived_when_first_needed() -> None:
    security = IssuerSecurity.from_dataset(DATA, "alpha")
    assert security is not None
    book = AccountBook.from_cards("alpha", DATA.cards, DATA.issuer_behaviour.synthetic, security)
    account = book.find("4761739000000004")
    assert account is not None
    assert account.pvv_source is not None  # nothing derived yet
    assert account.pvv == security.pvv("4761739000000004", "0000")
    assert account.pvv_source is None
    account.pvv = "1234"
    assert account.pvv == "1234"


def _luhn_pan(prefix: str, body: int) -> str:
    partial = f"{prefix}{body:0{15 - len(prefix)}d}"
    for check in "0123456789":
        if luhn_ok(partial + check):
            return partial + check
    raise AssertionError("no check digit")


def test_synthetic_accounts_are_bounded_oldest_first_and_configured_cards_stay() -> None:
    book = AccountBook.from_cards("alpha", DATA.cards, DATA.issuer_behaviour.synthetic)
    book.max_synthetic = 3
    configured = len(book.accounts)
    pans = [_luhn_pan("4761739", i) for i in range(5)]
    for pan in pans:
        assert book.find(pan) is not None
    assert len(book.accounts) == configured + 3
    assert [p for p in pans if p in book.accounts] == pans[2:]  # the two oldest went
    assert "4761730000000011" in book.accounts  # a configured card is never evicted
    assert book.find(pans[0]) is not None  # made again, as the newest: the oldest goes
    assert [p for p in pans if p in book.accounts] == [pans[0], *pans[3:]]
