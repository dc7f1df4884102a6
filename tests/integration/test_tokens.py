"""Payment tokens: the vault (no clear PAN or token at rest), the detokenize participant on a bare
context, and token purchases end to end over real sockets."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from gateway.flow.pipeline import Context
from gateway.flow.tokens import Detokenize, PanCipher, TokenVault, VaultKeyError, presented
from hsm_sim import terminal as pinpad
from issuer_sim.server import IssuerServer
from kit.dataset import Token
from loadtest.pos_sim import INITIAL_KSN, add_pin_block, card_for, terminal_of
from protocols.message import Message
from tests.helpers import Stack, demo_dataset, purchase, reversal_of, running_stack, terminal

TOKEN = "4895370000000015"
FUNDING = "4761730000000011"
SUSPENDED = "4895370000000023"
EXPIRED = "4895370000000031"
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def vault() -> TokenVault:
    return TokenVault(
        PanCipher(bytes(range(32))),
        [
            Token(token=TOKEN, pan=FUNDING, expiry="2912"),
            Token(token=SUSPENDED, pan=FUNDING, expiry="2912", status="suspended"),
            Token(token=EXPIRED, pan=FUNDING, expiry="2401"),
        ],
    )


def context(req: Message) -> Context:
    ctx = Context(req, 0.0, 30.0, NOW, "RRN000000001")
    ctx.pan = req.fields["2"]
    ctx.expiry = req.fields.get("14")
    return ctx


# The vault ------------------------------------------------------------------------------------


def test_vault_keeps_no_clear_card_data() -> None:
    v = vault()
    record = v.lookup(TOKEN)
    assert record is not None
    assert record.masked_token == "489537******0015"
    assert record.masked_pan == "476173******0011"
    blob = repr(v) + repr(record) + repr(v._records) + repr(v.cipher)
    for secret in (TOKEN, FUNDING, FUNDING.encode().hex()):
        assert secret not in blob
    assert FUNDING.encode() not in record.sealed_pan
    assert v.funding_pan(TOKEN, record) == FUNDING
    assert v.lookup(FUNDING) is None  # a card number is not a token


def test_sealed_pan_is_bound_to_its_entry() -> None:
    v = vault()
    record = v.lookup(TOKEN)
    other = v.lookup(SUSPENDED)
    assert record is not None
    assert other is not None
    with pytest.raises(ValueError, match="authenticate"):
        v.funding_pan(TOKEN, other)  # another entry's sealed PAN does not open here
    tampered = dataclasses.replace(record, sealed_pan=record.sealed_pan[:-1] + b"\x00")
    with pytest.raises(ValueError, match="authenticate"):
        v.funding_pan(TOKEN, tampered)


def test_vault_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_VAULT_KEY", "11" * 32)
    a, b = PanCipher.from_env("TEST_VAULT_KEY"), PanCipher.from_env("TEST_VAULT_KEY")
    assert a.lookup_key(TOKEN) == b.lookup_key(TOKEN)
    assert b.open(a.seal(FUNDING, b"x"), b"x") == FUNDING
    monkeypatch.setenv("TEST_VAULT_KEY", "not hex")
    with pytest.raises(VaultKeyError):
        PanCipher.from_env("TEST_VAULT_KEY")
    monkeypatch.setenv("TEST_VAULT_KEY", "11" * 16)
    with pytest.raises(VaultKeyError):
        PanCipher.from_env("TEST_VAULT_KEY")
    monkeypatch.delenv("TEST_VAULT_KEY")
    random_a, random_b = PanCipher.from_env("TEST_VAULT_KEY"), PanCipher.from_env("TEST_VAULT_KEY")
    assert random_a.lookup_key(TOKEN) != random_b.lookup_key(TOKEN)


# The participant ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_detokenize_maps_then_restores_the_token() -> None:
    req = purchase(TOKEN, 100, expiry="2912")
    ctx = context(req)
    step = Detokenize(vault())
    with structlog.testing.capture_logs() as logs:
        assert await step.prepare(ctx) is None
    assert ctx.pan == FUNDING
    assert ctx.request.fields["2"] == FUNDING  # what risk, routing and the issuer see
    assert "14" not in ctx.request.fields  # the token's expiry is not the card's
    assert req.fields["2"] == TOKEN  # the terminal's message itself is untouched
    assert presented(ctx.request) is req
    assert presented(req) is req
    assert logs == [
        {
            "event": "detokenized",
            "log_level": "info",
            "rrn": "RRN000000001",
            "token": "489537******0015",
            "funding_pan": "476173******0011",
        }
    ]
    ctx.rc = "00"
    ctx.response = Message("0210", {**ctx.request.fields, "39": "00"})
    await step.commit(ctx)
    assert ctx.request is req
    assert ctx.response.fields["2"] == TOKEN
    await step.commit(ctx)  # idempotent
    assert ctx.response.fields["2"] == TOKEN


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("pan", "expiry", "rc"),
    [
        (SUSPENDED, None, "14"),
        (EXPIRED, None, "54"),
        (TOKEN, "2801", "54"),  # not the token's expiry
    ],
)
async def test_detokenize_declines(pan: str, expiry: str | None, rc: str) -> None:
    ctx = context(purchase(pan, 100, expiry=expiry))
    assert await Detokenize(vault()).prepare(ctx) == rc
    assert ctx.pan == pan  # nothing mapped


@pytest.mark.anyio
async def test_refund_and_reversal_of_a_suspended_token_go_through() -> None:
    step = Detokenize(vault())
    refund = context(purchase(SUSPENDED, 100, processing="200000"))
    assert await step.prepare(refund) is None
    assert refund.pan == FUNDING
    reversal = reversal_of(purchase(SUSPENDED, 100))
    ctx = context(reversal)
    assert await step.prepare(ctx) is None
    assert ctx.pan == FUNDING


@pytest.mark.anyio
async def test_token_in_track_2() -> None:
    req = purchase(TOKEN, 100)
    del req.fields["2"]
    req.fields["35"] = f"{TOKEN}=29121010000000000"
    ctx = Context(req, 0.0, 30.0, NOW, "RRN000000002")
    ctx.pan, ctx.expiry = TOKEN, "2912"
    step = Detokenize(vault())
    assert await step.prepare(ctx) is None
    assert ctx.request.fields["2"] == FUNDING
    assert "35" not in ctx.request.fields  # the token's track data stays here
    ctx.response = Message("0210", {"2": FUNDING, "39": "00"})
    await step.abort(ctx)
    assert "2" not in ctx.response.fields  # nothing echoed that the terminal did not send
    assert ctx.request.fields["35"].startswith(TOKEN)


@pytest.mark.anyio
async def test_not_a_token_goes_on_unchanged() -> None:
    req = purchase(FUNDING, 100)
    ctx = context(req)
    assert await Detokenize(vault()).prepare(ctx) is None
    assert ctx.request is req
    assert ctx.pan == FUNDING


# Over real sockets ----------------------------------------------------------------------------


@pytest.fixture
async def stack(pki_dir: Path) -> AsyncIterator[Stack]:
    data = demo_dataset()
    extra = (
        Token(token=SUSPENDED, pan=FUNDING, expiry="2912", status="suspended"),
        Token(token=EXPIRED, pan=FUNDING, expiry="2401"),
    )
    data = dataclasses.replace(data, tokens=(*data.tokens, *extra))
    async with running_stack(pki_dir, dataset=data) as s:
        yield s


@pytest.mark.anyio
async def test_token_contactless_purchase_debits_funding_and_echoes_token(stack: Stack) -> None:
    card = card_for(demo_dataset(), TOKEN, atc=1)  # the wallet, with the funding card's keys
    before = stack.account_balance("alpha", FUNDING)
    icc = card.icc_data(1250)
    req = purchase(
        TOKEN,
        1250,
        terminal_id="N0000001",
        merchant="M00000000000002",
        extra={"22": "071", "23": "000", "55": icc.encode().hex().upper()},
    )
    with structlog.testing.capture_logs() as logs:
        async with terminal(stack.port) as term:
            resp = await term.exchange(req)
            assert (resp.mti, resp["39"]) == ("0210", "00")
            assert resp["2"] == TOKEN  # never the funding PAN
            ok, note = card.check_issuer_auth(icc, resp.get("55"))
            assert ok, note
            assert stack.account_balance("alpha", FUNDING) == before - 1250

            # A retransmission gets the same answer, token included; nothing charged twice.
            again = await term.exchange(req)
            assert again["2"] == TOKEN
            assert again["37"] == resp["37"]
            assert stack.account_balance("alpha", FUNDING) == before - 1250

            # Its reversal (by token) gives the money back to the funding card.
            rev = await term.exchange(reversal_of(req))
            assert (rev.mti, rev["39"], rev["2"]) == ("0410", "00", TOKEN)
            assert stack.account_balance("alpha", FUNDING) == before
    # Logs: the token and the funding PAN appear masked only.
    text = repr(logs)
    assert FUNDING not in text
    assert TOKEN not in text
    assert "489537******0015" in text
    assert "476173******0011" in text


@pytest.mark.anyio
async def test_token_magstripe_purchase_and_token_declines(stack: Stack) -> None:
    before = stack.account_balance("alpha", FUNDING)
    async with terminal(stack.port) as term:
        resp = await term.exchange(purchase(TOKEN, 700, expiry="2912"))
        assert (resp["39"], resp["2"]) == ("00", TOKEN)
        assert stack.account_balance("alpha", FUNDING) == before - 700
        suspended = await term.exchange(purchase(SUSPENDED, 100))
        assert (suspended["39"], suspended["2"]) == ("14", SUSPENDED)
        expired = await term.exchange(purchase(EXPIRED, 100))
        assert (expired["39"], expired["2"]) == ("54", EXPIRED)
    assert stack.account_balance("alpha", FUNDING) == before - 700


def spy_issuer(server: IssuerServer) -> list[Message]:
    """Every request the issuer host sees from now on."""
    seen: list[Message] = []
    host = server.host
    handle = host.handle

    def spying(msg: Message, now: object) -> Message:
        seen.append(Message(msg.mti, dict(msg.fields)))
        return handle(msg, now)  # type: ignore[arg-type]

    host.handle = spying  # type: ignore[method-assign]
    return seen


@pytest.mark.anyio
async def test_token_purchase_with_online_pin_tpk_and_dukpt(stack: Stack) -> None:
    """The PIN pad forms the block with the token (the PAN it read); the issuer verifies the
    PIN with the funding PAN. Right PIN: 00; wrong PIN: the issuer's 55."""
    data = demo_dataset()
    pin = next(c.pin for c in data.cards if c.pan == FUNDING)
    alpha_zpk = data.issuer("alpha").zpk
    assert alpha_zpk is not None
    tpk_term, dukpt_term = terminal_of(data, "T0000001"), terminal_of(data, "N0000001")
    assert (tpk_term.key_mode, dukpt_term.key_mode) == ("tpk", "dukpt")
    seen = spy_issuer(stack.issuers["alpha"])
    before = stack.account_balance("alpha", FUNDING)
    ksn = INITIAL_KSN
    answers = []
    async with terminal(stack.port) as term:
        for term_cfg, entered, amount in (
            (tpk_term, pin, 1100),
            (tpk_term, "9999", 1200),
            (dukpt_term, pin, 1300),
            (dukpt_term, "9999", 1400),
        ):
            req = purchase(TOKEN, amount, terminal_id=term_cfg.id, merchant=term_cfg.merchant)
            if term_cfg.key_mode == "dukpt":
                ksn = pinpad.next_ksn(ksn)
            add_pin_block(req, term_cfg, entered, TOKEN, ksn)
            resp = await term.exchange(req)
            assert resp["2"] == TOKEN  # never the funding PAN
            answers.append(resp["39"])
            # The issuer got format 0 with the funding PAN under its ZPK, and no KSN.
            sent = [m for m in seen if m.mti == "0200"][-1]
            assert sent["2"] == FUNDING
            assert "53" not in sent
            assert (
                sent["52"]
                == pinpad.pin_block_under_tpk(alpha_zpk.key, entered, FUNDING).hex().upper()
            )
    assert answers == ["00", "55", "00", "55"]
    assert stack.account_balance("alpha", FUNDING) == before - 1100 - 1300
