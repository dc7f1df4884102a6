"""Two PostgreSQL- and Redis-backed gateway nodes behind HAProxy, run with the shipped
conf/scaleout/haproxy.cfg (its ports rewritten, nothing else), every terminal through
HAProxy only: traffic spreads over both nodes; a node SIGKILLed under load loses its
terminals to the other node within the health checks, they carry on, and the books are exact
afterwards; a node that loses all its issuer links turns /readyz red and gets no new terminal."""

from __future__ import annotations

import dataclasses
import random
import re
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import httpx
import pytest
from anyio.abc import Process
from prometheus_client.parser import text_string_to_metric_families

from hsm_sim.config import load_config as load_hsm_config
from hsm_sim.server import HsmServer
from issuer_sim.server import IssuerServer
from loadtest.chaos import GatewayProcess, Issuers, Terminals, check_books, saf_depth
from loadtest.generator import synthetic_pan
from loadtest.procstat import free_port
from protocols.message import Message
from tests.helpers import DEMO_CONF, ROOT, demo_dataset, purchase, terminal
from tests.integration.scaleout_support import (
    drop_schema,
    write_gateway_conf,
    write_journal_conf,
    write_risk_conf,
)
from tests.tools import require_tool

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]

SHIPPED = ROOT / "conf" / "scaleout" / "haproxy.cfg"
RICH = "4761730000000060"  # balance 99,999,999: only the switch's daily limit stops it
GONE = (OSError, anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # asyncpg (the journal check) runs on asyncio only


def haproxy_conf(tmp: Path, ports: dict[int, int]) -> Path:
    """The shipped file with each of its ports replaced (whole numbers only)."""
    text = SHIPPED.read_text()
    seen: set[int] = set()

    def swap(m: re.Match[str]) -> str:
        port = int(m[1])
        seen.add(port)
        return str(ports[port])

    text = re.sub(r":(\d{4,5})\b", lambda m: ":" + swap(m), text)
    text = re.sub(r"\bport (\d{4,5})\b", lambda m: "port " + swap(m), text)
    assert seen == set(ports), f"ports of the shipped file changed: {seen ^ set(ports)}"
    conf = tmp / "haproxy.cfg"
    conf.write_text(text)
    return conf


class HaProxy:
    """HAProxy in the foreground; its state changes ("Server gateways_tcp/node2 is DOWN") are
    read from its stderr as they happen."""

    def __init__(self, proc: Process) -> None:
        self.proc = proc
        self.changes: list[tuple[float, str, str]] = []
        self.lines: list[str] = []
        self._changed = anyio.Event()

    async def read(self) -> None:
        assert self.proc.stderr is not None
        buffer = ""
        async for chunk in self.proc.stderr:
            buffer += chunk.decode(errors="replace")
            *lines, buffer = buffer.split("\n")
            self.lines.extend(lines)
            for line in lines:
                m = re.search(r"Server gateways_tcp/(node\d) is (UP|DOWN)", line)
                if m:
                    self.changes.append((time.monotonic(), m[1], m[2]))
                    self._changed.set()
                    self._changed = anyio.Event()

    async def wait_for(self, server: str, state: str, after: float) -> float:
        """When ``server`` went ``state`` (the first time since ``after``)."""
        while True:
            for at, name, new in self.changes:
                if at >= after and name == server and new == state:
                    return at
            await self._changed.wait()


def echo(n: int) -> Message:
    return Message("0800", {"7": time.strftime("%m%d%H%M%S"), "11": f"{n:06d}", "70": "301"})


async def answered_echo(port: int, n: int) -> bool:
    """A new terminal connection through HAProxy gets its echo answered."""
    try:
        async with terminal(port) as term:
            return (await term.exchange(echo(n), timeout=5))["39"] == "00"
    except (*GONE, TimeoutError):
        return False


async def node(http: httpx.AsyncClient, admin: int) -> tuple[float, float]:
    """(answers given, open terminal connections) of one node, from its /metrics."""
    answers = connections = 0.0
    for family in text_string_to_metric_families(
        (await http.get(f"http://127.0.0.1:{admin}/metrics")).text
    ):
        for s in family.samples:
            if s.name == "switch_transactions_total":
                answers += s.value
            elif s.name == "switch_terminal_connections":
                connections += s.value
    return answers, connections


async def until(what: str, check: Callable[[], Awaitable[bool]], timeout: float = 20) -> None:
    """Poll another process's state (no event crosses the process boundary)."""
    with anyio.move_on_after(timeout):
        while not await check():  # noqa: ASYNC110
            await anyio.sleep(0.1)
        return
    raise AssertionError(f"not within {timeout} s: {what}")


async def test_two_nodes_behind_haproxy_spread_fail_over_and_keep_exact_books(
    redis_url: str, postgres_dsn: str, pki_dir: Path, tmp_path: Path
) -> None:
    haproxy = require_tool("haproxy", "haproxy")
    schema = f"haproxy_{uuid.uuid4().hex[:12]}"
    journal = write_journal_conf(tmp_path, postgres_dsn, schema)
    risk = write_risk_conf(tmp_path, redis_url, f"payswitch:test:{uuid.uuid4().hex}:")
    try:
        await _scenario(haproxy, pki_dir, tmp_path, journal, risk)
    finally:
        await drop_schema(postgres_dsn, schema)


async def _scenario(haproxy: str, pki_dir: Path, tmp: Path, journal: Path, risk: Path) -> None:
    data = demo_dataset()
    rnd = random.Random(19)
    async with anyio.create_task_group() as tg, httpx.AsyncClient() as http:
        hsm_cfg = dataclasses.replace(load_hsm_config(DEMO_CONF / "hsm.toml"), port=0)
        hsm = await tg.start(HsmServer(hsm_cfg).serve)
        # Node 1's issuer hosts, and node 2's own endpoints onto the same books, so that node 2
        # alone can lose its links.
        issuers = Issuers(tg, data, pki_dir)
        await issuers.start()
        replicas: dict[str, IssuerServer] = {}
        for name, primary in issuers.servers.items():
            replicas[name] = IssuerServer(
                primary.host, primary.ssl_context, allowed_clients=primary.allowed_clients
            )
            await tg.start(replicas[name].run)
        conf1, port1, admin1 = write_gateway_conf(
            tmp, "gw1", {i: s.port for i, s in issuers.servers.items()}, pki_dir, risk, hsm, journal
        )
        conf2, port2, admin2 = write_gateway_conf(
            tmp, "gw2", {i: s.port for i, s in replicas.items()}, pki_dir, risk, hsm, journal
        )
        node1 = GatewayProcess(conf1, port1, admin1, tmp / "gw1.log")
        node2 = GatewayProcess(conf2, port2, admin2, tmp / "gw2.log")
        for gw in (node1, node2):
            await gw.start()
            assert await gw.ready()

        front = free_port()
        cfg = haproxy_conf(
            tmp,
            {
                8583: front, 8584: free_port(), 8080: free_port(),
                18583: port1, 19090: admin1, 18584: free_port(), 18080: free_port(),
                28583: port2, 29090: admin2, 28584: free_port(), 28080: free_port(),
            },
        )  # fmt: skip
        check = await anyio.run_process([haproxy, "-c", "-f", str(cfg)], check=False)
        assert check.returncode == 0, (check.stdout + check.stderr).decode()
        proxy = HaProxy(
            await anyio.open_process(
                [haproxy, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
        )
        tg.start_soon(proxy.read)

        prefixes = {r.issuer: r.prefix for r in data.issuer_behaviour.synthetic}
        pans = [synthetic_pan(prefixes[i], rnd) for i in ("alpha", "beta") for _ in range(8)]
        opening: dict[str, tuple[str, int]] = {}
        for pan in [*pans, RICH]:
            account = issuers.book("alpha" if pan[0] == "4" else "beta").find(pan)
            assert account is not None
            opening[pan] = ("alpha" if pan[0] == "4" else "beta", account.balance)
        try:
            # 1. Terminals through HAProxy only: both nodes answer some.
            terminals = Terminals(front, pans, rnd, workers=6)
            tg.start_soon(terminals.run)

            async def both_serve() -> bool:
                return (await node(http, admin1))[0] >= 20 and (await node(http, admin2))[0] >= 20

            await until("traffic on both nodes", both_serve)

            # 2. SIGKILL node 2 under load. New connections reach node 1 once HAProxy's checks
            # (inter 1s fall 2) mark node 2 down; its terminals reconnect and carry on.
            answered_before = terminals.ledger.answered
            killed = time.monotonic()
            await node2.kill()
            n = 0
            while not await answered_echo(front, n := n + 1):
                pass
            failover = time.monotonic() - killed
            down = await proxy.wait_for("node2", "DOWN", killed) - killed
            print(f"haproxy: node2 DOWN {down:.2f} s after SIGKILL, first new connection "
                  f"answered after {failover:.2f} s")  # fmt: skip
            assert failover < 5.0
            assert all([await answered_echo(front, 1000 + i) for i in range(5)])
            at_kill = (await node(http, admin1))[0]

            async def carried_on() -> bool:
                return terminals.ledger.answered >= answered_before + 100 and (
                    (await node(http, admin1))[0] >= at_kill + 50
                )

            await until("terminals carry on through node 1", carried_on)

            # Node 2 back (crash recovery at start); HAProxy takes it again after rise 2.
            restarted = time.monotonic()
            await node2.start()
            assert await node2.ready()
            await proxy.wait_for("node2", "UP", restarted)

            # 3. Limits stay exact across both nodes: 40 concurrent purchases on one card
            # through HAProxy, spread over the nodes; 10,000,000 daily / 1,000,000 each.
            codes: list[str] = []
            served_before = (await node(http, admin2))[0]

            async def buy() -> None:
                async with terminal(front) as term:
                    codes.append((await term.exchange(purchase(RICH, 1_000_000), timeout=30))["39"])

            async with anyio.create_task_group() as burst:
                for _ in range(40):
                    burst.start_soon(buy)
            assert sorted(codes) == ["00"] * 10 + ["61"] * 30
            assert (await node(http, admin2))[0] > served_before, "node 2 served none"

            # Quiet: terminals finish their reversals, then leave.
            terminals.new_traffic = False

            async def settled() -> bool:
                return not terminals.ledger.pending and not terminals.in_flight

            await until("terminals settled", settled, timeout=60)
            terminals.stopping = True

            # 4. Node 2 loses every issuer link: /readyz red, HAProxy stops sending it terminals.
            for replica in replicas.values():
                replica.stop()
            lost = time.monotonic()

            async def red() -> bool:
                return (await http.get(f"http://127.0.0.1:{admin2}/readyz")).status_code != 200

            await until("node 2 not ready", red)
            await proxy.wait_for("node2", "DOWN", lost)
            (_, conns1), (_, conns2) = await node(http, admin1), await node(http, admin2)
            async with AsyncExitStack() as held:
                for i in range(10):
                    term = await held.enter_async_context(terminal(front))
                    assert (await term.exchange(echo(2000 + i)))["39"] == "00"
                assert (await node(http, admin2))[1] == conns2, "node 2 got a new terminal"
                assert (await node(http, admin1))[1] == conns1 + 10

            # Node 2's issuers come back; every advice is delivered.
            for name, old in replicas.items():
                replicas[name] = old.restarted()  # no faults were set on replicas
                await tg.start(replicas[name].run)
            assert await node2.ready(timeout=30)

            async def drained() -> bool:
                return await saf_depth(journal) == 0

            await until("SAF drained", drained, timeout=60)
        finally:
            if proxy.proc.returncode is None:
                proxy.proc.terminate()
            assert await proxy.proc.wait() in (0, -15, 143), "\n".join(proxy.lines[-20:])
        assert await node1.terminate() == 0
        assert await node2.terminate() == 0
        tg.cancel_scope.cancel()

    # 5. The books: every approval a terminal saw is journaled, each card's issuer balance
    # matches its journal, nothing left in flight or queued, the chain verifies.
    report = await check_books(journal, terminals.ledger, issuers, opening)
    assert report["problems"] == [], report
    rrns = [rrn for rrn, *_ in terminals.ledger.approvals]
    assert len(rrns) == len(set(rrns)) > 100
    rich = issuers.book("alpha").find(RICH)
    assert rich is not None
    assert opening[RICH][1] - rich.balance == 10 * 1_000_000
