"""Anti-structuring (issue 18 item 4): payments just below the single-amount limit, the no-CVM
cap or a QR tier's cap, repeated on one card within the window, raise an alert naming the
pattern; they are never declined for it. Both counter backends."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.risk import (
    AlertEvent,
    ConfigError,
    RiskEngine,
    RuleHit,
    config_from_mapping,
    load_config,
)
from gateway.risk.verification import Cvm, QrVerification
from tests.risk.conftest import KEY_HEX, T0, Stores, base_config, txn
from tests.risk.test_config import DEMO_CONF
from tests.risk.test_tiers import CONTACTLESS, TIERS

pytestmark = pytest.mark.anyio

# 10 % under the caps: single amount CNY 50,000 -> from 45,000; no-CVM CNY 1,000 -> from 900;
# a static QR payer's day, CNY 500 -> from 450.
STRUCTURING = {"enabled": True, "margin_percent": 10, "count": 3, "window_seconds": 3600}
WEEK = 7 * 86_400


def config(**overrides: Any) -> Any:
    values: dict[str, Any] = {
        "velocity": None,
        "daily_amount_per_card": 100_000_000,
        "daily_count_per_card": 100,
        "contactless": CONTACTLESS,
        "qr_tiers": TIERS,
        "structuring": STRUCTURING,
    }
    return base_config(**(values | overrides))


def structuring(hits: tuple[RuleHit, ...]) -> list[RuleHit]:
    return [h for h in hits if h.name == "structuring"]


def patterns(hits: list[RuleHit]) -> list[str]:
    return [(h.detail or "").split(":")[0] for h in hits]


async def assess_all(engine: RiskEngine, amounts: list[int], **kw: Any) -> list[list[RuleHit]]:
    """Ten minutes apart, each approved: the structuring hits of each."""
    out = []
    for i, amount in enumerate(amounts):
        now = T0 + timedelta(minutes=10 * i)
        decision = await engine.assess(txn(i, amount=amount, now=now, **kw))
        assert decision.rc is None  # never a decline
        await engine.confirm(decision)
        out.append(structuring(decision.hits))
    return out


async def test_third_tap_just_under_the_no_cvm_cap_alerts(stores: Stores) -> None:
    events: list[AlertEvent] = []
    async with stores.engine(config(), sinks=(events.append,)) as engine:
        found = await assess_all(engine, [95_000, 90_000, 100_000], cvm=Cvm.NONE)
    assert [len(h) for h in found] == [0, 0, 1]
    (hit,) = found[2]
    assert (hit.kind, hit.action, hit.rc, hit.value, hit.threshold) == (
        "rule",
        "alert",
        None,
        3,
        3,
    )
    assert patterns([hit]) == ["below_no_cvm_cap"]
    assert [e.rules for e in events] == [("structuring",)]
    assert events[0].event == "risk.alert"


async def test_below_single_amount(stores: Stores) -> None:
    async with stores.engine(config()) as engine:
        found = await assess_all(engine, [4_500_000, 4_600_000, 5_000_000])
    assert [patterns(h) for h in found] == [[], [], ["below_single_amount"]]


async def test_qr_days_just_below_the_tier_alert(stores: Stores) -> None:
    """A QR tier caps a day: the pattern is days whose QR total ends just below it (two
    payments reaching it on one day are one day)."""
    cfg = config(structuring=STRUCTURING | {"window_seconds": WEEK})
    async with stores.engine(cfg) as engine:
        found: list[list[str]] = []
        for i, (day, amount) in enumerate(((0, 46_000), (0, 2_000), (1, 48_000), (2, 50_000))):
            at = T0 + timedelta(days=day, minutes=i)
            payment = QrVerification(False, frozenset({"password"}))
            decision = await engine.assess(txn(i, amount=amount, now=at, qr=payment))
            assert decision.rc is None
            found.append(patterns(structuring(decision.hits)))
    assert found == [[], [], [], ["below_qr_tier"]]


async def test_not_near_spread_out_or_disabled_no_alert(stores: Stores) -> None:
    async with stores.engine(config()) as engine:
        # 89,999 is more than 10 % under the cap; a tap with a PIN has no no-CVM cap
        low = await assess_all(engine, [89_999, 89_999, 89_999], cvm=Cvm.NONE)
        pin = await assess_all(engine, [95_000] * 3, pan="4761730000000029", cvm=Cvm.ONLINE_PIN)
        assert low == pin == [[], [], []]
        # three near the cap, but the first falls out of the hour's window
        card = "4761730000000037"
        for i, minutes in enumerate((0, 50, 65)):
            at = T0 + timedelta(minutes=minutes)
            d = await engine.assess(txn(i, pan=card, amount=95_000, cvm=Cvm.NONE, now=at))
            assert structuring(d.hits) == []
        # a reload turns it off
        engine.reload(config(structuring=STRUCTURING | {"enabled": False}))
        at = T0 + timedelta(minutes=66)
        off = await engine.assess(txn(9, pan=card, amount=95_000, cvm=Cvm.NONE, now=at))
        assert structuring(off.hits) == []


async def test_a_retried_transaction_counts_once(stores: Stores) -> None:
    async with stores.engine(config()) as engine:
        first = txn(1, amount=95_000, cvm=Cvm.NONE)
        for _ in range(3):
            assert structuring((await engine.assess(first)).hits) == []


async def test_two_engines_share_the_window(redis_stores: Stores) -> None:
    async with redis_stores.engine(config()) as one, redis_stores.engine(config()) as two:
        for i, engine in enumerate((one, two)):
            d = await engine.assess(txn(i, amount=95_000, cvm=Cvm.NONE))
            assert structuring(d.hits) == []
        third = await one.assess(txn(3, amount=95_000, cvm=Cvm.NONE))
        assert [h.value for h in structuring(third.hits)] == [3]


async def test_demo_turns_it_on_and_a_file_reload_applies(stores: Stores, tmp_path: Path) -> None:
    demo = load_config(DEMO_CONF, env={}).structuring
    assert (demo.enabled, demo.margin_percent, demo.count) == (True, 10, 3)
    async with stores.engine(config(structuring={})) as engine:
        for i in range(3):
            d = await engine.assess(txn(i, amount=95_000, cvm=Cvm.NONE))
            assert structuring(d.hits) == []
        path = tmp_path / "risk.toml"
        path.write_text(
            f'pan_hash_key = "{KEY_HEX}"\n[contactless]\nno_cvm_max_amount = 100000\n'
            "[structuring]\nenabled = true\ncount = 2\n"
        )
        engine.reload_file(path)
        on = await engine.assess(txn(3, amount=95_000, cvm=Cvm.NONE))
        # marks are taken only while it is on: this is the first
        assert structuring(on.hits) == []
        again = await engine.assess(txn(4, amount=95_000, cvm=Cvm.NONE))
        assert patterns(structuring(again.hits)) == ["below_no_cvm_cap"]


def test_defaults_off_and_bad_values_refused() -> None:
    assert not config_from_mapping({"pan_hash_key": KEY_HEX}).structuring.enabled
    for bad in ({"margin_percent": 0}, {"margin_percent": 100}, {"count": 1}):
        with pytest.raises(ConfigError, match="structuring"):
            config_from_mapping({"pan_hash_key": KEY_HEX, "structuring": bad})
