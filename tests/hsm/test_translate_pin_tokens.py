"""TranslatePin with payment tokens, on the simulator's core through the real host-command codec.

A wallet's PIN block is formed with the token; the issuer verifies it with the funding PAN. The
stage translates to the issuer's ZPK in ISO format 1 with the token, then ``CC`` reformats it to
ISO format 0 with the funding PAN. A card that is not a token keeps its single command.
"""

from __future__ import annotations

import datetime as dt

import pytest

from gateway.flow.pipeline import Context
from gateway.flow.security import SecurityMetrics, TranslatePin
from gateway.flow.tokens import Detokenize, PanCipher, TokenVault
from gateway.upstream.hsm_client import HsmClient, HsmUnavailableError
from hsm_sim import pinblock
from hsm_sim import terminal as pinpad
from hsm_sim.core import HsmCore
from kit.dataset import Terminal
from kit.keys import load_keys
from loadtest.pos_sim import INITIAL_KSN, add_pin_block, terminal_of
from protocols import hsm as proto
from protocols.codec import Codec
from protocols.dialects import get_dialect
from protocols.message import Message
from tests.helpers import demo_dataset, purchase

pytestmark = pytest.mark.anyio

CODEC = Codec(get_dialect("terminal"))
DATA = demo_dataset()
assert DATA.hsm is not None
KEYS = load_keys(DATA)
TPK_TERMINAL = terminal_of(DATA, "T0000001")
DUKPT_TERMINAL = terminal_of(DATA, "N0000001")  # the NFC terminal: DUKPT, no MAC
TOKEN, FUNDING, PIN = "4895370000000015", "4761730000000011", "1234"
NOW = dt.datetime(2026, 11, 27, 10, 15, tzinfo=dt.UTC)
_ALPHA_ZPK = DATA.issuer("alpha").zpk
assert _ALPHA_ZPK is not None
ALPHA_ZPK = _ALPHA_ZPK.key  # clear test key
# What the issuer must receive: ISO format 0 with the funding PAN under its ZPK (deterministic).
EXPECTED = pinpad.pin_block_under_tpk(ALPHA_ZPK, PIN, FUNDING).hex().upper()


class CoreClient(HsmClient):
    """An HsmClient whose requests go through the codec to an HsmCore in memory. ``fail``
    maps a command code to an exception to raise or an error code to answer instead."""

    def __init__(self, fail: dict[str, Exception | str] | None = None) -> None:
        super().__init__(["127.0.0.1:1"])
        self.core = HsmCore(DATA.hsm.lmk.key)  # type: ignore[union-attr]
        self.fail = fail or {}
        self.sent: list[proto.Request] = []

    async def request(self, request: proto.Request) -> proto.HsmResponse:
        self.sent.append(request)
        failure = self.fail.get(request.CODE)
        if isinstance(failure, Exception):
            raise failure
        if failure is not None:
            return proto.HsmResponse("0001", proto.response_code(request.CODE), failure)
        return proto.decode_response(self.core.process(proto.encode_request("0001", request)))

    @property
    def commands(self) -> list[str]:
        return [r.CODE for r in self.sent]


def vault() -> TokenVault:
    return TokenVault(PanCipher(bytes(range(32))), DATA.tokens)


def pin_request(
    pan: str, term: Terminal, pin: str = PIN, ksn: str | None = None, *, track2: bool = False
) -> Message:
    req = purchase(pan, 100, terminal_id=term.id, merchant=term.merchant)
    add_pin_block(req, term, pin, pan, ksn)
    if track2:
        del req.fields["2"]
        req.fields["35"] = f"{pan}=29121010000000000"
    return req


async def arrived(req: Message, term: Terminal) -> Context:
    """The context as TranslatePin sees it: decoded, detokenized, routed to alpha."""
    raw = CODEC.encode(req)
    msg = CODEC.decode(raw)
    pan = msg.fields.get("2") or msg.fields["35"].split("=")[0]
    ctx = Context(msg, 0.0, 10.0, NOW, "0000000000T1", raw=raw, terminal=term, pan=pan)
    assert await Detokenize(vault()).prepare(ctx) is None
    ctx.issuer = "alpha"
    return ctx


def stage(hsm: HsmClient) -> TranslatePin:
    return TranslatePin(hsm, KEYS, SecurityMetrics())


def ksns() -> list[str]:
    out, ksn = [], INITIAL_KSN
    for _ in range(4):
        ksn = pinpad.next_ksn(ksn)
        out.append(ksn)
    return out


async def test_a_card_keeps_its_single_command() -> None:
    hsm = CoreClient()
    translate = stage(hsm)
    ctx = await arrived(pin_request(FUNDING, TPK_TERMINAL), TPK_TERMINAL)
    assert await translate.prepare(ctx) is None
    assert ctx.pin_block == EXPECTED
    ksn = ksns()[0]
    ctx = await arrived(pin_request(FUNDING, DUKPT_TERMINAL, ksn=ksn), DUKPT_TERMINAL)
    assert await translate.prepare(ctx) is None
    assert ctx.pin_block == EXPECTED
    assert hsm.commands == ["CA", "G0"]
    ca, g0 = hsm.sent
    assert isinstance(ca, proto.TranslatePinTpkToZpk)
    assert isinstance(g0, proto.TranslatePinDukptToZpk)
    assert (ca.src_format, ca.dst_format, ca.account) == ("01", "01", FUNDING)
    assert (g0.dst_format, g0.account) == ("01", FUNDING)


@pytest.mark.parametrize("track2", [False, True], ids=["field2", "track2"])
async def test_a_token_pin_goes_through_format_1_to_the_funding_pan(track2: bool) -> None:
    hsm = CoreClient()
    translate = stage(hsm)
    ctx = await arrived(pin_request(TOKEN, TPK_TERMINAL, track2=track2), TPK_TERMINAL)
    assert ctx.request.fields["2"] == FUNDING
    assert await translate.prepare(ctx) is None
    assert ctx.pin_block == EXPECTED
    ksn = ksns()[1]
    ctx = await arrived(pin_request(TOKEN, DUKPT_TERMINAL, ksn=ksn, track2=track2), DUKPT_TERMINAL)
    assert await translate.prepare(ctx) is None
    assert ctx.pin_block == EXPECTED
    assert hsm.commands == ["CA", "CC", "G0", "CC"]
    ca, cc1, g0, cc2 = hsm.sent
    assert isinstance(ca, proto.TranslatePinTpkToZpk)
    assert isinstance(g0, proto.TranslatePinDukptToZpk)
    assert (ca.src_format, ca.dst_format, ca.account) == ("01", "05", TOKEN)
    assert (g0.dst_format, g0.account) == ("05", TOKEN)
    assert KEYS.issuer("alpha").zpk == ca.zpk == g0.zpk  # type: ignore[union-attr]
    for cc in (cc1, cc2):
        assert isinstance(cc, proto.TranslatePinZpkToZpk)
        assert cc.src_zpk == cc.dst_zpk == ca.zpk  # reformatted under the issuer's ZPK
        assert (cc.src_format, cc.dst_format, cc.account) == ("05", "01", FUNDING)
    # Format 1 carries a random fill: what travels between the two steps is not the result.
    assert isinstance(cc1, proto.TranslatePinZpkToZpk)
    assert cc1.pin_block != ctx.pin_block
    assert (
        pinblock.decrypt_pin_block(bytes.fromhex(ALPHA_ZPK), "01", bytes.fromhex(EXPECTED), FUNDING)
        == PIN
    )


async def test_a_wrong_token_pin_is_translated_for_the_issuer_to_decline() -> None:
    hsm = CoreClient()
    ctx = await arrived(pin_request(TOKEN, TPK_TERMINAL, pin="9999"), TPK_TERMINAL)
    assert await stage(hsm).prepare(ctx) is None
    assert ctx.pin_block == pinpad.pin_block_under_tpk(ALPHA_ZPK, "9999", FUNDING).hex().upper()


def failures() -> list[tuple[str, Exception | str]]:
    return [
        (step, failure)
        for step in ("first", "CC")
        for failure in (HsmUnavailableError("down"), proto.INVALID_PIN_BLOCK)
    ]


@pytest.mark.parametrize(("step", "failure"), failures(), ids=str)
async def test_either_step_failing_answers_as_a_single_step_does(
    step: str, failure: Exception | str
) -> None:
    # The reference: today's single command failing the same way for a card.
    ref_hsm = CoreClient({"CA": failure})
    ref = await arrived(pin_request(FUNDING, TPK_TERMINAL), TPK_TERMINAL)
    ref_stage = stage(ref_hsm)
    assert await ref_stage.prepare(ref) == "96"
    code = "CA" if step == "first" else "CC"
    hsm = CoreClient({code: failure})
    translate = stage(hsm)
    ctx = await arrived(pin_request(TOKEN, TPK_TERMINAL), TPK_TERMINAL)
    assert await translate.prepare(ctx) == "96"
    assert ctx.pin_block is None
    assert ctx.reasons == ref.reasons
    assert hsm.commands == (["CA"] if step == "first" else ["CA", "CC"])
    outcome = "hsm_unavailable" if isinstance(failure, Exception) else "hsm_error"
    for s in (translate, ref_stage):
        assert s.metrics.checks.labels("pin_translation", outcome)._value.get() == 1


@pytest.mark.parametrize(("step", "failure"), failures(), ids=str)
async def test_a_failed_dukpt_token_translation_does_not_consume_the_ksn(
    step: str, failure: Exception | str
) -> None:
    ksn = ksns()[2]
    code = "G0" if step == "first" else "CC"
    hsm = CoreClient({code: failure})
    translate = stage(hsm)
    req = pin_request(TOKEN, DUKPT_TERMINAL, ksn=ksn)
    assert await translate.prepare(await arrived(req, DUKPT_TERMINAL)) == "96"
    hsm.fail.clear()  # the HSM is back: the same KSN still translates, once
    ctx = await arrived(req, DUKPT_TERMINAL)
    assert await translate.prepare(ctx) is None
    assert ctx.pin_block == EXPECTED
    again = await arrived(req, DUKPT_TERMINAL)
    before = len(hsm.sent)
    assert await translate.prepare(again) == "63"  # now consumed: a replay
    assert len(hsm.sent) == before  # refused before the HSM
    assert again.reasons == ["pin_translation: DUKPT KSN used before"]
    assert len(translate._ksns) == 1


async def test_dukpt_ksns_are_remembered_up_to_the_bound_oldest_forgotten_first() -> None:
    translate = TranslatePin(CoreClient(), KEYS, SecurityMetrics(), memory=2)  # ksn_memory

    async def translated(ksn: str) -> str | None:
        req = pin_request(FUNDING, DUKPT_TERMINAL, ksn=ksn)
        return await translate.prepare(await arrived(req, DUKPT_TERMINAL))

    first, second, third, _ = ksns()
    for ksn in (first, second, third):
        assert await translated(ksn) is None
    assert await translated(third) == "63"
    assert await translated(second) == "63"  # a replay refused does not renew the KSN
    assert await translated(first) is None  # the oldest was forgotten; taken again, newest
    assert await translated(third) == "63"
    assert await translated(second) is None  # so the next oldest went
    assert len(translate._ksns) == 2
