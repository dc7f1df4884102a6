"""TranslatePin for AES DUKPT terminals (field 123, ``Z0``), on the simulator's core through the
real host-command codec: the translated block, tokens, the rising-counter replay guard."""

from __future__ import annotations

import os

import pytest

from gateway.upstream.hsm_client import HsmUnavailableError
from hsm_sim import aes_dukpt, pinblock
from hsm_sim import terminal as pinpad
from hsm_sim.lmk import Lmk
from loadtest.pos_sim import INITIAL_AES_KSN, terminal_of
from protocols import hsm as proto
from tests.hsm.test_translate_pin_tokens import (
    ALPHA_ZPK,
    DATA,
    EXPECTED,
    FUNDING,
    PIN,
    TOKEN,
    TPK_TERMINAL,
    CoreClient,
    arrived,
    pin_request,
    stage,
)

pytestmark = pytest.mark.anyio

AES_TERMINAL = terminal_of(DATA, "T0000003")


def ksn(counter: int, ikid: str = INITIAL_AES_KSN[:16]) -> str:
    return f"{ikid}{counter:08X}"


async def test_a_card_pin_goes_through_z0_to_format_0() -> None:
    hsm = CoreClient()
    ctx = await arrived(pin_request(FUNDING, AES_TERMINAL, ksn=ksn(1)), AES_TERMINAL)
    assert not {"52", "53"} & ctx.request.fields.keys()
    assert await stage(hsm).prepare(ctx) is None
    assert ctx.pin_block == EXPECTED
    (z0,) = hsm.sent
    assert isinstance(z0, proto.TranslatePinAesDukptToZpk)
    assert (z0.bdk_length, z0.pin_key_length, z0.ksn) == ("1", "1", ksn(1))
    assert (z0.dst_format, z0.account) == ("01", FUNDING)
    assert z0.pin_block == ctx.request.fields["123"][24:]


async def test_a_wrong_pin_is_translated_for_the_issuer_to_decline() -> None:
    ctx = await arrived(pin_request(FUNDING, AES_TERMINAL, "9999", ksn(1)), AES_TERMINAL)
    assert await stage(CoreClient()).prepare(ctx) is None
    assert ctx.pin_block == pinpad.pin_block_under_tpk(ALPHA_ZPK, "9999", FUNDING).hex().upper()


async def test_a_token_pin_goes_through_format_1_then_cc() -> None:
    hsm = CoreClient()
    ctx = await arrived(pin_request(TOKEN, AES_TERMINAL, ksn=ksn(1)), AES_TERMINAL)
    assert await stage(hsm).prepare(ctx) is None
    assert ctx.pin_block == EXPECTED
    assert hsm.commands == ["Z0", "CC"]
    z0, cc = hsm.sent
    assert isinstance(z0, proto.TranslatePinAesDukptToZpk)
    assert isinstance(cc, proto.TranslatePinZpkToZpk)
    assert (z0.dst_format, z0.account) == ("05", TOKEN)
    assert (cc.src_format, cc.dst_format, cc.account) == ("05", "01", FUNDING)


async def test_a_counter_that_does_not_rise_is_refused_before_the_hsm() -> None:
    hsm = CoreClient()
    translate = stage(hsm)

    async def translated(value: str) -> str | None:
        req = pin_request(FUNDING, AES_TERMINAL, ksn=value)
        return await translate.prepare(await arrived(req, AES_TERMINAL))

    assert await translated(ksn(5)) is None
    assert await translated(ksn(5)) == "63"  # replayed
    assert await translated(ksn(3)) == "63"  # an older one
    assert await translated(ksn(6)) is None
    assert await translated(ksn(2, "FEDCBA9876543210")) is None  # another device: its own
    assert hsm.commands == ["Z0", "Z0", "Z0"]
    req = pin_request(FUNDING, AES_TERMINAL, ksn=ksn(6))
    ctx = await arrived(req, AES_TERMINAL)
    assert await translate.prepare(ctx) == "63"
    assert ctx.reasons == ["pin_translation: AES DUKPT counter did not rise"]


@pytest.mark.parametrize(
    ("code", "failure"),
    [("Z0", HsmUnavailableError("down")), ("Z0", proto.INVALID_PIN_BLOCK), ("CC", "20")],
    ids=str,
)
async def test_a_failed_translation_gives_the_counter_back(
    code: str, failure: Exception | str
) -> None:
    hsm = CoreClient({code: failure})
    translate = stage(hsm)

    async def translated(counter: int) -> str | None:
        req = pin_request(TOKEN, AES_TERMINAL, ksn=ksn(counter))
        return await translate.prepare(await arrived(req, AES_TERMINAL))

    assert await translated(1) == "96"
    assert not translate._aes_counters  # a first counter that failed leaves nothing
    hsm.fail.clear()
    assert await translated(3) is None
    hsm.fail[code] = failure
    assert await translated(4) == "96"
    hsm.fail.clear()
    assert await translated(4) is None  # 3 was put back: 4 still rises, once
    assert await translated(4) == "63"
    assert list(translate._aes_counters.values()) == [4]


async def test_pin_field_not_of_the_terminals_key_mode_or_malformed_is_30() -> None:
    hsm = CoreClient()
    translate = stage(hsm)
    in_52 = pin_request(FUNDING, TPK_TERMINAL)  # a TPK block from the AES DUKPT terminal
    in_52.fields["41"] = AES_TERMINAL.id
    aes_from_tpk = pin_request(FUNDING, AES_TERMINAL, ksn=ksn(1))
    aes_from_tpk.fields["41"] = TPK_TERMINAL.id
    short = pin_request(FUNDING, AES_TERMINAL, ksn=ksn(2))
    short.fields["123"] = short.fields["123"][:-2]
    for req, term in ((in_52, AES_TERMINAL), (aes_from_tpk, TPK_TERMINAL), (short, AES_TERMINAL)):
        ctx = await arrived(req, term)
        assert await translate.prepare(ctx) == "30"
    assert hsm.sent == []
    assert not translate._aes_counters


async def test_an_aes_256_bdk_is_sent_with_its_length_flag() -> None:
    hsm = CoreClient()
    bdk = os.urandom(32)
    lmk = Lmk(DATA.hsm.lmk.key)  # type: ignore[union-attr]
    block = aes_dukpt.encrypt_pin_block(bdk, ksn(1), PIN, FUNDING)  # an AES-128 PIN key
    zpk = lmk.encrypt(bytes.fromhex(ALPHA_ZPK))
    result = await hsm.translate_pin_aes_dukpt_to_zpk(lmk.encrypt(bdk), zpk, ksn(1), block, FUNDING)
    assert isinstance(hsm.sent[0], proto.TranslatePinAesDukptToZpk)
    assert hsm.sent[0].bdk_length == "2"
    assert (
        pinblock.decrypt_pin_block(bytes.fromhex(ALPHA_ZPK), "01", result.pin_block, FUNDING) == PIN
    )
