"""The journal in the pipeline over real sockets, on SQLite and PostgreSQL: approvals journaled
before the terminal sees them, timeouts reversed once, late approvals reversed, duplicates and
originals found across a restart, crash recovery, graceful stop, no clear PAN on disk."""

from __future__ import annotations

import datetime as dt
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from gateway.config import SafConfig
from gateway.flow.rrn import rrn_node
from gateway.journal import TxnState
from protocols.message import Message
from tests.helpers import Stack, eventually, purchase, reversal_of, running_stack, terminal
from tests.integration.journal_support import (
    JournalSetup,
    journal_of,
    journal_setup,
    saf_depth,
    txn,
)

pytestmark = pytest.mark.anyio

PAN = "4761730000000011"  # alpha (a MACed issuer link: advices are MACed too)
BETA_PAN = "5413330000000019"
# timeout: an advice sent while a test still drops answers is retried in 0.5 s, not 5 s.
FAST_SAF = SafConfig(
    timeout=0.5, reversal_delay=0.05, poll_interval=0.1, backoff_base=0.05, backoff_max=0.3
)


@pytest.fixture(params=["sqlite", "postgres"])
def journal(
    request: pytest.FixtureRequest, tmp_path: Path, anyio_backend: tuple[str, dict[str, Any]]
) -> Iterator[JournalSetup]:
    yield from journal_setup(request, tmp_path, anyio_backend)


@pytest.fixture
async def stack(pki_dir: Path, journal: JournalSetup) -> AsyncIterator[Stack]:
    async with running_stack(
        pki_dir, link_timeout=0.4, risk="", journal=journal.conf, saf=FAST_SAF
    ) as s:
        yield s


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Wait until the async ``predicate()`` holds (state owned by other tasks), bounded."""
    with anyio.fail_after(timeout):
        while not await predicate():  # noqa: ASYNC110 - polls the journal, no event to wait on
            await anyio.sleep(0.02)


async def test_approval_is_journaled_before_the_terminal_sees_it(stack: Stack) -> None:
    async with terminal(stack.port) as term:
        resp = await term.exchange(purchase(PAN, 1250))
        assert resp["39"] == "00"
        # Read as soon as the answer is in: the record must already be there.
        stored = await txn(stack.gateway, resp["37"])
    assert stored.state == TxnState.ANSWERED
    assert (stored.response_code, stored.auth_code, stored.amount) == ("00", resp["38"], 1250)
    assert stored.issuer_id == "alpha"
    assert stored.pan_masked == "476173******0011"
    assert stored.response is not None
    assert stored.response["39"] == "00"


async def test_local_decline_is_journaled(stack: Stack) -> None:
    async with terminal(stack.port) as term:
        resp = await term.exchange(purchase("4000000000000010", 100))  # no route: 15
    stored = await txn(stack.gateway, resp["37"])
    assert (stored.state, stored.response_code) == (TxnState.ANSWERED, "15")


async def test_timeout_gives_91_and_a_reversal_the_issuer_applies_once(stack: Stack) -> None:
    alpha = stack.issuers["alpha"]
    before = stack.account_balance("alpha", PAN)
    alpha.faults.drop_ratio = 1.0  # processed (debited), but the answer is lost
    async with terminal(stack.port) as term:
        resp = await term.exchange(purchase(PAN, 700))
    assert resp["39"] == "91"
    # Debited, unless the 0420 (due 50 ms after the timeout, its answer dropped too but
    # applied) has already given it back: the end state below is what must hold.
    assert stack.account_balance("alpha", PAN) in (before - 700, before)
    stored = await txn(stack.gateway, resp["37"])
    assert stored.state in (TxnState.TIMED_OUT, TxnState.REVERSED)
    alpha.faults.drop_ratio = 0.0
    await until(lambda: _zero(stack, "alpha"))
    assert stack.account_balance("alpha", PAN) == before
    assert alpha.host.reversals_applied == 1
    assert (await txn(stack.gateway, resp["37"])).state == TxnState.REVERSED


async def _zero(stack: Stack, issuer: str) -> bool:
    return await saf_depth(stack.gateway, issuer) == 0


async def test_late_approval_is_reversed(stack: Stack) -> None:
    alpha = stack.issuers["alpha"]
    before = stack.account_balance("alpha", PAN)
    late = stack.gateway.saf_metrics.late_reversals.labels("alpha")
    alpha.faults.latency_ms = 900  # answers after the 0.4 s link timeout
    async with terminal(stack.port) as term:
        resp = await term.exchange(purchase(PAN, 300))
    assert resp["39"] == "91"
    await until(lambda: _value(late, 1.0))  # the late 0210 arrived and got its 0420
    alpha.faults.latency_ms = 0
    await until(lambda: _zero(stack, "alpha"))
    assert stack.account_balance("alpha", PAN) == before
    assert alpha.host.reversals_applied == 1
    assert (await txn(stack.gateway, resp["37"])).state == TxnState.REVERSED


async def _value(metric: Any, at_least: float) -> bool:
    value: float = metric._value.get()
    return value >= at_least


# -- answers whose link MAC fails: treated like no answer ------------------------------------


def _approved_at_issuer(stack: Stack, issuer: str, mti: str = "0200") -> int:
    """How many ``mti`` requests the issuer approved (and posted), reversed since or not."""
    host = stack.issuers[issuer].host
    return sum(1 for p in host.postings.values() if p.mti == mti and p.approved)


def _untrusted(stack: Stack, reason: str, reversal: str = "queued") -> float:
    metric = stack.gateway.security_metrics.untrusted_answers.labels("alpha", reason, reversal)
    return float(metric._value.get())


async def test_answer_with_a_bad_mac_is_declined_and_reversed_once(stack: Stack) -> None:
    alpha = stack.issuers["alpha"]
    before = stack.account_balance("alpha", PAN)
    alpha.faults.bad_mac_ratio = 1.0  # processed (approved, debited), but the MAC is wrong
    async with terminal(stack.port) as term:
        resp = await term.exchange(purchase(PAN, 650))
    assert (resp["39"], "38" in resp) == ("96", False)
    assert _approved_at_issuer(stack, "alpha") == 1
    stored = await txn(stack.gateway, resp["37"])
    # The 0430 of the queued 0420 comes back with a wrong MAC too: no acknowledgement, so
    # the record stays as written, with its reason.
    assert (stored.state, stored.note, stored.response_code) == (
        TxnState.TIMED_OUT,
        "issuer_bad_mac",
        "96",
    )
    assert stored.auth_code is None
    await until(lambda: _sync(alpha.host.reversals_applied == 1))
    assert stack.account_balance("alpha", PAN) == before  # the issuer applied the 0420...
    assert await saf_depth(stack.gateway, "alpha") == 1  # ...but its answer proves nothing
    assert (await txn(stack.gateway, resp["37"])).state == TxnState.TIMED_OUT
    alpha.faults.bad_mac_ratio = 0.0
    await until(lambda: _zero(stack, "alpha"))
    assert stack.account_balance("alpha", PAN) == before
    assert alpha.host.reversals_applied == 1  # sent again, applied once
    assert (await txn(stack.gateway, resp["37"])).state == TxnState.REVERSED
    assert _untrusted(stack, "bad_mac") >= 2  # the 0210, and each 0430 not taken
    day = stored.created_at.date()
    journal = journal_of(stack.gateway)
    assert [t for t in await journal.settlement(day) if t.issuer_id == "alpha"] == []


async def test_answer_the_hsm_cannot_verify_is_declined_and_reversed(stack: Stack) -> None:
    hsm = stack.hsm
    assert hsm is not None
    alpha = stack.issuers["alpha"]
    before = stack.account_balance("alpha", PAN)
    handle = alpha.host.handle

    def hsm_dies_meanwhile(msg: Message, now: dt.datetime) -> Message:
        if msg.mti == "0200":
            hsm.stop()  # the request was MACed (M6); the answer's M8 will find no HSM
        return handle(msg, now)

    alpha.host.handle = hsm_dies_meanwhile  # type: ignore[method-assign]
    alpha.faults.latency_ms = 100  # the HSM's connections close before the answer is in
    async with terminal(stack.port) as term:
        resp = await term.exchange(purchase(PAN, 640))
    alpha.host.handle = handle  # type: ignore[method-assign]
    alpha.faults.latency_ms = 0
    assert resp["39"] == "96"
    assert _approved_at_issuer(stack, "alpha") == 1
    stored = await txn(stack.gateway, resp["37"])
    assert (stored.state, stored.note) == (TxnState.TIMED_OUT, "issuer_mac_unverified")
    # No HSM, no MAC for the 0420 either: it waits in the queue.
    assert stack.account_balance("alpha", PAN) == before - 640
    assert await saf_depth(stack.gateway, "alpha") == 1
    await hsm.start(stack.task_group)  # same port: the client reconnects by itself
    await until(lambda: _zero(stack, "alpha"))
    assert stack.account_balance("alpha", PAN) == before
    assert alpha.host.reversals_applied == 1
    assert (await txn(stack.gateway, resp["37"])).state == TxnState.REVERSED
    assert _untrusted(stack, "mac_unverified") == 1


async def test_reversal_whose_answer_has_a_bad_mac_is_repeated_as_an_advice(
    stack: Stack,
) -> None:
    alpha = stack.issuers["alpha"]
    before = stack.account_balance("alpha", PAN)
    req = purchase(PAN, 480)
    async with terminal(stack.port) as term:
        first = await term.exchange(req)
        assert first["39"] == "00"
        alpha.faults.bad_mac_ratio = 1.0
        rev = await term.exchange(reversal_of(req))
        alpha.faults.bad_mac_ratio = 0.0
    assert (rev.mti, rev["39"]) == ("0410", "96")
    stored = await txn(stack.gateway, rev["37"])  # the 0420's acknowledgement marks the original
    assert (stored.state, stored.note) == (TxnState.TIMED_OUT, "issuer_bad_mac")
    await until(lambda: _zero(stack, "alpha"))
    assert stack.account_balance("alpha", PAN) == before
    assert alpha.host.reversals_applied == 1  # the 0400 and its 0420: applied once
    assert (await txn(stack.gateway, first["37"])).state == TxnState.REVERSED


async def _sync(value: bool) -> bool:
    return value


async def test_terminal_reversal_of_an_unanswered_request_is_acknowledged(stack: Stack) -> None:
    alpha = stack.issuers["alpha"]
    before = stack.account_balance("alpha", PAN)
    alpha.faults.drop_ratio = 1.0
    req = purchase(PAN, 450)
    async with terminal(stack.port) as term:
        assert (await term.exchange(req))["39"] == "91"
        alpha.faults.drop_ratio = 0.0
        rev = await term.exchange(reversal_of(req))
    assert (rev.mti, rev["39"]) == ("0410", "00")
    await until(lambda: _zero(stack, "alpha"))
    assert stack.account_balance("alpha", PAN) == before
    assert alpha.host.reversals_applied == 1


async def test_restart_keeps_duplicate_detection(stack: Stack) -> None:
    beta = stack.issuers["beta"]
    before = stack.account_balance("beta", BETA_PAN)
    req = purchase(BETA_PAN, 800)
    async with terminal(stack.port) as term:
        first = await term.exchange(req)
    assert first["39"] == "00"
    seen = beta.by_mti.get("0200", 0)
    await stack.stop_gateway(graceful=True)
    await stack.start_gateway()
    async with terminal(stack.port) as term:
        again = await term.exchange(req)
    assert (again["39"], again["37"], again["38"]) == ("00", first["37"], first["38"])
    assert beta.by_mti.get("0200", 0) == seen
    assert stack.account_balance("beta", BETA_PAN) == before - 800


async def test_a_full_memory_window_asks_the_journal_only_for_evicted_keys(
    stack: Stack, journal: JournalSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first 1-hour soak collapsed (717 -> 18 TPS) once the window was full: every new
    # request asked the journal. Now only a key memory evicted is looked up there.
    gw = stack.gateway
    gw.recent.max_entries = 3
    runtime = gw.journal_runtime
    assert runtime.journal is not None
    asked: list[tuple[object, ...]] = []
    find = runtime.journal.find_duplicate

    async def counted(*args: Any, **kwargs: Any) -> Any:
        asked.append(args)
        return await find(*args, **kwargs)

    monkeypatch.setattr(runtime.journal, "find_duplicate", counted)
    beta = stack.issuers["beta"]
    reqs = [purchase(BETA_PAN, 100 + i) for i in range(8)]
    async with terminal(stack.port) as term:
        answers = [await term.exchange(r) for r in reqs]
        assert [a["39"] for a in answers] == ["00"] * 8
        # PostgreSQL: other nodes write too, so a miss always asks (as before).
        assert len(asked) == (0 if journal.backend == "sqlite" else 8)
        seen = beta.by_mti.get("0200", 0)
        again = await term.exchange(reqs[0])  # evicted from memory: the journal answers
    assert (again["39"], again["37"], again["38"]) == ("00", answers[0]["37"], answers[0]["38"])
    assert len(asked) == (1 if journal.backend == "sqlite" else 9)
    assert beta.by_mti.get("0200", 0) == seen


async def test_reversal_after_restart_finds_its_original_in_the_journal(stack: Stack) -> None:
    before = stack.account_balance("beta", BETA_PAN)
    req = purchase(BETA_PAN, 650)
    async with terminal(stack.port) as term:
        first = await term.exchange(req)
    assert first["39"] == "00"
    await stack.stop_gateway(graceful=True)
    await stack.start_gateway()
    async with terminal(stack.port) as term:
        rev = await term.exchange(reversal_of(req))
        assert (rev.mti, rev["39"]) == ("0410", "00")
        second = await term.exchange(reversal_of(req))  # another reversal: nothing more
        assert second["39"] == "00"
    assert stack.account_balance("beta", BETA_PAN) == before
    assert stack.issuers["beta"].host.reversals_applied == 1
    assert (await txn(stack.gateway, first["37"])).state == TxnState.REVERSED


async def test_crash_in_flight_is_reversed_at_start(stack: Stack) -> None:
    beta = stack.issuers["beta"]
    before = stack.account_balance("beta", BETA_PAN)
    beta.faults.latency_ms = 5000  # the gateway "dies" while waiting for the answer
    async with terminal(stack.port) as term:
        await term.send(purchase(BETA_PAN, 999))
        await eventually(lambda: beta.by_mti.get("0200", 0) > 0)
        await stack.stop_gateway(graceful=False)
    assert stack.account_balance("beta", BETA_PAN) == before - 999
    beta.faults.latency_ms = 0
    gateway = await stack.start_gateway()
    assert gateway.recovered == 1
    await until(lambda: _zero(stack, "beta"))
    assert stack.account_balance("beta", BETA_PAN) == before
    assert beta.host.reversals_applied == 1
    assert await journal_of(gateway).in_flight() == []


async def test_a_node_recovers_only_its_own_crash(stack: Stack) -> None:
    """On a shared journal another node's transaction in flight is live: a node starting
    after a crash reverses only those whose RRN it issued (issue 19: found behind HAProxy)."""
    beta = stack.issuers["beta"]
    before = stack.account_balance("beta", BETA_PAN)
    beta.faults.latency_ms = 5000
    async with terminal(stack.port) as term:
        await term.send(purchase(BETA_PAN, 999))
        await eventually(lambda: beta.by_mti.get("0200", 0) > 0)
        await stack.stop_gateway(graceful=False)
    beta.faults.latency_ms = 0
    other = await stack.start_gateway(node=stack.gateway.cfg.node + 1)
    assert other.recovered == 0
    (left,) = await journal_of(other).in_flight()
    assert rrn_node(left.txn_id) == other.cfg.node - 1
    await stack.stop_gateway(graceful=True)
    gateway = await stack.start_gateway(node=other.cfg.node - 1)
    assert gateway.recovered == 1
    await until(lambda: _zero(stack, "beta"))
    assert stack.account_balance("beta", BETA_PAN) == before
    assert beta.host.reversals_applied == 1


async def test_graceful_stop_signs_off_and_flushes(stack: Stack) -> None:
    sign_offs = {i: s.by_mti.get("0800", 0) for i, s in stack.issuers.items()}
    async with terminal(stack.port) as term:
        resp = await term.exchange(purchase(PAN, 5))
    await stack.stop_gateway(graceful=True)
    for issuer, server in stack.issuers.items():
        assert server.by_mti.get("0800", 0) >= sign_offs[issuer] + 2  # 0800/002 per link
    await stack.start_gateway()
    assert (await txn(stack.gateway, resp["37"])).response_code == "00"


# -- SQLite only: the file itself -------------------------------------------------------------


@pytest.fixture
def sqlite_only(journal: JournalSetup) -> Path:
    if journal.sqlite_path is None:
        pytest.skip("checks the SQLite file")
    return journal.sqlite_path


async def test_no_clear_pan_in_the_database_file(stack: Stack, sqlite_only: Path) -> None:
    pans = [PAN, BETA_PAN, "6250940000000019"]
    async with terminal(stack.port) as term:
        for pan in pans:
            req = purchase(pan, 10)
            assert (await term.exchange(req))["39"] == "00"
            assert (await term.exchange(reversal_of(req)))["39"] == "00"
    await stack.stop_gateway(graceful=True)
    files = [sqlite_only, Path(f"{sqlite_only}-wal"), Path(f"{sqlite_only}-shm")]
    data = b"".join(p.read_bytes() for p in files if p.exists())
    assert len(data) > 10_000
    for pan in pans:
        assert pan.encode() not in data
        assert pan.encode("utf-16-le") not in data
        assert f"{pan[:6]}******{pan[-4:]}".encode() in data  # only masked


async def test_journal_verify_catches_an_edited_record(
    stack: Stack, sqlite_only: Path, journal: JournalSetup
) -> None:
    async with terminal(stack.port) as term:
        for amount in (11, 12, 13):
            assert (await term.exchange(purchase(PAN, amount)))["39"] == "00"
    await stack.stop_gateway(graceful=True)
    gateway_cmd = str(Path(sys.executable).parent / "gateway")
    command = [gateway_cmd, "journal", "verify", "--conf", str(journal.conf)]
    ok = await anyio.run_process(command, check=False)
    assert ok.returncode == 0, ok.stderr.decode()
    report = orjson.loads(ok.stdout)
    assert report["ok"] is True
    assert report["count"] >= 6
    con = sqlite3.connect(sqlite_only, isolation_level=None)
    try:
        (seq,) = con.execute("SELECT seq FROM events WHERE amount = 12").fetchone()
        con.execute("UPDATE events SET amount = 1200 WHERE seq = ?", (seq,))
    finally:
        con.close()
    bad = await anyio.run_process(command, check=False)
    assert bad.returncode == 1
    report = orjson.loads(bad.stdout)
    assert report["ok"] is False
    assert report["broken_seq"] == seq


async def test_partial_reversal_leaves_the_rest_in_the_books(stack: Stack) -> None:
    journal = stack.gateway.journal
    assert journal is not None
    before = stack.account_balance("alpha", PAN)
    async with terminal(stack.port) as term:
        req = purchase(PAN, 1000)
        resp = await term.exchange(req)
        assert resp["39"] == "00"
        partial = reversal_of(req)
        partial["95"] = f"{400:012d}" + "0" * 30  # 400 stays posted: 600 is given back
        assert (await term.exchange(partial))["39"] == "00"
        assert stack.account_balance("alpha", PAN) == before - 400
        day = (await txn(stack.gateway, resp["37"])).created_at.date()
        [books] = [t for t in await journal.settlement(day) if t.issuer_id == "alpha"]
        assert (books.debit_count, books.debit_amount) == (1, 400)
        # The rest reversed too: the original leaves the books.
        assert (await term.exchange(reversal_of(req)))["39"] == "00"
    assert stack.account_balance("alpha", PAN) == before
    assert (await txn(stack.gateway, resp["37"])).state == TxnState.REVERSED
    assert [t for t in await journal.settlement(day) if t.issuer_id == "alpha"] == []
