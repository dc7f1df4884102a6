"""Counters stay exact under concurrency: one card, many tasks, one or two engines."""

from __future__ import annotations

import random
from datetime import timedelta

import anyio
import anyio.lowlevel
import pytest

from gateway.risk import RiskDecision, RiskEngine
from tests.risk.conftest import CARD, T0, Stores, base_config, txn

pytestmark = pytest.mark.anyio

LIMITS = {"velocity": None, "impossible_travel_minutes": None, "daily_count_per_card": None}


async def _burst(engines: list[RiskEngine], n: int, amount: int) -> list[RiskDecision]:
    decisions: list[RiskDecision] = []

    async def one(i: int) -> None:
        engine = engines[i % len(engines)]
        decision = await engine.assess(txn(i, amount=amount, now=T0 + timedelta(milliseconds=i)))
        if decision.rc is None:
            await engine.confirm(decision)
        decisions.append(decision)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)
    return decisions


async def test_200_concurrent_purchases_against_daily_amount(stores: Stores) -> None:
    config = base_config(daily_amount_per_card=10_000_000, **LIMITS)
    async with stores.engine(config) as engine:
        decisions = await _burst([engine], 200, 100_000)
        approved = [d for d in decisions if d.rc is None]
        assert len(approved) == 100
        assert {d.rc for d in decisions} == {None, "61"}
        assert await engine.usage(CARD, "156", T0) == (10_000_000, 100)


async def test_200_concurrent_purchases_against_daily_count(stores: Stores) -> None:
    config = base_config(**{**LIMITS, "daily_count_per_card": 20})
    async with stores.engine(config) as engine:
        decisions = await _burst([engine], 200, 10)
        assert sum(d.rc is None for d in decisions) == 20
        assert await engine.usage(CARD, "156", T0) == (200, 20)


async def test_two_engines_share_limits_exactly(redis_stores: Stores) -> None:
    """Two engines with their own connection pools on one prefix: two gateway processes."""
    config = base_config(daily_amount_per_card=7_000_000, **LIMITS)
    async with redis_stores.engine(config) as one, redis_stores.engine(config) as two:
        assert one.store is not two.store
        decisions = await _burst([one, two], 200, 100_000)
        assert sum(d.rc is None for d in decisions) == 70
        assert await one.usage(CARD, "156", T0) == (7_000_000, 70)
        assert await two.usage(CARD, "156", T0) == (7_000_000, 70)


async def test_concurrent_release_and_reverse_keep_counters_exact(stores: Stores) -> None:
    config = base_config(daily_amount_per_card=5_000_000, **LIMITS)
    async with stores.engine(config) as engine:
        kept: list[int] = []

        async def one(i: int) -> None:
            decision = await engine.assess(txn(i, amount=50_000 + i))
            if decision.rc is not None:
                return
            if i % 3 == 0:
                await engine.release(decision)  # issuer declined
                return
            await engine.confirm(decision)
            if i % 3 == 1:
                await engine.reverse(CARD, 50_000 + i, T0, currency="156")
                return
            kept.append(50_000 + i)

        async with anyio.create_task_group() as tg:
            for i in range(150):
                tg.start_soon(one, i)
        amount, _ = await engine.usage(CARD, "156", T0)
        assert amount == sum(kept)
        assert amount <= 5_000_000


async def test_reload_while_tasks_run(stores: Stores) -> None:
    """Reloads swap whole rule sets between steps of running tasks; counters are kept."""
    open_config = base_config(daily_amount_per_card=10_000_000, **LIMITS)
    closed_config = base_config(daily_amount_per_card=10_000_000, blocked_mccs=["5411"], **LIMITS)
    async with stores.engine(open_config) as engine:
        decisions: list[RiskDecision] = []
        done = anyio.Event()

        async def worker(w: int) -> None:
            for i in range(40):
                decision = await engine.assess(txn(w * 100 + i, amount=1_000))
                if decision.rc is None:
                    await engine.confirm(decision)
                decisions.append(decision)
                await anyio.lowlevel.checkpoint()

        async def reloader() -> None:
            # an irregular cadence: a period in step with the workers' would let every
            # decision see the same rule set
            rnd = random.Random(7)
            flip = False
            while not done.is_set():
                flip = not flip
                engine.reload(closed_config if flip else open_config)
                for _ in range(rnd.randint(1, 3)):
                    await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(reloader)
            async with anyio.create_task_group() as workers:
                for w in range(5):
                    workers.start_soon(worker, w)
            done.set()
        codes = {d.rc for d in decisions}
        assert codes == {None, "57"}
        for d in decisions:  # every decision comes from one whole rule set
            assert [h.name for h in d.hits] in ([], ["blocked_mcc"])
        approved = sum(d.rc is None for d in decisions)
        assert await engine.usage(CARD, "156", T0) == (approved * 1_000, approved)
