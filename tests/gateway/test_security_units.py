"""Units of the PIN/MAC security: key loading, MAC placement, the participants against an
in-memory HSM (the simulator's own crypto core, no sockets), the issuer's PIN/CVV2/MAC checks."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from psec import mac as psec_mac

from gateway.flow.participants import QueryIssuer
from gateway.flow.pipeline import Context
from gateway.flow.security import (
    IssuerLinkMac,
    SecurityMetrics,
    TranslatePin,
    VerifyMac,
    received_mac,
)
from gateway.metrics import Metrics
from gateway.upstream.hsm_client import HsmCommandError, HsmUnavailableError, PinTranslation
from hsm_sim import aes_dukpt, dukpt, pinblock
from hsm_sim import mac as core_mac
from hsm_sim import terminal as pinpad
from hsm_sim.lmk import Lmk, kcv_hex
from issuer_sim.accounts import AccountBook
from issuer_sim.host import IssuerHost
from issuer_sim.pin import IssuerSecurity, field48_cvv2
from kit.dataset import KeySpec, SyntheticRange, Terminal
from kit.keys import KeyLoadError, load_keys
from loadtest.pos_sim import (
    INITIAL_AES_KSN,
    INITIAL_KSN,
    add_mac,
    add_pin_block,
    next_ksn_for,
    terminal_of,
)
from protocols.codec import Codec
from protocols.dialects import get_dialect
from protocols.mac import mac_field, mac_input
from protocols.message import Message
from protocols.validate import parse_field48
from tests.helpers import demo_dataset, purchase

CODEC = Codec(get_dialect("terminal"))
DATA = demo_dataset()
assert DATA.hsm is not None
LMK = Lmk(DATA.hsm.lmk.key)
KEYS = load_keys(DATA)
T1, T2 = terminal_of(DATA, "T0000001"), terminal_of(DATA, "T0000002")
PAN, PIN = "4761730000000011", "1234"
NOW = dt.datetime(2026, 11, 27, 10, 15, tzinfo=dt.UTC)


class MemoryHsm:
    """The HsmClient methods the security stages use, on the simulator's core in memory."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.calls: list[str] = []

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.fail is not None:
            raise self.fail

    async def verify_mac(self, key: str, data: bytes, mac: bytes) -> bool:
        self._call("M8")
        return core_mac.verify_retail_mac(LMK.decrypt(key), data, mac)

    async def generate_mac(self, key: str, data: bytes) -> bytes:
        self._call("M6")
        return core_mac.retail_mac(LMK.decrypt(key), data)

    async def translate_pin_tpk_to_zpk(
        self, tpk: str, zpk: str, block: bytes, pan: str, *, dst_format: str = "01"
    ) -> PinTranslation:
        self._call("CA")
        pin = pinblock.decrypt_pin_block(LMK.decrypt(tpk), pinblock.FORMAT_ISO0, block, pan)
        return self._to_zpk(zpk, pin, pan, dst_format)

    async def translate_pin_dukpt_to_zpk(
        self, bdk: str, zpk: str, ksn: str, block: bytes, pan: str, *, dst_format: str = "01"
    ) -> PinTranslation:
        self._call("G0")
        pin = dukpt.decrypt_pin_block(LMK.decrypt(bdk), ksn, block, pan)
        return self._to_zpk(zpk, pin, pan, dst_format)

    async def translate_pin_aes_dukpt_to_zpk(
        self, bdk: str, zpk: str, ksn: str, block: bytes, pan: str, *, dst_format: str = "01"
    ) -> PinTranslation:
        self._call("Z0")
        pin_key = aes_dukpt.derive_pin_key(LMK.decrypt(bdk), ksn)
        pin = pinblock.decrypt_pin_block(pin_key, pinblock.FORMAT_ISO4, block, pan)
        return self._to_zpk(zpk, pin, pan, dst_format)

    def _to_zpk(self, zpk: str, pin: str, pan: str, dst_format: str) -> PinTranslation:
        out = pinblock.encrypt_pin_block(LMK.decrypt(zpk), dst_format, pin, pan)
        return PinTranslation(len(pin), out, dst_format)


def ctx_for(
    req: Message, terminal: Terminal | None = T1, *, issuer: str | None = "alpha"
) -> Context:
    raw = CODEC.encode(req)
    return Context(
        request=CODEC.decode(raw),
        received=0.0,
        deadline=10.0,
        now=NOW,
        rrn="0000000000A0",
        raw=raw,
        terminal=terminal,
        pan=req.fields.get("2", ""),
        issuer=issuer,
    )


def stage(cls: type[Any], hsm: Any) -> Any:
    return cls(hsm, KEYS, SecurityMetrics())


# ------------------------------------------------------------------ keys


def test_keys_are_held_under_the_lmk_only() -> None:
    t2 = KEYS.terminal("T0000002")
    alpha = KEYS.issuer("alpha")
    assert t2 is not None
    assert alpha is not None
    assert t2.key_mode == "dukpt"
    assert t2.mac_required
    assert T2.bdk is not None
    assert T2.tak is not None
    assert t2.bdk is not None
    assert t2.tak is not None
    assert t2.bdk.startswith("U")
    assert LMK.decrypt(t2.bdk).hex().upper() == T2.bdk.key
    assert LMK.decrypt(t2.tak).hex().upper() == T2.tak.key
    assert alpha.zak is not None
    assert KEYS.issuer("beta").zak is None  # type: ignore[union-attr]
    assert KEYS.lmk_kcv == "666EA8"
    assert T2.tak.key not in repr(t2)
    assert T2.tak.key not in repr(KEYS)


def test_key_load_errors_name_the_key_never_its_value() -> None:
    bad = dataclasses.replace(T1, tpk=KeySpec(key=T2.tak.key, kcv="000000"))  # type: ignore[union-attr]
    with pytest.raises(KeyLoadError) as exc:
        load_keys(dataclasses.replace(DATA, terminals=(bad,)))
    assert "T0000001 tpk" in str(exc.value)
    assert T2.tak.key not in str(exc.value)  # type: ignore[union-attr]
    no_tak = dataclasses.replace(T2, tak=None)
    with pytest.raises(KeyLoadError, match="mac_required without a tak"):
        load_keys(dataclasses.replace(DATA, terminals=(no_tak,)))
    with pytest.raises(KeyLoadError, match="needs the LMK"):
        load_keys(dataclasses.replace(DATA, hsm=None))


def test_aes_dukpt_bdk_is_checked_by_its_cmac_kcv() -> None:
    t3, spec = KEYS.terminal("T0000003"), terminal_of(DATA, "T0000003")
    assert t3 is not None
    assert t3.key_mode == "aes_dukpt"
    assert t3.bdk is not None
    assert spec.bdk is not None
    assert LMK.decrypt(t3.bdk).hex().upper() == spec.bdk.key
    # The TDES KCV of the same key is not accepted for it, and the error hides the key.
    tdes_kcv = dataclasses.replace(
        spec, bdk=KeySpec(key=spec.bdk.key, kcv=kcv_hex(LMK.decrypt(t3.bdk)))
    )
    with pytest.raises(KeyLoadError, match="T0000003 bdk: key check value") as exc:
        load_keys(dataclasses.replace(DATA, terminals=(tdes_kcv,)))
    assert spec.bdk.key not in str(exc.value)


def test_keys_already_under_the_lmk_are_taken_as_they_are() -> None:
    t2 = KEYS.terminal("T0000002")
    assert t2 is not None
    assert t2.tak is not None
    assert t2.bdk is not None
    given_form = dataclasses.replace(T2, tak=KeySpec(key=t2.tak), bdk=KeySpec(key=t2.bdk))
    keys = load_keys(dataclasses.replace(DATA, terminals=(given_form,), issuers=(), hsm=None))
    assert keys.terminal("T0000002").tak == t2.tak  # type: ignore[union-attr]


# ------------------------------------------------------------------ pos-sim's PIN pad


def test_pos_sim_aes_dukpt_pin_pad_sends_field_123(tmp_path: Path) -> None:
    t3 = terminal_of(DATA, "T0000003")
    assert t3.bdk is not None
    state = tmp_path / "pos-sim-ksn.json"
    first = next_ksn_for(state, "T0000003", aes=True)
    assert first == INITIAL_AES_KSN[:-1] + "1"
    assert next_ksn_for(state, "T0000003", aes=True) == INITIAL_AES_KSN[:-1] + "2"
    assert next_ksn_for(state, "T0000002") == pinpad.next_ksn(INITIAL_KSN)  # kept apart
    assert json.loads(state.read_text())["T0000003"] == INITIAL_AES_KSN[:-1] + "2"
    req = purchase(PAN, 1, terminal_id="T0000003")
    add_pin_block(req, t3, PIN, PAN, first)
    assert not {"52", "53"} & req.fields.keys()
    value = req.fields["123"]
    assert value[:24] == first
    block = bytes.fromhex(value[24:])  # format 4: random fill, so deciphered, not compared
    assert (
        pinblock.decrypt_pin_block(
            aes_dukpt.derive_pin_key(bytes.fromhex(t3.bdk.key), first),
            pinblock.FORMAT_ISO4,
            block,
            PAN,
        )
        == PIN
    )


# ------------------------------------------------------------------ MAC placement


def test_mac_field_is_64_or_128_with_a_secondary_bitmap() -> None:
    assert mac_field({"2": "x", "64": "y"}) == "64"
    assert mac_field({"2": "x", "90": "y"}) == "128"
    assert mac_field({"128": "y"}) == "64"


@pytest.mark.parametrize("extra", [{}, {"90": "0" * 42}])
def test_mac_covers_the_wire_bytes_before_it(extra: dict[str, str]) -> None:
    req = purchase(PAN, 100, terminal_id="T0000002", extra=extra)
    assert T2.tak is not None
    add_mac(req, T2.tak.key)
    raw = CODEC.encode(req)
    found = received_mac(raw, CODEC.decode(raw))
    assert found is not None
    data, mac = found
    assert data == raw[:-8] == mac_input(CODEC, req)
    assert mac.hex().upper() == req[mac_field(req.fields)]
    key = bytes.fromhex(T2.tak.key)
    # Published implementation cross-check: psec's ISO 9797-1 algorithm 3, padding method 1.
    assert mac == psec_mac.generate_retail_mac(key[:8], key[8:], data, 1)


def test_received_mac_missing_or_not_last() -> None:
    req = purchase(PAN, 100, terminal_id="T0000002")
    assert received_mac(CODEC.encode(req), req) is None
    req["64"] = "00" * 8
    raw = CODEC.encode(req)
    assert received_mac(raw[:-1] + b"\x01", CODEC.decode(raw)) is None


@given(st.integers(0, 10**12 - 1), st.text("0123456789", min_size=6, max_size=6))
def test_decode_encode_round_trip_is_exact(amount: int, stan: str) -> None:
    """What lets the issuer link MAC a decoded answer: re-encoding gives the wire bytes."""
    msg = purchase(PAN, amount, stan=stan, extra={"52": "0123456789ABCDEF", "90": "1" * 42})
    msg["128"] = "FEDCBA9876543210"
    raw = CODEC.encode(msg)
    assert CODEC.encode(CODEC.decode(raw)) == raw


# ------------------------------------------------------------------ VerifyMac


def signed(req: Message, *, wrong: bool = False) -> Message:
    assert T2.tak is not None
    add_mac(req, T2.tak.key, wrong=wrong)
    return req


@pytest.mark.anyio
async def test_verify_mac_outcomes() -> None:
    hsm = MemoryHsm()
    check = stage(VerifyMac, hsm)
    ok = ctx_for(signed(purchase(PAN, 1, terminal_id="T0000002")), T2)
    assert await check.prepare(ok) is None
    wrong = ctx_for(signed(purchase(PAN, 1, terminal_id="T0000002"), wrong=True), T2)
    assert await check.prepare(wrong) == "63"
    missing = ctx_for(purchase(PAN, 1, terminal_id="T0000002"), T2)
    assert await check.prepare(missing) == "63"
    assert hsm.calls == ["M8", "M8"]  # a missing MAC costs no HSM call
    assert await check.prepare(ctx_for(purchase(PAN, 1), T1)) is None  # not mac_required
    assert missing.reasons == ["terminal_mac: MAC missing"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "fail", [HsmUnavailableError("down"), HsmCommandError("M8", "10"), None], ids=str
)
async def test_verify_mac_without_a_working_hsm_is_96(fail: Exception | None) -> None:
    hsm = MemoryHsm(fail) if fail is not None else None
    ctx = ctx_for(signed(purchase(PAN, 1, terminal_id="T0000002")), T2)
    assert await stage(VerifyMac, hsm).prepare(ctx) == "96"


# ------------------------------------------------------------------ TranslatePin


@pytest.mark.anyio
async def test_translate_pin_tpk_and_dukpt_to_the_issuer_zpk() -> None:
    hsm = MemoryHsm()
    translate = stage(TranslatePin, hsm)
    alpha = DATA.issuer("alpha")
    assert alpha.zpk is not None
    expected = pinpad.pin_block_under_tpk(alpha.zpk.key, PIN, PAN).hex().upper()
    req = purchase(PAN, 1)
    add_pin_block(req, T1, PIN, PAN)
    ctx = ctx_for(req)
    assert await translate.prepare(ctx) is None
    assert ctx.pin_block == expected
    ksn = pinpad.next_ksn(INITIAL_KSN)
    req = purchase(PAN, 1, terminal_id="T0000002")
    add_pin_block(req, T2, PIN, PAN, ksn)
    ctx = ctx_for(req, T2)
    assert await translate.prepare(ctx) is None
    assert ctx.pin_block == expected
    assert hsm.calls == ["CA", "G0"]
    assert await translate.prepare(ctx_for(purchase(PAN, 1))) is None  # no PIN: nothing
    assert hsm.calls == ["CA", "G0"]


@pytest.mark.anyio
async def test_a_replayed_ksn_is_refused_while_remembered_and_ksn_memory_bounds_it() -> None:
    """``ksn_memory`` (gateway config) caps the KSNs remembered per BDK, oldest out first."""
    hsm: Any = MemoryHsm()
    translate = TranslatePin(hsm, KEYS, SecurityMetrics(), memory=2)
    ksns = [pinpad.next_ksn(INITIAL_KSN)]
    for _ in range(2):
        ksns.append(pinpad.next_ksn(ksns[-1]))

    def ctx_of(ksn: str) -> Context:
        req = purchase(PAN, 1, terminal_id="T0000002")
        add_pin_block(req, T2, PIN, PAN, ksn)
        return ctx_for(req, T2)

    assert await translate.prepare(ctx_of(ksns[0])) is None
    assert await translate.prepare(ctx_of(ksns[0])) == "63"
    assert await translate.prepare(ctx_of(ksns[1])) is None
    assert await translate.prepare(ctx_of(ksns[2])) is None  # the first KSN is forgotten
    assert await translate.prepare(ctx_of(ksns[0])) is None


@pytest.mark.anyio
async def test_translate_pin_failures() -> None:
    req = purchase(PAN, 1, terminal_id="T0000002")
    add_pin_block(req, T2, PIN, PAN, pinpad.next_ksn(INITIAL_KSN))
    no_ksn = Message(req.mti, {k: v for k, v in req.fields.items() if k != "53"})
    assert await stage(TranslatePin, MemoryHsm()).prepare(ctx_for(no_ksn, T2)) == "30"
    for hsm in (MemoryHsm(HsmUnavailableError("x")), MemoryHsm(HsmCommandError("G0", "20")), None):
        ctx = ctx_for(req, T2)
        assert await stage(TranslatePin, hsm).prepare(ctx) == "96"
        assert ctx.pin_block is None
    unknown_issuer = ctx_for(req, T2, issuer="nobody")
    assert await stage(TranslatePin, MemoryHsm()).prepare(unknown_issuer) == "96"


# ------------------------------------------------------------------ IssuerLinkMac


class FakePool:
    def __init__(self, issuer: str) -> None:
        self.issuer = issuer
        self.codec = CODEC

    def next_stan(self) -> str:
        return "000001"


def test_terminal_pin_data_never_goes_to_the_issuer() -> None:
    req = purchase(PAN, 1, terminal_id="T0000003")
    req.fields["123"] = "0" * 56
    req.fields["53"] = "0" * 20
    ctx = ctx_for(req, terminal_of(DATA, "T0000003"))
    sent = QueryIssuer("12345678", Metrics())._issuer_request(ctx, FakePool("alpha"))  # type: ignore[arg-type]
    assert not {"52", "53", "123"} & sent.fields.keys()
    ctx.pin_block = "0123456789ABCDEF"  # what TranslatePin leaves: the only PIN that goes on
    sent = QueryIssuer("12345678", Metrics())._issuer_request(ctx, FakePool("alpha"))  # type: ignore[arg-type]
    assert sent.fields["52"] == ctx.pin_block
    assert not {"53", "123"} & sent.fields.keys()


@pytest.mark.anyio
async def test_issuer_link_mac_seal_and_check() -> None:
    link = stage(IssuerLinkMac, MemoryHsm())
    ctx = ctx_for(purchase(PAN, 1))
    msg = purchase(PAN, 1)
    assert await link.seal(ctx, FakePool("alpha"), msg) is None
    raw = CODEC.encode(msg)
    alpha_zak = DATA.issuer("alpha").zak
    assert alpha_zak is not None
    assert raw[-8:] == core_mac.retail_mac(bytes.fromhex(alpha_zak.key), raw[:-8])
    reversal = purchase(PAN, 1, mti="0400", extra={"90": "0" * 42})
    assert await link.seal(ctx, FakePool("alpha"), reversal) is None
    assert "128" in reversal
    assert "64" not in reversal
    beta = purchase(PAN, 1)
    assert await link.seal(ctx, FakePool("beta"), beta) is None
    assert "64" not in beta  # beta's link uses no MAC
    # Answers: a right MAC passes, a wrong one is 96, none at all is 96 too.
    answer = Message("0210", {"11": "000001", "39": "00"})
    assert await link.seal(ctx, FakePool("alpha"), answer) is None
    assert await link.check_answer(ctx, FakePool("alpha"), answer) is None
    answer["39"] = "05"  # altered after the MAC
    assert await link.check_answer(ctx, FakePool("alpha"), answer) == "96"
    del answer.fields["64"]
    assert await link.check_answer(ctx, FakePool("alpha"), answer) == "96"
    assert ctx.answer_rejected == "bad_mac"
    unmaced = Message("0210", {"11": "000001", "39": "00"})
    assert await link.check_answer(ctx, FakePool("beta"), unmaced) is None  # beta: no MAC
    down = stage(IssuerLinkMac, MemoryHsm(HsmUnavailableError("x")))
    assert await down.seal(ctx, FakePool("alpha"), purchase(PAN, 1)) == "96"


# ------------------------------------------------------------------ issuer side


def alpha_book(**behaviour: Any) -> AccountBook:
    security = IssuerSecurity.from_dataset(DATA, "alpha")
    assert security is not None
    for name, value in behaviour.items():
        setattr(security, name, value)
    return AccountBook.from_cards("alpha", DATA.cards, DATA.issuer_behaviour.synthetic, security)


def test_issuer_keeps_pvvs_never_pins() -> None:
    book = alpha_book()
    account = book.find(PAN)
    assert account is not None
    assert len(account.pvv) == 4
    assert account.pvv.isdigit()
    assert all(isinstance(r, SyntheticRange) and r.pin == "" for r in book.synthetic)
    assert "0000" not in "".join(book.range_pins.values())
    synthetic = book.find("4761739000000004")
    assert synthetic is not None
    assert synthetic.pvv
    assert synthetic.pvv == book.security.pvv("4761739000000004", "0000")  # type: ignore[union-attr]


def issuer_request(pan: str, pin: str | None, **fields: str) -> Message:
    req = purchase(pan, 100)
    alpha = DATA.issuer("alpha")
    assert alpha.zpk is not None
    if pin is not None:
        req["52"] = pinpad.pin_block_under_tpk(alpha.zpk.key, pin, pan).hex().upper()
    req.fields.update(fields)
    return req


def test_issuer_pin_checks_55_then_75_and_reset() -> None:
    book = alpha_book()
    security = book.security
    assert security is not None
    account = book.find(PAN)
    assert account is not None
    block = issuer_request(PAN, PIN)["52"]
    wrong = issuer_request(PAN, "4321")["52"]
    assert security.check_pin(account, PAN, block) is None
    assert [security.check_pin(account, PAN, wrong) for _ in range(4)] == ["55"] * 3 + ["75"]
    assert security.check_pin(account, PAN, block) == "75"
    assert book.reset_pin_tries(PAN)
    assert security.check_pin(account, PAN, block) is None
    assert security.check_pin(account, PAN, "00" * 8) == "55"  # not a PIN block: wrong PIN


def test_issuer_cvv2_on_manual_entry() -> None:
    book = alpha_book()
    security = book.security
    assert security is not None
    host = IssuerHost(book)
    card = book.find(PAN)
    assert card is not None
    cvv2 = security.card_cvv2(PAN, card.expiry)
    other = f"{(int(cvv2) + 1) % 1000:03d}"
    assert parse_field48(field48_cvv2(cvv2)) == {"92": cvv2}

    def rc(**fields: str) -> str:
        msg = issuer_request(PAN, None, **fields)
        security.seal(msg)
        return host.handle(msg, NOW)["39"]

    assert rc(**{"22": "011", "48": field48_cvv2(cvv2)}) == "00"
    assert rc(**{"22": "011", "48": field48_cvv2(other)}) == "05"
    assert rc(**{"22": "011"}) == "05"
    assert rc(**{"22": "011", "48": "92"}) == "30"
    assert rc(**{"22": "021"}) == "00"  # CVV2 only checked on manual entry


def test_issuer_link_mac_required_and_answered_with_one() -> None:
    book = alpha_book()
    security = book.security
    assert security is not None
    host = IssuerHost(book)
    plain = issuer_request(PAN, PIN)
    answer = host.handle(plain, NOW)
    assert answer["39"] == "63"
    assert "64" in answer
    good = issuer_request(PAN, PIN)
    security.seal(good)
    answer = host.handle(good, NOW)
    assert answer["39"] == "00"
    assert received_mac(CODEC.encode(answer), answer) is not None
    raw = CODEC.encode(answer)
    assert raw[-8:] == pinpad.retail_mac(security.zak or "", raw[:-8], lmk=LMK)
    echo = Message("0800", {"7": "1127101500", "11": "000001", "70": "301"})
    assert "64" not in host.handle(echo, NOW)  # network messages are not MACed
    no_keys = IssuerHost(AccountBook.from_cards("alpha", DATA.cards, ()))
    assert no_keys.handle(issuer_request(PAN, PIN), NOW)["39"] == "96"
