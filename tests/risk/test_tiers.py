"""Limits that know how the payer was verified: the contactless no-CVM cap and the QR tiers,
on both counter backends."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.risk import ConfigError, RiskConfig, RiskEngine, config_from_mapping
from gateway.risk.rules import PIN_REQUIRED, QR_COUNTER
from gateway.risk.verification import Cvm, QrVerification
from tests.risk.conftest import CARD, KEY_HEX, T0, Stores, base_config, txn

pytestmark = pytest.mark.anyio
# usage()[0] is the QR day total (the count beside it is the card's, whatever the channel).

TIERS = {"static": 50_000, "one_factor": 100_000, "two_factor": 500_000}
CONTACTLESS = {
    "no_cvm_max_amount": 100_000,
    "no_cvm_limits": [
        {"currency": "840", "max_amount": 10_000},  # USD cents, USD taps only
        {"mcc": "4111", "max_amount": 200_000},  # transit: CNY 2,000
    ],
}


def config(**overrides: Any) -> RiskConfig:
    values: dict[str, Any] = {
        "velocity": None,
        "contactless": CONTACTLESS,
        "qr_tiers": TIERS,
    }
    return base_config(**(values | overrides))


def qr(dynamic: bool = True, *factors: str) -> QrVerification:
    return QrVerification(dynamic, frozenset(factors))


async def test_no_cvm_tap_over_the_cap_is_65_pin_required(stores: Stores) -> None:
    async with stores.engine(config()) as engine:
        decision = await engine.assess(txn(amount=100_001, cvm=Cvm.NONE))
        assert decision.rc == "65"
        (hit,) = decision.hits
        assert (hit.name, hit.value, hit.threshold, hit.detail) == (
            "no_cvm_cap",
            100_001,
            100_000,
            PIN_REQUIRED,
        )
        assert decision.reservation is None
        assert await engine.usage(CARD, "156", T0) == (0, 0)
        # the cap itself, the retry with a PIN, a consumer-device CVM, a card not tapped
        for cvm, amount in ((Cvm.NONE, 100_000), (Cvm.ONLINE_PIN, 100_001)):
            assert (await engine.assess(txn(amount=amount, cvm=cvm))).rc is None
        for other in (Cvm.DEVICE, Cvm.SIGNATURE, None):
            assert (await engine.assess(txn(amount=100_001, cvm=other))).rc is None


async def test_no_cvm_caps_per_currency_and_mcc(stores: Stores) -> None:
    async with stores.engine(config()) as engine:
        # USD: its own cap in cents, not the base converted
        assert (await engine.assess(txn(amount=10_000, currency="840", cvm=Cvm.NONE))).rc is None
        usd = await engine.assess(txn(amount=10_001, currency="840", cvm=Cvm.NONE))
        assert (usd.rc, usd.hits[0].threshold) == ("65", 10_000)
        # transit MCC: CNY 2,000
        assert (await engine.assess(txn(amount=200_000, mcc="4111", cvm=Cvm.NONE))).rc is None
        assert (await engine.assess(txn(amount=200_001, mcc="4111", cvm=Cvm.NONE))).rc == "65"


async def test_a_harder_limit_wins_over_the_soft_decline(stores: Stores) -> None:
    async with stores.engine(config(max_single_amount=150_000)) as engine:
        decision = await engine.assess(txn(amount=150_001, cvm=Cvm.NONE))
        assert decision.rc == "61"  # a PIN would not help: the single amount answers
        assert [h.name for h in decision.hits] == ["single_amount", "no_cvm_cap"]


async def test_static_code_payer_refused_past_the_static_cap(stores: Stores) -> None:
    async with stores.engine(config()) as engine:
        for i, amount in enumerate((30_000, 20_000)):
            decision = await engine.assess(txn(i, amount=amount, qr=qr(False, "password")))
            assert decision.rc is None
            await engine.confirm(decision)
        payment = qr(False, "password", "biometric")
        decision = await engine.assess(txn(2, amount=100, qr=payment))
        assert decision.rc == "61"
        assert [(h.name, h.value, h.threshold) for h in decision.hits] == [
            ("qr_tier", 50_100, 50_000)
        ]
        assert payment.step_up is None  # a static code stays static: no step-up
        assert (await engine.usage(CARD, QR_COUNTER, T0))[0] == 50_000


async def test_one_factor_over_its_tier_gets_an_otp_step_up(stores: Stores) -> None:
    async with stores.engine(config()) as engine:
        first = await engine.assess(txn(1, amount=80_000, qr=qr(True, "password")))
        assert first.rc is None
        await engine.confirm(first)
        payment = qr(True, "password")
        over = await engine.assess(txn(2, amount=30_000, qr=payment))
        assert over.rc == "61"
        assert payment.step_up == "otp"
        assert await engine.usage(CARD, "156", T0) == (80_000, 1)  # nothing held
        stepped = payment.with_factor("otp")
        again = await engine.assess(txn(3, amount=30_000, qr=stepped))
        assert again.rc is None
        assert stepped.step_up is None
        assert (await engine.usage(CARD, QR_COUNTER, T0))[0] == 110_000
        # the issuer declines: the QR day gives back with the card's
        await engine.release(again)
        assert (await engine.usage(CARD, QR_COUNTER, T0))[0] == 80_000
        assert await engine.usage(CARD, "156", T0) == (80_000, 1)


async def test_no_step_up_when_otp_cannot_lift_it(stores: Stores) -> None:
    async with stores.engine(config()) as engine:
        none = qr(True)  # OTP alone is one factor: still the one-factor cap
        assert (await engine.assess(txn(1, amount=100_001, qr=none))).rc == "61"
        assert none.step_up is None
        two = qr(True, "password", "biometric")
        assert (await engine.assess(txn(2, amount=500_001, qr=two))).rc == "61"
        assert two.step_up is None  # OTP makes three factors, the same tier
        beyond = qr(True, "password")  # OTP lifts it to 5,000, not to 6,000
        assert (await engine.assess(txn(3, amount=600_000, qr=beyond))).rc == "61"
        assert beyond.step_up is None
        certified = qr(True, "biometric", "device_certificate")
        assert (await engine.assess(txn(4, amount=4_000_000, qr=certified))).rc is None


async def test_card_limit_decline_gives_the_qr_day_back(stores: Stores) -> None:
    async with stores.engine(config(daily_amount_per_card=60_000)) as engine:
        decision = await engine.assess(txn(1, amount=70_000, qr=qr(True, "password")))
        assert decision.rc == "61"
        assert [h.name for h in decision.hits] == ["daily_amount"]
        assert (await engine.usage(CARD, QR_COUNTER, T0))[0] == 0


async def test_two_engines_share_the_qr_day(redis_stores: Stores) -> None:
    async with redis_stores.engine(config()) as one, redis_stores.engine(config()) as two:
        assert (await one.assess(txn(1, amount=40_000, qr=qr(False)))).rc is None
        assert (await two.assess(txn(2, amount=10_000, qr=qr(False)))).rc is None
        assert (await one.assess(txn(3, amount=1, qr=qr(False)))).rc == "61"


def test_config_refuses_bad_caps() -> None:
    with pytest.raises(ConfigError, match="no_cvm_limits"):
        config_from_mapping(
            {"pan_hash_key": KEY_HEX, "contactless": {"no_cvm_limits": [{"max_amount": 1}]}}
        )
    with pytest.raises(ConfigError, match=r"qr_tiers\.static"):
        config_from_mapping({"pan_hash_key": KEY_HEX, "qr_tiers": {"static": -1}})


async def test_tier_declines_counted_by_tier(stores: Stores) -> None:
    registry = CollectorRegistry()
    engine = RiskEngine(config(), store=stores.new(), registry=registry)
    async with engine:
        assert (await engine.assess(txn(1, amount=100_001, cvm=Cvm.NONE))).rc == "65"
        assert (await engine.assess(txn(2, amount=50_001, qr=qr(False)))).rc == "61"
        one = qr(True, "password")  # an OTP would lift it: the engine declines all the same
        assert (await engine.assess(txn(3, amount=100_001, qr=one))).rc == "61"
        assert (await engine.assess(txn(4, amount=100_001, cvm=Cvm.ONLINE_PIN))).rc is None
        assert (await engine.assess(txn(5, amount=5_000_001))).rc == "61"  # not a tier's

    def declines(tier: str) -> float | None:
        return registry.get_sample_value("payswitch_risk_tier_declines_total", {"tier": tier})

    assert [declines(t) for t in ("no_cvm", "static", "one_factor", "two_factor")] == [
        1.0,
        1.0,
        1.0,
        None,
    ]
