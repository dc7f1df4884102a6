"""Property: counters equal the approved-and-not-reversed amounts, whatever the sequence."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.risk import card_key
from tests.risk.conftest import KEY, T0, Stores, base_config, txn

LIMIT = 200_000

buy = st.tuples(
    st.just("buy"),
    st.integers(min_value=1, max_value=80_000),
    st.sampled_from(["confirm", "release", "hold"]),
)
reverse = st.tuples(
    st.just("reverse"), st.integers(min_value=0, max_value=1_000), st.integers(1, 100)
)
ops_strategy = st.lists(st.one_of(buy, reverse), min_size=1, max_size=40)


@dataclass
class _Model:
    confirmed: list[int]
    held: int = 0
    count: int = 0

    @property
    def total(self) -> int:
        return sum(self.confirmed) + self.held


async def _check(stores: Stores, ops: list[tuple[str, int, Any]]) -> None:
    pan = "54133" + str(uuid.uuid4().int)[:11]  # a fresh card per example
    key = card_key(pan, KEY)
    config = base_config(
        daily_amount_per_card=LIMIT,
        max_single_amount=None,
        daily_count_per_card=None,
        velocity=None,
        impossible_travel_minutes=None,
    )
    model = _Model(confirmed=[])
    async with stores.engine(config) as engine:
        for n, (op, a, b) in enumerate(ops):
            if op == "buy":
                decision = await engine.assess(
                    txn(n, pan=pan, amount=a, now=T0 + timedelta(seconds=n))
                )
                # approved exactly when it fits the limit
                assert (decision.rc is None) == (model.total + a <= LIMIT)
                if decision.rc is not None:
                    continue
                if b == "confirm":
                    await engine.confirm(decision)
                    model.confirmed.append(a)
                    model.count += 1
                elif b == "release":
                    await engine.release(decision)
                else:
                    model.held += a
                    model.count += 1
            elif model.confirmed:
                i = a % len(model.confirmed)
                part = -(-model.confirmed[i] * b // 100)  # ceil: 1..remaining
                if part == 0:
                    continue
                model.confirmed[i] -= part
                await engine.reverse(key, part, T0, currency="156")
            assert await engine.usage(key, "156", T0) == (model.total, model.count)


@pytest.mark.parametrize("kind", ["memory", "redis"])
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=ops_strategy)
def test_counters_match_model(
    kind: str, ops: list[tuple[str, int, Any]], request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("redis_url") if kind == "redis" else None
    stores = Stores(kind, url)
    try:
        anyio.run(_check, stores, ops)
    finally:
        stores.cleanup()
