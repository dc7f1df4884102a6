"""Stand-in over real sockets: approvals within limits while the issuer is down, declines beyond,
PIN verified at the HSM (PVV from track 2), chip and contactless cryptograms verified at the
HSM (KQ) with the issuer's IMK-AC, the circuit breaker, 0120 advices delivered when
the issuer is back, failover between two endpoints of one issuer, and limits in one currency
(the risk stage's rates, or only the stand-in currency without it)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import anyio
import pytest

from gateway.config import SafConfig, StandInConfig, StandInLimit
from gateway.flow.standin import _cryptogram
from gateway.journal import TxnState
from hsm_sim.issuer import derive_pvv
from loadtest.pos_sim import INITIAL_AES_KSN, add_pin_block, card_for, terminal_of
from protocols import emv
from protocols.message import Message
from tests.helpers import (
    Stack,
    demo_dataset,
    eventually,
    purchase,
    reversal_of,
    running_stack,
    terminal,
)
from tests.integration.journal_support import saf_depth, txn, write_conf
from tests.integration.test_contactless import BETA_CARDS, contactless, flip_arqc_bit, without

pytestmark = pytest.mark.anyio

PAN = "4761730000000011"  # alpha, PIN 1234
OTHER = "4761730000000060"  # alpha
FAST_SAF = SafConfig(reversal_delay=0.05, poll_interval=0.1, backoff_base=0.05, backoff_max=0.3)
LIMITS = StandInConfig(
    failure_threshold=2,
    cooldown=0.5,
    limits=(StandInLimit(issuer="alpha", max_amount=5000, max_count=2),),
)


def standin_stack(
    pki_dir: Path, tmp_path: Path, limits: StandInConfig = LIMITS, risk: str = ""
) -> AbstractAsyncContextManager[Stack]:
    """The stack stand-in tests run on: journal, fast SAF, short link timeout, no risk."""
    return running_stack(
        pki_dir,
        link_timeout=0.3,
        risk=risk,
        journal=write_conf(tmp_path),
        saf=FAST_SAF,
        standin=limits,
    )


@pytest.fixture
async def stack(pki_dir: Path, tmp_path: Path) -> AsyncIterator[Stack]:
    async with standin_stack(pki_dir, tmp_path) as s:
        yield s


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not await predicate():  # noqa: ASYNC110 - polls the journal, no event to wait on
            await anyio.sleep(0.02)


async def _alpha_down(stack: Stack) -> None:
    stack.issuers["alpha"].stop()
    await eventually(lambda: not stack.gateway.pools["alpha"].ready)


async def _saf_empty(stack: Stack) -> bool:
    return await saf_depth(stack.gateway, "alpha") == 0


async def test_stand_in_within_limits_then_advices_after_return(stack: Stack) -> None:
    alpha = stack.issuers["alpha"]
    before = {pan: stack.account_balance("alpha", pan) for pan in (PAN, OTHER)}
    await _alpha_down(stack)
    async with terminal(stack.port) as term:
        first = await term.exchange(purchase(PAN, 1000))
        second = await term.exchange(purchase(PAN, 1500))
        third = await term.exchange(purchase(PAN, 100))  # a third one: beyond the count
        big = await term.exchange(purchase(OTHER, 6000))  # beyond the amount
        refund = await term.exchange(purchase(OTHER, 100, processing="200000"))
    assert [r["39"] for r in (first, second, third, big, refund)] == ["00", "00", "91", "91", "91"]
    assert first["38"].startswith("S")
    assert (await txn(stack.gateway, first["37"])).state == TxnState.STOOD_IN
    assert await saf_depth(stack.gateway, "alpha") == 2
    assert stack.account_balance("alpha", PAN) == before[PAN]  # the issuer knows nothing yet

    await stack.restart_issuer("alpha")
    await until(lambda: _saf_empty(stack))
    assert stack.issuers["alpha"].host.advices_applied == 2
    assert stack.issuers["alpha"].by_mti.get("0120") == 2
    assert stack.account_balance("alpha", PAN) == before[PAN] - 2500
    assert stack.account_balance("alpha", OTHER) == before[OTHER]
    stored = await txn(stack.gateway, first["37"])
    assert (stored.state, stored.response_code, stored.note) == (TxnState.ADVISED, "00", "stand_in")
    assert alpha.host is stack.issuers["alpha"].host  # the same books across the restart


async def test_stand_in_limits_survive_a_restart(stack: Stack) -> None:
    await _alpha_down(stack)
    async with terminal(stack.port) as term:
        assert (await term.exchange(purchase(PAN, 2000)))["39"] == "00"
        assert (await term.exchange(purchase(PAN, 2000)))["39"] == "00"
    await stack.stop_gateway(graceful=True)
    await stack.start_gateway(wait_ready=False)  # alpha is still down
    async with terminal(stack.port) as term:
        resp = await term.exchange(purchase(PAN, 100))
    assert resp["39"] == "91"  # the count of the day came from the journal


async def test_reversal_of_a_stood_in_original_goes_after_its_advice(stack: Stack) -> None:
    before = stack.account_balance("alpha", PAN)
    await _alpha_down(stack)
    req = purchase(PAN, 1200)
    async with terminal(stack.port) as term:
        assert (await term.exchange(req))["39"] == "00"
        rev = await term.exchange(reversal_of(req))
    assert (rev.mti, rev["39"]) == ("0410", "00")
    assert await saf_depth(stack.gateway, "alpha") == 2  # the 0120, then the 0420
    server = await stack.restart_issuer("alpha")
    await until(lambda: _saf_empty(stack))
    assert (server.host.advices_applied, server.host.reversals_applied) == (1, 1)
    assert stack.account_balance("alpha", PAN) == before


async def test_breaker_opens_after_timeouts_and_closes_after_a_probe(stack: Stack) -> None:
    alpha = stack.issuers["alpha"]
    alpha.faults.drop_ratio = 1.0
    async with terminal(stack.port) as term:
        for amount in (10, 11):
            assert (await term.exchange(purchase(OTHER, amount)))["39"] == "91"
        sent = alpha.by_mti.get("0200", 0)
        stood = await term.exchange(purchase(PAN, 12))  # open: answered without the issuer
        assert stood["39"] == "00"
        assert alpha.by_mti.get("0200", 0) == sent
        assert stack.gateway.standin is not None
        assert stack.gateway.standin.breaker("alpha").state(anyio.current_time()) == "open"
        alpha.faults.drop_ratio = 0.0
        await anyio.sleep(0.6)  # the cool-down
        probe = await term.exchange(purchase(OTHER, 13))
        assert probe["39"] == "00"
        assert alpha.by_mti.get("0200", 0) == sent + 1
        assert stack.gateway.standin.breaker("alpha").state(anyio.current_time()) == "closed"
    await until(lambda: _saf_empty(stack))  # two 0420s and the 0120


def _track2_request(
    pan: str, pin: str, amount: int, terminal_id: str = "T0000001", ksn: str | None = None
) -> Message:
    data = demo_dataset()
    pvk = next(i.pvk for i in data.issuers if i.id == "alpha")
    assert pvk is not None
    pvv = derive_pvv(pvk.key, pan, "1234", "1")
    term = terminal_of(data, terminal_id)
    req = purchase(pan, amount, terminal_id=term.id, merchant=term.merchant)
    del req.fields["2"]
    req.fields["35"] = f"{pan}=28121011{pvv}00000"
    add_pin_block(req, term, pin, pan, ksn)
    return req


async def test_stand_in_verifies_the_pin_at_the_hsm(stack: Stack) -> None:
    await _alpha_down(stack)
    async with terminal(stack.port) as term:
        good = await term.exchange(_track2_request(PAN, "1234", 100))
        wrong = await term.exchange(_track2_request(PAN, "9999", 100))
        no_pvv = purchase(PAN, 100)
        add_pin_block(no_pvv, terminal_of(demo_dataset(), "T0000001"), "1234", PAN)
        unverifiable = await term.exchange(no_pvv)
        # An AES DUKPT terminal's PIN (field 123, no 52) is checked the same way.
        ksn = INITIAL_AES_KSN[:-1]
        aes_good = await term.exchange(_track2_request(PAN, "1234", 100, "T0000003", ksn + "1"))
        aes_wrong = await term.exchange(_track2_request(PAN, "9999", 100, "T0000003", ksn + "2"))
    assert (good["39"], wrong["39"], unverifiable["39"]) == ("00", "55", "91")
    assert (aes_good["39"], aes_wrong["39"]) == ("00", "55")


async def test_failover_to_the_second_endpoint(pki_dir: Path, tmp_path: Path) -> None:
    async with running_stack(
        pki_dir,
        link_timeout=0.5,
        risk="",
        journal=write_conf(tmp_path),
        saf=FAST_SAF,
        standin=LIMITS,
        replicas={"alpha": 1},
    ) as stack:
        before = stack.account_balance("alpha", PAN)
        primary, replica = stack.issuers["alpha"], stack.replicas["alpha"][0]
        primary.stop()  # the first endpoint dies; the links move to the second
        pool = stack.gateway.pools["alpha"]
        await eventually(
            lambda: all(c.up and c.endpoint.endswith(f":{replica.port}") for c in pool.connections)
        )
        async with terminal(stack.port) as term:
            resp = await term.exchange(purchase(PAN, 321))
        assert resp["39"] == "00"
        assert not resp["38"].startswith("S")  # the issuer answered, not stand-in
        assert replica.by_mti.get("0200") == 1
        assert stack.account_balance("alpha", PAN) == before - 321


# Chip and contactless in stand-in: the ARQC verified at the HSM with the issuer's IMK-AC ------

CHIP_LIMITS = StandInConfig(
    failure_threshold=2,
    cooldown=0.5,
    limits=(StandInLimit(issuer="beta", max_amount=50000, max_count=10),),
)
BETA_CARD = BETA_CARDS[0]


@pytest.fixture
async def chip_stack(pki_dir: Path, tmp_path: Path) -> AsyncIterator[Stack]:
    async with standin_stack(pki_dir, tmp_path, CHIP_LIMITS) as s:
        yield s


async def _beta_down(stack: Stack) -> None:
    stack.issuers["beta"].stop()
    await eventually(lambda: not stack.gateway.pools["beta"].ready)


async def test_stand_in_verifies_the_arqc_and_answers_tag_91(chip_stack: Stack) -> None:
    stack = chip_stack
    card = card_for(demo_dataset(), BETA_CARD, atc=20)
    await _beta_down(stack)
    async with terminal(stack.port) as term:
        req, icc = contactless(card, 1250)
        good = await term.exchange(req)
        assert (good["39"], good["38"][:1]) == ("00", "S")
        ok, note = card.check_issuer_auth(icc, good.get("55"))
        assert ok, note
        assert good["55"].endswith("3030")
        assert (await txn(stack.gateway, good["37"])).state == TxnState.STOOD_IN
        assert await saf_depth(stack.gateway, "beta") == 1

        forged, _ = contactless(card, 1250, icc=flip_arqc_bit(card.icc_data(1250)))
        bad = await term.exchange(forged)
        assert bad["39"] == "05"
        assert "38" not in bad  # no approval
        assert "55" not in bad  # and no ARPC over a forgery

        replay, _ = contactless(card, 1250, icc=icc)  # a new STAN, the same cryptogram and ATC
        replayed = await term.exchange(replay)
        assert (replayed["39"], "55" in replayed) == ("05", False)

        unsigned, _ = contactless(card, 1250)
        unsigned["4"] = f"{99:012d}"  # the card signed 1250 in 9F02
        assert (await term.exchange(unsigned))["39"] == "05"

        later, icc2 = contactless(card, 300)  # the card goes on with its next ATC
        resp = await term.exchange(later)
        assert resp["39"] == "00"
        assert card.check_issuer_auth(icc2, resp.get("55"))[0]
    assert await saf_depth(stack.gateway, "beta") == 2  # 0120s of the two approvals only
    standin = stack.gateway.standin
    assert standin is not None
    assert (standin.approved, standin.arqc_verified, standin.arqc_failed) == (2, 2, 3)


async def test_stand_in_cannot_verify_the_arqc_91(chip_stack: Stack) -> None:
    stack = chip_stack
    card = card_for(demo_dataset(), BETA_CARD, atc=30)
    standin = stack.gateway.standin
    assert standin is not None
    assert stack.hsm is not None
    await _beta_down(stack)
    async with terminal(stack.port) as term:
        stack.hsm.stop()
        no_hsm = await term.exchange(contactless(card, 500)[0])
        assert (no_hsm["39"], "38" in no_hsm, "55" in no_hsm) == ("91", False, False)
        imk = standin.imk_acs.pop("beta")
        try:
            await stack.hsm.start(stack.task_group)
            no_imk = await term.exchange(contactless(card, 500)[0])
            assert no_imk["39"] == "91"
        finally:
            standin.imk_acs["beta"] = imk
        again = await term.exchange(contactless(card, 500)[0])  # HSM back, key back
        assert again["39"] == "00"
    assert await saf_depth(stack.gateway, "beta") == 1
    assert standin.arqc_failed == 0  # nothing above was a wrong cryptogram


async def test_stand_in_atc_guard_survives_a_restart_and_the_issuer_learns_it(
    chip_stack: Stack,
) -> None:
    """The replay guard reads a card's last ATC from the journal when the process has not
    seen the card (the 0120 carries field 55); the issuer moves its ATC on from the 0120."""
    stack = chip_stack
    card = card_for(demo_dataset(), BETA_CARD, atc=40)
    await _beta_down(stack)
    async with terminal(stack.port) as term:
        req, icc = contactless(card, 600)
        assert (await term.exchange(req))["39"] == "00"  # stood in, ATC 40
    await stack.stop_gateway(graceful=True)
    await stack.start_gateway(wait_ready=False)  # beta is still down
    async with terminal(stack.port) as term:
        replay, _ = contactless(card, 600, icc=icc)  # a new STAN, the same cryptogram
        replayed = await term.exchange(replay)
        assert (replayed["39"], "55" in replayed) == ("05", False)
        nxt, _ = contactless(card, 400)  # ATC 41
        assert (await term.exchange(nxt))["39"] == "00"
    standin = stack.gateway.standin
    assert standin is not None
    assert (standin.approved, standin.arqc_failed) == (1, 1)  # counters of the new process
    # Beta comes back and takes both 0120s; its card record now stands at ATC 41.
    await stack.restart_issuer("beta")
    await until(lambda: _saf_empty_of(stack, "beta"))
    account = stack.issuers["beta"].host.book.find(card.pan)
    assert account is not None
    assert account.last_atc == 41


async def _saf_empty_of(stack: Stack, issuer: str) -> bool:
    return await saf_depth(stack.gateway, issuer) == 0


def test_stand_in_field_55_parsing() -> None:
    card = card_for(demo_dataset(), BETA_CARD, atc=3)
    icc = card.icc_data(700)
    found = _cryptogram(icc.encode().hex())
    assert found is not None
    assert (found.amount, found.atc, found.arqc) == (700, b"\x00\x03", icc.get("9F26"))
    assert _cryptogram(without(icc, "9F26").encode().hex()) is None
    with pytest.raises(emv.TlvError):
        _cryptogram(without(icc, "9F36").encode().hex())
    with pytest.raises(emv.TlvError, match="truncated"):
        _cryptogram("9F2608AABB")
    with pytest.raises(ValueError, match="non-hexadecimal"):
        _cryptogram("not hex")
    with pytest.raises(ValueError, match="8 bytes"):
        _cryptogram("9F2602AABB")


# Limits in one currency --------------------------------------------------------------------

CCY_LIMITS = StandInConfig(
    failure_threshold=2,
    cooldown=0.5,
    limits=(StandInLimit(issuer="alpha", max_amount=50_000, max_count=10),),
)
USD, JPY, EUR = "840", "392", "978"


def _risk_conf(tmp_path: Path, rates: str) -> Path:
    """Risk limits in CNY (156) with ``rates``, and nothing else that could decline."""
    path = tmp_path / "risk.toml"
    path.write_text(
        f'pan_hash_key = "{"ab" * 32}"\nlimit_currency = "156"\n'
        f"[score]\nenabled = false\n[rates]\n{rates}\n"
    )
    return path


DEMO_RATES = '"840" = 7.1\n"392" = 0.048'  # fen per cent: 7.1; per yen: 4.8


def _in(amount: int, currency: str, pan: str = PAN) -> Message:
    return purchase(pan, amount, extra={"49": currency})


async def test_stand_in_limits_count_other_currencies_converted_with_the_risk_rates(
    pki_dir: Path, tmp_path: Path
) -> None:
    risk = _risk_conf(tmp_path, DEMO_RATES)
    async with standin_stack(pki_dir, tmp_path, CCY_LIMITS, str(risk)) as stack:
        await _alpha_down(stack)
        async with terminal(stack.port) as term:
            assert (await term.exchange(_in(40_000, "156")))["39"] == "00"
            # 20.00 USD = 14,200 fen: over the 50,000 (as raw numbers it was 42,000)
            assert (await term.exchange(_in(2_000, USD)))["39"] == "91"
            # 2,000 JPY = 9,600 fen: 49,600, within
            assert (await term.exchange(_in(2_000, JPY)))["39"] == "00"
            # the risk stage refuses a currency without a rate before stand-in sees it
            assert (await term.exchange(_in(1, EUR)))["39"] == "12"
            assert (await term.exchange(_in(400, "156")))["39"] == "00"  # 50,000 exactly
            assert (await term.exchange(_in(1, "156")))["39"] == "91"
        assert await saf_depth(stack.gateway, "alpha") == 3


async def test_stand_in_converts_at_the_rates_of_the_moment(pki_dir: Path, tmp_path: Path) -> None:
    """Stand-in asks the risk engine at use time: a rate reloaded (SIGHUP, /admin/reload)
    applies to the next stand-in amount."""
    risk = _risk_conf(tmp_path, DEMO_RATES)
    async with standin_stack(pki_dir, tmp_path, CCY_LIMITS, str(risk)) as stack:
        await _alpha_down(stack)
        async with terminal(stack.port) as term:
            assert (await term.exchange(_in(1_000, USD)))["39"] == "00"  # 7,100 fen
            _risk_conf(tmp_path, '"840" = 71')
            assert stack.gateway.reload_risk()["reloaded"] is True
            assert (await term.exchange(_in(1_000, USD)))["39"] == "91"  # 71,000 fen
            assert (await term.exchange(_in(42_900, "156")))["39"] == "00"  # 50,000
        assert await saf_depth(stack.gateway, "alpha") == 2


async def test_stand_in_usage_from_the_journal_is_converted_after_a_restart(
    pki_dir: Path, tmp_path: Path
) -> None:
    risk = _risk_conf(tmp_path, DEMO_RATES)
    async with standin_stack(pki_dir, tmp_path, CCY_LIMITS, str(risk)) as stack:
        await _alpha_down(stack)
        async with terminal(stack.port) as term:
            assert (await term.exchange(_in(30_000, "156")))["39"] == "00"
            assert (await term.exchange(_in(2_000, USD)))["39"] == "00"  # 14,200 fen: 44,200
        await stack.stop_gateway(graceful=True)
        await stack.start_gateway(wait_ready=False)  # alpha is still down
        async with terminal(stack.port) as term:
            assert (await term.exchange(_in(6_000, "156")))["39"] == "91"  # 50,200
            assert (await term.exchange(_in(5_000, "156")))["39"] == "00"  # 49,200
        # A day's row in a currency whose rate is gone: its usage is unknown, so no stand-in.
        await stack.stop_gateway(graceful=True)
        _risk_conf(tmp_path, '"392" = 0.048')
        await stack.start_gateway(wait_ready=False)
        async with terminal(stack.port) as term:
            assert (await term.exchange(_in(100, "156")))["39"] == "91"  # 49,300 with the rate
        assert await saf_depth(stack.gateway, "alpha") == 3


async def test_stand_in_without_risk_only_in_its_limit_currency(stack: Stack) -> None:
    """No risk stage, no rates: stand-in approves in ``[standin] limit_currency`` (156) only."""
    await _alpha_down(stack)
    async with terminal(stack.port) as term:
        assert (await term.exchange(_in(1_000, USD)))["39"] == "91"
        assert (await term.exchange(_in(1_000, JPY)))["39"] == "91"
        assert (await term.exchange(_in(1_000, "156")))["39"] == "00"
    assert await saf_depth(stack.gateway, "alpha") == 1
