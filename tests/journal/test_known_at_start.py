"""At start the switch reads the duplicate keys the SQLite journal holds for the window; a busy
day's worth goes into the evicted-key filters instead of making every request ask the journal."""

from __future__ import annotations

from datetime import timedelta

import anyio
import pytest

from gateway.config import SafConfig
from gateway.flow.evicted import EvictedKeys
from gateway.flow.journal_stage import JournalRuntime
from protocols.keys import key_of
from tests.journal.conftest import NOW, Backend, purchase

pytestmark = pytest.mark.anyio

KEYS = [key_of("2", "TERM0001", f"{i:06d}", "0314120000") for i in range(10)]
STRANGER = key_of("2", "TERM0001", "999999", "0314120000")
LATER = NOW + timedelta(hours=1)


async def test_keys_at_start_in_a_set_or_in_the_filter(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend.name != "sqlite":
        pytest.skip("the start-up key set is SQLite's (one node); PostgreSQL always asks")
    async with backend.open() as journal:
        for i in range(10):
            await journal.append(purchase(f"t{i}", f"{i:06d}", at=NOW + timedelta(minutes=i)))
        runtime = JournalRuntime("123456", SafConfig(), window=86_400.0)
        runtime.attach(journal)

        await runtime.load_known(LATER, 20)  # few: an exact set
        assert runtime.known == set(KEYS)

        await runtime.load_known(LATER, 5)  # too many and nowhere to put them: always ask
        assert runtime.known is None
        assert runtime.may_know(STRANGER)

        evicted = EvictedKeys(window=86_400.0, first_capacity=4, max_bytes=1 << 20)
        await runtime.load_known(LATER, 5, evicted)
        mono = anyio.current_time()
        assert runtime.known == set()
        assert all(evicted.may_contain(k, mono) for k in KEYS)
        assert not evicted.may_contain(STRANGER, mono)
        # Keys leave with the window a generation at a time (the first holds keys 0-3, made
        # at NOW + 0-3 minutes), the newest decides: a superset, never fewer.
        assert evicted.may_contain(KEYS[0], mono + 86_400 - 3_600 + 60 * 3 - 1)
        gone = mono + 86_400 - 3_600 + 60 * 3 + 1
        assert not any(evicted.may_contain(k, gone) for k in KEYS[:4])
        assert all(evicted.may_contain(k, gone) for k in KEYS[4:])

        # More than the filter's memory: the newest it can take, blind until the rest leave.
        small = EvictedKeys(window=86_400.0, first_capacity=4, max_bytes=1 << 20)
        monkeypatch.setattr(small, "key_budget", lambda: 3)
        await runtime.load_known(LATER, 5, small)
        mono = anyio.current_time()
        assert small.may_contain(STRANGER, mono)  # blind: key 6 and older were not read
        after = mono + 86_400 - 3_600 + 60 * 6 + 1  # key 6 has left the window
        assert not small.may_contain(STRANGER, after)
        assert all(small.may_contain(k, after) for k in KEYS[7:])
