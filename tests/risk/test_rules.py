"""Each rule gives its response code, on both counter backends; actions; applicability."""

from __future__ import annotations

from datetime import timedelta

import pytest

from gateway.risk import RiskEngine, TxnKind, card_key
from tests.risk.conftest import CARD, KEY, T0, Stores, base_config, txn

pytestmark = pytest.mark.anyio


async def test_clean_purchase_goes_on_and_reserves(stores: Stores) -> None:
    async with stores.engine() as engine:
        decision = await engine.assess(txn())
        assert decision.rc is None
        assert decision.hits == ()
        assert decision.reservation is not None
        assert await engine.usage(CARD, "156", T0) == (10_000, 1)
        await engine.confirm(decision)
        assert await engine.usage(CARD, "156", T0) == (10_000, 1)


async def test_single_amount_61(stores: Stores) -> None:
    async with stores.engine() as engine:
        decision = await engine.assess(txn(amount=5_000_001))
        assert decision.rc == "61"
        (hit,) = decision.hits
        assert (hit.name, hit.value, hit.threshold) == ("single_amount", 5_000_001, 5_000_000)
        assert decision.reservation is None
        assert (await engine.assess(txn(amount=5_000_000))).rc is None
        # in the limit currency: 704,225 cents at 7.1 are 4,999,997.5 -> 4,999,998 fen
        assert (await engine.assess(txn(amount=704_225, currency="840"))).rc is None
        assert await engine.usage(CARD, "156", T0) == (9_999_998, 2)


async def test_daily_amount_61_and_declines_add_nothing(stores: Stores) -> None:
    async with stores.engine(base_config(velocity=None)) as engine:
        for i in range(2):
            assert (await engine.assess(txn(i, amount=4_000_000))).rc is None
        decision = await engine.assess(txn(amount=2_000_001))
        assert decision.rc == "61"
        assert [h.name for h in decision.hits] == ["daily_amount"]
        assert decision.hits[0].value == 10_000_001
        assert await engine.usage(CARD, "156", T0) == (8_000_000, 2)
        # what still fits is approved: the decline added nothing
        assert (await engine.assess(txn(amount=2_000_000))).rc is None
        assert await engine.usage(CARD, "156", T0) == (10_000_000, 3)


async def test_daily_count_65(stores: Stores) -> None:
    async with stores.engine(base_config(daily_count_per_card=3, velocity=None)) as engine:
        for i in range(3):
            assert (await engine.assess(txn(i, now=T0 + timedelta(minutes=i)))).rc is None
        decision = await engine.assess(txn(now=T0 + timedelta(minutes=5)))
        assert decision.rc == "65"
        assert [(h.name, h.value, h.threshold) for h in decision.hits] == [("daily_count", 4, 3)]


async def test_velocity_65_counts_declined_attempts(stores: Stores) -> None:
    async with stores.engine() as engine:
        # five attempts declined by another rule (blocked MCC) still count as attempts
        for i in range(5):
            d = await engine.assess(txn(i, mcc="7995", now=T0 + timedelta(seconds=i)))
            assert d.rc == "57"
        decision = await engine.assess(txn(now=T0 + timedelta(seconds=10)))
        assert decision.rc == "65"
        assert [(h.name, h.value, h.threshold) for h in decision.hits] == [("velocity", 6, 5)]
        assert await engine.usage(CARD, "156", T0) == (0, 0)
        # the window slides: 60 s after the first attempts, they no longer count
        later_ok = await engine.assess(txn(now=T0 + timedelta(seconds=65)))
        assert later_ok.rc is None


async def test_blocked_mcc_57(stores: Stores) -> None:
    async with stores.engine() as engine:
        decision = await engine.assess(txn(mcc="7995"))
        assert decision.rc == "57"
        assert decision.hits[0].name == "blocked_mcc"


async def test_pan_blacklist_59_by_keyed_hash(stores: Stores) -> None:
    bad = "4761730000000052"
    config = base_config(blacklist_pan_hashes=[card_key(bad, KEY)])
    async with stores.engine(config) as engine:
        decision = await engine.assess(txn(pan=bad))
        assert decision.rc == "59"
        assert decision.hits[0].name == "pan_blacklist"
        assert decision.hits[0].value == "476173******0052"
        # the blacklist applies to requests that do not count too (balance inquiry)
        inquiry = await engine.assess(
            txn(pan=bad, amount=0, counts=False, kind=TxnKind.BALANCE_INQUIRY)
        )
        assert inquiry.rc == "59"
        assert (await engine.assess(txn())).rc is None


async def test_terminal_and_merchant_blacklists_59(stores: Stores) -> None:
    config = base_config(blacklist_terminals=["T0000009"], blacklist_merchants=["M9"])
    async with stores.engine(config) as engine:
        d1 = await engine.assess(txn(1, terminal_id="T0000009"))
        d2 = await engine.assess(txn(2, merchant_id="M9"))
        assert (d1.rc, d1.hits[0].name) == ("59", "terminal_blacklist")
        assert (d2.rc, d2.hits[0].name) == ("59", "merchant_blacklist")


async def test_impossible_travel_59(stores: Stores) -> None:
    async with stores.engine() as engine:
        assert (await engine.assess(txn(1))).rc is None
        tokyo = txn(2, merchant_country="392", now=T0 + timedelta(minutes=30))
        decision = await engine.assess(tokyo)
        assert decision.rc == "59"
        (hit,) = decision.hits
        assert (hit.name, hit.value, hit.threshold) == ("impossible_travel", 30.0, 60)
        assert hit.detail == "seen in 156, now in 392"
        # outside the window the card may travel
        far = txn(3, merchant_country="392", now=T0 + timedelta(minutes=200))
        assert (await engine.assess(far)).rc is None


async def test_score_decline_59_with_signals(stores: Stores) -> None:
    config = base_config(
        score={"enabled": True, "mcc_points": {"4829": 60}, "night_points": 25},
    )
    night = T0.replace(hour=18)  # 02:00 in Shanghai
    async with stores.engine(config) as engine:
        decision = await engine.assess(txn(mcc="4829", now=night))
        assert decision.rc == "59"
        names = {h.name: h for h in decision.hits}
        assert names["mcc_risk"].points == 60
        assert names["night_time"].value == "02:00"
        assert names["score"].value == 85
        assert names["score"].threshold == 80
        assert decision.score == 85
        # the reservation made before the score was given back
        assert decision.reservation is None
        assert await engine.usage(CARD, "156", night) == (0, 0)


async def test_score_amount_deviation_and_new_country(stores: Stores) -> None:
    config = base_config(impossible_travel_minutes=None, score={"enabled": True})
    async with stores.engine(config) as engine:
        for i in range(6):
            d = await engine.assess(txn(i, amount=10_000 + 100 * i, now=T0 + timedelta(hours=i)))
            assert d.rc is None
            await engine.confirm(d)
        odd = txn(9, amount=200_000, merchant_country="392", now=T0 + timedelta(hours=7))
        decision = await engine.assess(odd)
        names = {h.name: h for h in decision.hits}
        assert names["amount_deviation"].threshold == 3.0
        assert float(names["amount_deviation"].value) > 100
        assert names["new_country"].value == "392"
        assert names["score"].action == "alert"
        assert decision.rc is None  # 60 points: alert, not decline
        assert engine.recent_alerts()[0]["event"] == "risk.alert"


async def test_alert_only_rules_report_and_go_on(stores: Stores) -> None:
    config = base_config(
        daily_amount_per_card=15_000,
        actions={"daily_amount": "alert", "blocked_mcc": "alert", "impossible_travel": "alert"},
    )
    async with stores.engine(config) as engine:
        assert (await engine.assess(txn(1))).rc is None
        decision = await engine.assess(
            txn(2, mcc="7995", merchant_country="392", now=T0 + timedelta(minutes=1))
        )
        assert decision.rc is None
        assert {h.name: h.action for h in decision.hits} == {
            "blocked_mcc": "alert",
            "impossible_travel": "alert",
            "daily_amount": "alert",
        }
        # alert-only: the amount was reserved anyway
        assert decision.reservation is not None
        assert await engine.usage(CARD, "156", T0) == (20_000, 2)
        (event,) = engine.recent_alerts()
        assert event["rules"] == ["blocked_mcc", "impossible_travel", "daily_amount"]


async def test_precedence_of_codes(stores: Stores) -> None:
    config = base_config(blacklist_pan_hashes=[CARD])
    async with stores.engine(config) as engine:
        decision = await engine.assess(txn(mcc="7995", amount=9_000_000))
        assert decision.rc == "59"
        assert [h.name for h in decision.hits] == ["pan_blacklist", "blocked_mcc", "single_amount"]


async def test_not_counted_requests_skip_limits(stores: Stores) -> None:
    async with stores.engine(base_config(daily_count_per_card=1)) as engine:
        assert (await engine.assess(txn(1))).rc is None
        refund = await engine.assess(
            txn(2, amount=9_000_000, mcc="7995", counts=False, kind=TxnKind.REFUND)
        )
        assert refund.rc is None
        assert refund.reservation is None
        inquiry = await engine.assess(
            txn(3, amount=0, mcc="7995", counts=False, kind=TxnKind.BALANCE_INQUIRY)
        )
        assert inquiry.rc == "57"  # MCC blocks everything but refunds
        assert await engine.usage(CARD, "156", T0) == (10_000, 1)


async def test_overrides_layered(stores: Stores) -> None:
    config = base_config(
        currency_limits=[{"currency": "840", "max_single_amount": 1000}],
        merchant_limits=[{"merchant_id": "M2", "max_single_amount": 500}],
        card_ranges=[
            {"prefix": "4761", "max_single_amount": 100},
            {"prefix": "47617300", "max_single_amount": 2000, "daily_count_per_card": 1},
        ],
    )
    other = "5413330000000019"
    async with stores.engine(config) as engine:
        assert (await engine.assess(txn(1, pan=other, currency="840", amount=1001))).rc == "61"
        assert (await engine.assess(txn(2, pan=other, currency="840", amount=1000))).rc is None
        merchant = txn(3, pan=other, currency="840", merchant_id="M2", amount=501)
        hit = (await engine.assess(merchant)).hits[0]
        assert hit.detail == "base+currency:840+merchant:M2"
        # the longest prefix wins over the shorter one and over merchant and currency layers
        assert (await engine.assess(txn(4, merchant_id="M2", amount=2000))).rc is None
        decision = await engine.assess(txn(5, merchant_id="M2", amount=10))
        assert decision.rc == "65"
        assert decision.hits[0].detail == "base+merchant:M2+range:47617300"
        assert (await engine.assess(txn(6, pan="4761990000000001", amount=101))).rc == "61"


async def test_daily_amount_is_one_total_in_the_limit_currency(stores: Stores) -> None:
    """Issue 12 item 3: another currency in field 49 must not start a new daily total."""
    async with stores.engine(base_config(velocity=None)) as engine:  # 1 USD = 7.1 CNY
        assert (await engine.assess(txn(1, amount=4_000_000))).rc is None
        assert (await engine.assess(txn(2, amount=4_000_000))).rc is None
        assert (await engine.assess(txn(3, amount=4_000_000))).rc == "61"
        # an active currency without a rate: 12, before any counter moves
        for n, currency in enumerate(("978", "157")):
            no_rate = await engine.assess(txn(4 + n, amount=4_000_000, currency=currency))
            assert no_rate.rc == "12"
            assert [h.name for h in no_rate.hits] == ["currency_without_rate"]
            assert no_rate.reservation is None
        # with a rate the converted amount counts against the same total
        over = await engine.assess(txn(6, amount=281_691, currency="840"))  # 2,000,006.1 fen
        assert over.rc == "61"
        assert (over.hits[0].name, over.hits[0].value) == ("daily_amount", 10_000_007)
        fits = await engine.assess(txn(7, amount=281_690, currency="840"))  # 1,999,999 fen
        assert fits.rc is None
        assert await engine.usage(CARD, "156", T0) == (9_999_999, 3)
        await engine.release(fits)
        assert await engine.usage(CARD, "156", T0) == (8_000_000, 2)
        rules = [e["rules"] for e in engine.recent_alerts()]
        assert rules.count(["currency_without_rate"]) == 2


async def test_currency_override_single_amount_is_in_its_currency(stores: Stores) -> None:
    config = base_config(
        currency_limits=[{"currency": "840", "max_single_amount": 100_000}],
        rates={"840": "7.1", "392": "0.048"},
    )
    async with stores.engine(config) as engine:
        # 1,000 USD = 7,100 CNY: under the base 50,000 CNY, over the USD override
        assert (await engine.assess(txn(1, amount=100_001, currency="840"))).rc == "61"
        assert (await engine.assess(txn(2, amount=100_000, currency="840"))).rc is None
        # without an override the base single amount is in the limit currency
        other = "5413330000000019"
        big = await engine.assess(txn(3, pan=other, amount=1_041_666, currency="392"))
        assert big.rc is None  # 4,999,996.8 -> 4,999,997 fen
        assert (await engine.usage(card_key(other, KEY), "156", T0))[0] == 4_999_997
        bigger = txn(4, pan=other, amount=1_041_667, currency="392")  # 5,000,001.6 fen
        hit = (await engine.assess(bigger)).hits[0]
        assert (hit.name, hit.value, hit.threshold) == ("single_amount", 5_000_002, 5_000_000)


async def test_reversal_in_another_currency_gives_back_the_converted_amount(
    stores: Stores,
) -> None:
    async with stores.engine(base_config(velocity=None)) as engine:
        decision = await engine.assess(txn(1, amount=1_001, currency="840"))  # 7,107.1 -> 7,108
        await engine.confirm(decision)
        assert await engine.usage(CARD, "156", T0) == (7_108, 1)
        await engine.reverse(CARD, 1_000, T0, currency="840")  # 7,100 back (never more)
        assert await engine.usage(CARD, "156", T0) == (8, 1)


async def test_day_rolls_over_in_configured_zone(stores: Stores) -> None:
    config = base_config(daily_count_per_card=1, velocity=None, impossible_travel_minutes=None)
    before = T0.replace(hour=15, minute=59, second=59)  # 23:59:59 Shanghai
    async with stores.engine(config) as engine:
        assert (await engine.assess(txn(1, now=before - timedelta(hours=1)))).rc is None
        assert (await engine.assess(txn(2, now=before))).rc == "65"
        # 16:00 UTC is midnight in Shanghai: a new calendar day, fresh counters
        assert (await engine.assess(txn(3, now=before + timedelta(seconds=1)))).rc is None
        assert await engine.usage(CARD, "156", before) == (10_000, 1)
        assert await engine.usage(CARD, "156", before + timedelta(seconds=1)) == (10_000, 1)
    utc = base_config(timezone="UTC", daily_count_per_card=1, velocity=None)
    other = "5413330000000019"  # same prefix in Redis: another card
    async with stores.engine(utc) as engine:
        assert (await engine.assess(txn(1, pan=other, now=before - timedelta(hours=1)))).rc is None
        assert (
            await engine.assess(txn(2, pan=other, now=before + timedelta(seconds=1)))
        ).rc == "65"


async def test_reversal_restores_daily_amount(stores: Stores) -> None:
    async with stores.engine(base_config(daily_amount_per_card=100_000)) as engine:
        first = await engine.assess(txn(1, amount=100_000))
        await engine.confirm(first)
        assert (await engine.assess(txn(2, amount=100))).rc == "61"
        await engine.reverse(CARD, 40_000, T0, currency="156")  # partial
        assert await engine.usage(CARD, "156", T0) == (60_000, 1)
        again = await engine.assess(txn(3, amount=40_000, now=T0 + timedelta(minutes=1)))
        assert again.rc is None
        # the count stays consumed by a reversal
        assert await engine.usage(CARD, "156", T0) == (100_000, 2)


async def test_reversal_next_day_gives_back_on_original_day(stores: Stores) -> None:
    async with stores.engine() as engine:
        d = await engine.assess(txn(1, amount=70_000))
        await engine.confirm(d)
        tomorrow = T0 + timedelta(days=1)
        assert (await engine.assess(txn(2, amount=5_000, now=tomorrow))).rc is None
        await engine.reverse(CARD, 70_000, T0, currency="156")
        assert await engine.usage(CARD, "156", T0) == (0, 1)
        assert await engine.usage(CARD, "156", tomorrow) == (5_000, 1)


async def test_release_gives_back_amount_and_count_once(stores: Stores) -> None:
    async with stores.engine(base_config(daily_count_per_card=1)) as engine:
        decision = await engine.assess(txn(1, amount=30_000))
        assert decision.reservation is not None
        await engine.release(decision)
        await engine.release(decision)  # idempotent
        await engine.confirm(decision)  # too late: no-op
        assert decision.reservation.state == "released"
        assert await engine.usage(CARD, "156", T0) == (0, 0)
        ok = await engine.assess(txn(2, amount=30_000))
        await engine.confirm(ok)
        await engine.confirm(ok)
        assert await engine.usage(CARD, "156", T0) == (30_000, 1)


async def test_reload_keeps_counters_and_swaps_rules(stores: Stores) -> None:
    async with stores.engine(base_config(daily_amount_per_card=50_000)) as engine:
        assert (await engine.assess(txn(1, amount=40_000))).rc is None
        assert (await engine.assess(txn(2, amount=20_000))).rc == "61"
        not_applied = engine.reload(
            base_config(daily_amount_per_card=60_000, blocked_mccs=["5411"], backend="redis")
        )
        assert not_applied == ("backend",)
        assert (await engine.assess(txn(3, amount=20_000, mcc="5999"))).rc is None
        assert (await engine.assess(txn(4, amount=1, mcc="5411"))).rc == "57"
        assert await engine.usage(CARD, "156", T0) == (60_000, 2)


async def test_reload_swaps_rates_but_not_the_limit_currency(stores: Stores) -> None:
    from gateway.risk import ConfigError

    async with stores.engine(base_config(velocity=None)) as engine:
        assert (await engine.assess(txn(1, amount=100, currency="978"))).rc == "12"
        engine.reload(base_config(velocity=None, rates={"840": "7.1", "978": "7.8"}))
        assert (await engine.assess(txn(2, amount=100, currency="978"))).rc is None
        assert await engine.usage(CARD, "156", T0) == (780, 1)
        # the day's totals are in the limit currency: changing it needs a restart
        with pytest.raises(ConfigError, match="limit_currency"):
            engine.reload(base_config(limit_currency="840", rates={"156": "0.14"}))
        assert (await engine.assess(txn(3, amount=100, currency="978"))).rc is None


def test_to_limit_converts_with_the_rates_of_the_moment() -> None:
    """What stand-in asks the engine: amounts in the limit currency, rounded up, None
    without a rate, with the rates of the last reload."""
    engine = RiskEngine(base_config(), registry=None)
    assert engine.to_limit(2_000, "840") == 14_200
    assert engine.to_limit(1, "840") == 8  # 7.1 fen, rounded up
    assert engine.to_limit(500, "156") == 500
    assert engine.to_limit(500, "978") is None
    engine.reload(base_config(rates={"978": "7.8"}))
    assert (engine.to_limit(2_000, "840"), engine.to_limit(100, "978")) == (None, 780)


async def test_invalid_input_is_refused() -> None:
    from gateway.risk import RiskInputError

    with pytest.raises(RiskInputError, match="timezone-aware"):
        txn(now=T0.replace(tzinfo=None))
    with pytest.raises(RiskInputError, match="clear PAN"):
        txn(masked_pan="4761730000000011")
    with pytest.raises(RiskInputError, match="amount"):
        txn(amount=-1)
