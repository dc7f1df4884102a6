"""Contactless (22 = 071) end to end over real sockets: NFC terminal -> gateway -> issuer, the
issuer verifying the ARQC with the demo IMK-AC and answering tag 91 that the card verifies; and
stand-in verifying it at the HSM on the issuer's behalf while the issuer is down."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pyemv
import pytest
import structlog

from gateway.config import StandInConfig, StandInLimit
from gateway.flow.emv_check import CheckEmv
from gateway.flow.pipeline import Context
from issuer_sim.accounts import Account
from issuer_sim.emv import EmvAuthenticator
from loadtest import pos_sim
from loadtest.pos_sim import SimulatedCard, card_for
from protocols import emv
from protocols.message import Message
from tests.helpers import (
    DEMO_CONF,
    Stack,
    demo_dataset,
    eventually,
    purchase,
    running_stack,
    terminal,
)
from tests.integration.journal_support import write_conf

NFC = "N0000001"
NFC_MERCHANT = "M00000000000002"
BETA_CARDS = ("5413330000000019", "5413330000000027")


def contactless(
    card: SimulatedCard,
    amount: int,
    *,
    icc: emv.Tlv | None = None,
    psn: str | None = None,
    processing: str = "000000",
) -> tuple[Message, emv.Tlv]:
    icc = icc if icc is not None else card.icc_data(amount)
    req = purchase(
        card.pan,
        amount,
        terminal_id=NFC,
        merchant=NFC_MERCHANT,
        processing=processing,
        extra={"22": "071", "23": f"0{psn or card.psn}", "55": icc.encode().hex().upper()},
    )
    return req, icc


def flip_arqc_bit(icc: emv.Tlv) -> emv.Tlv:
    arqc = icc.get("9F26")
    assert arqc is not None
    forged = bytes([arqc[0] ^ 0x01]) + arqc[1:]
    return emv.Tlv((tag, forged if tag == "9F26" else value) for tag, value in icc.pairs())


def without(icc: emv.Tlv, tag: str) -> emv.Tlv:
    return emv.Tlv(pair for pair in icc.pairs() if pair[0] != tag)


# Units: the card's cryptogram and the issuer's check, no network -------------------------------


def test_card_arqc_matches_pyemv_and_issuer_verifies_it() -> None:
    data = demo_dataset()
    card = card_for(data, "5413330000000019", atc=7)
    icc = card.icc_data(1250, date=dt.date(2025, 1, 2), unpredictable=bytes.fromhex("01020304"))
    # pyemv as an independent oracle for option A, the common session key and the MAC.
    imk = bytes.fromhex(data.issuer("beta").imk_ac.key)  # type: ignore[union-attr]
    mk = pyemv.kd.derive_icc_mk_a(imk, "5413330000000019", "01")
    sk = pyemv.kd.derive_common_sk(mk, bytes.fromhex("0007") + bytes(6))
    expected = pyemv.ac.generate_ac(sk, emv.arqc_input(icc), pyemv.ac.PaddingType.EMV)
    assert icc.get("9F26") == expected

    auth = EmvAuthenticator.for_issuer(data, "beta")
    account = Account(pan=card.pan, expiry="2906", status="active", balance=1, pan_seq="01")
    req, _ = contactless(card, 1250, icc=icc)
    outcome = auth.authenticate(req, account)
    assert outcome is not None
    assert outcome.rc is None
    assert account.last_atc == 7
    tag91 = outcome.issuer_data("00")
    assert tag91 is not None
    ok, note = card.check_issuer_auth(icc, tag91)
    assert ok, note
    assert tag91.endswith("3030")
    assert pyemv.ac.generate_arpc_1(sk, expected, b"00").hex().upper() in tag91

    # The same cryptogram again: ATC replayed. No ARPC for it.
    again = auth.authenticate(req, account)
    assert again is not None
    assert again.rc == "05"
    assert "ATC" in again.reason
    assert again.issuer_data("05") is None


def test_issuer_refuses_amount_not_signed_by_the_card() -> None:
    data = demo_dataset()
    card = card_for(data, "5413330000000019", atc=3)
    req, _ = contactless(card, 1250)
    req["4"] = f"{999:012d}"  # the cryptogram signs 1250 in 9F02
    account = Account(pan=card.pan, expiry="2906", status="active", balance=1, pan_seq="01")
    outcome = EmvAuthenticator.for_issuer(data, "beta").authenticate(req, account)
    assert outcome is not None
    assert outcome.rc == "05"
    assert "9F02" in outcome.reason
    assert account.last_atc == -1  # nothing consumed


def test_issuer_without_imk_declines_cryptograms() -> None:
    data = demo_dataset()
    card = card_for(data, "5413330000000019")
    req, _ = contactless(card, 100)
    account = Account(pan=card.pan, expiry="2906", status="active", balance=1)
    outcome = EmvAuthenticator("gamma", None).authenticate(req, account)
    assert outcome is not None
    assert outcome.rc == "05"
    # A request without a cryptogram is not the authenticator's business.
    del req.fields["55"]
    assert EmvAuthenticator("gamma", None).authenticate(req, account) is None


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda r: r.fields.pop("55"), "field 55 missing"),
        (lambda r: r.fields.__setitem__("55", "9F2608AABB"), "truncated"),
        (lambda r: r.fields.__setitem__("55", without_hex(r["55"], "9F26")), "9F26"),
        (lambda r: r.fields.__setitem__("55", without_hex(r["55"], "9F1A")), "9F1A"),
    ],
)
async def test_check_emv_answers_30(change: object, reason: str) -> None:
    card = card_for(demo_dataset(), "5413330000000019")
    req, _ = contactless(card, 100)
    change(req)  # type: ignore[operator]
    ctx = Context(req, 0.0, 10.0, dt.datetime.now(dt.UTC), "RRN000000001")
    assert await CheckEmv().prepare(ctx) == "30"
    assert reason in ctx.reasons[0]


@pytest.mark.anyio
async def test_check_emv_lets_other_entry_modes_through() -> None:
    ctx = Context(purchase("4761730000000011", 100), 0.0, 10.0, dt.datetime.now(dt.UTC), "R")
    assert await CheckEmv().prepare(ctx) is None


def without_hex(f55: str, tag: str) -> str:
    return without(emv.decode(bytes.fromhex(f55)), tag).encode().hex().upper()


# Over real sockets ----------------------------------------------------------------------------


@pytest.fixture
async def stack(pki_dir: Path) -> AsyncIterator[Stack]:
    async with running_stack(pki_dir) as s:
        yield s


@pytest.mark.anyio
@pytest.mark.parametrize("pan", BETA_CARDS)
async def test_contactless_approved_with_verified_arpc(stack: Stack, pan: str) -> None:
    card = card_for(demo_dataset(), pan, atc=1)
    before = stack.account_balance("beta", pan)
    async with terminal(stack.port) as term:
        req, icc = contactless(card, 1250)
        resp = await term.exchange(req)
        assert (resp.mti, resp["39"]) == ("0210", "00")
        assert len(resp["38"]) == 6
        assert resp["2"] == pan
        ok, note = card.check_issuer_auth(icc, resp.get("55"))
        assert ok, note
        assert resp["55"].endswith("3030")  # ARC approved
        assert stack.account_balance("beta", pan) == before - 1250

        # The next tap (ATC 2) is approved too.
        req2, icc2 = contactless(card, 300)
        resp2 = await term.exchange(req2)
        assert resp2["39"] == "00"
        assert card.check_issuer_auth(icc2, resp2.get("55"))[0]
    assert stack.issuers["beta"].host.emv.verified == 2


@pytest.mark.anyio
async def test_flipped_arqc_bit_declined_05(stack: Stack) -> None:
    pan = BETA_CARDS[0]
    card = card_for(demo_dataset(), pan, atc=5)
    before = stack.account_balance("beta", pan)
    async with terminal(stack.port) as term:
        req, _ = contactless(card, 1250, icc=flip_arqc_bit(card.icc_data(1250)))
        resp = await term.exchange(req)
    assert resp["39"] == "05"
    assert "38" not in resp
    assert "55" not in resp  # no ARPC over a cryptogram that failed
    assert stack.account_balance("beta", pan) == before
    assert stack.issuers["beta"].host.emv.failed == 1


@pytest.mark.anyio
async def test_missing_9f26_is_format_error_30(stack: Stack) -> None:
    card = card_for(demo_dataset(), BETA_CARDS[1])
    seen = stack.issuers["beta"].by_mti.get("0200", 0)
    async with terminal(stack.port) as term:
        req, _ = contactless(card, 1250, icc=without(card.icc_data(1250), "9F26"))
        resp = await term.exchange(req)
        assert (resp.mti, resp["39"]) == ("0210", "30")
        no55, _ = contactless(card, 1250)
        del no55.fields["55"]
        assert (await term.exchange(no55))["39"] == "30"
    assert stack.issuers["beta"].by_mti.get("0200", 0) == seen  # never reached the issuer


@pytest.mark.anyio
async def test_atc_replay_and_lower_atc_declined(stack: Stack) -> None:
    pan = BETA_CARDS[0]
    data = demo_dataset()
    card = card_for(data, pan, atc=10)
    async with terminal(stack.port) as term:
        first_icc = card.icc_data(200)
        req, _ = contactless(card, 200, icc=first_icc)
        assert (await term.exchange(req))["39"] == "00"
        # A new message (new STAN) replaying the same cryptogram and ATC.
        replay, _ = contactless(card, 200, icc=first_icc)
        resp = await term.exchange(replay)
        assert resp["39"] == "05"
        assert "55" not in resp
        # A genuine cryptogram with a lower ATC (a cloned card lagging behind).
        clone = card_for(data, pan, atc=4)
        lower, _ = contactless(clone, 200)
        assert (await term.exchange(lower))["39"] == "05"
        # The card itself goes on.
        later, icc = contactless(card, 200)
        resp = await term.exchange(later)
        assert resp["39"] == "00"
        assert card.check_issuer_auth(icc, resp.get("55"))[0]


@pytest.mark.anyio
async def test_wrong_pan_sequence_declined(stack: Stack) -> None:
    card = card_for(demo_dataset(), BETA_CARDS[1], atc=1)
    async with terminal(stack.port) as term:
        req, _ = contactless(card, 100, psn="00")  # keys derive from PSN 01
        assert (await term.exchange(req))["39"] == "05"


@pytest.mark.anyio
async def test_declined_with_valid_arqc_carries_arc_3035(stack: Stack) -> None:
    pan = BETA_CARDS[1]
    card = card_for(demo_dataset(), pan, atc=1)
    balance = stack.account_balance("beta", pan)
    # above the no-CVM cap: a wallet with its consumer-device CVM (9F6C), so the issuer answers
    icc = card.icc_data(balance + 1).extended([("9F6C", bytes.fromhex("0080"))])
    async with terminal(stack.port) as term:
        req, _ = contactless(card, balance + 1, icc=icc)
        resp = await term.exchange(req)
    assert resp["39"] == "51"
    ok, note = card.check_issuer_auth(icc, resp.get("55"))
    assert ok, note
    assert resp["55"].endswith("3035")


@pytest.mark.anyio
async def test_pos_sim_contactless_command(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pan = BETA_CARDS[0]
    argv = [
        "contactless",
        "--port",
        str(stack.port),
        "--terminal",
        NFC,
        "--pan",
        pan,
        "--amount",
        "1250",
        "--data",
        str(DEMO_CONF / "data.toml"),
        "--atc-state",
        str(tmp_path / "atc.json"),
    ]
    before = stack.account_balance("beta", pan)
    for _ in range(2):  # the second run takes the next ATC from the state file
        assert await anyio.to_thread.run_sync(pos_sim.main, argv) == 0
        out = capsys.readouterr().out
        assert "response_code        00" in out
        assert "card: ARPC verified, ARC 3030" in out
        assert pan not in out
    assert stack.account_balance("beta", pan) == before - 2500
    assert "541333******0019/01" in (tmp_path / "atc.json").read_text()


# Stand-in: the issuer is down, the switch verifies the cryptogram on its behalf ---------------

TOKEN, FUNDING = "4895370000000015", "4761730000000011"  # alpha's card behind the wallet


@pytest.fixture
async def standin_stack(pki_dir: Path, tmp_path: Path) -> AsyncIterator[Stack]:
    standin = StandInConfig(limits=(StandInLimit(issuer="alpha", max_amount=5000, max_count=5),))
    async with running_stack(
        pki_dir, link_timeout=0.3, risk="", journal=write_conf(tmp_path), standin=standin
    ) as s:
        yield s


@pytest.mark.anyio
async def test_token_cryptogram_verified_in_stand_in(standin_stack: Stack) -> None:
    stack = standin_stack
    wallet = card_for(demo_dataset(), TOKEN, atc=40)  # the funding card's ICC keys
    stack.issuers["alpha"].stop()
    await eventually(lambda: not stack.gateway.pools["alpha"].ready)
    with structlog.testing.capture_logs() as logs:
        async with terminal(stack.port) as term:
            req, icc = contactless(wallet, 800, psn="00")
            req["2"] = TOKEN  # the wallet presents the token (its keys are the funding card's)
            resp = await term.exchange(req)
            assert (resp["39"], resp["2"]) == ("00", TOKEN)  # stood in, the token echoed
            assert resp["38"].startswith("S")
            ok, note = wallet.check_issuer_auth(icc, resp.get("55"))
            assert ok, note
            forged, _ = contactless(wallet, 800, icc=flip_arqc_bit(wallet.icc_data(800)), psn="00")
            forged["2"] = TOKEN
            assert (await term.exchange(forged))["39"] == "05"
    text = repr(logs)
    assert "stand_in_arqc_declined" in text
    assert FUNDING not in text
    assert TOKEN not in text
