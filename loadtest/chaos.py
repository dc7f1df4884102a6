"""Chaos run (bounded, loopback only): traffic, SIGKILLed gateways, failing issuers; then the books.

    python -m loadtest.chaos --rounds 3 --kills 20 [--workers 8] [--seed 1] [--workdir DIR]

What runs where:

* the **gateway** is a real ``gateway run`` process with a SQLite journal. It is killed with
  SIGKILL at random moments (whatever it was doing) and started again at once; at the end of
  each round it is stopped with SIGTERM (graceful);
* the **issuer simulators** and the HSM simulator run inside this process on 127.0.0.1. An
  issuer is "killed" by closing its listener and every connection at once (the gateway sees
  exactly what a crashed issuer host looks like) and restarted on the same port a moment
  later. Its accounts survive, as a real issuer's database would: that is what lets the run
  compare balances with the journal. Other issuer faults: answers later than the link timeout
  (timeouts, then late approvals) and lost answers;
* the **terminals** are async clients in this process. A terminal that gets no answer (the
  gateway died) reverses the request (0400) once the gateway is back, and repeats that
  reversal until it gets an answer other than ``91``; some approved purchases are reversed.

White box: this is the load kit's one reader of the switch's journal (``gateway.journal``,
allowed by ``tests/test_architecture.py``), since the books can only be checked there.

Checked after every round (cumulative), with the journal opened here after the graceful stop:

1. every approval a terminal saw (field 39 ``00``) is in the journal, approved;
2. for every card: issuer opening balance - balance now == the approved, not reversed
   purchases of that card in the journal;
3. the store-and-forward queue is empty, nothing is left ``sent_to_issuer``, and the journal's
   chain verifies.

Exit status 0 when every check passes, 1 on any discrepancy (the JSON summary says which).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import itertools
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
from anyio.abc import Process

from gateway.journal import TxnState, load_config, open_journal
from hsm_sim.config import load_config as load_hsm_config
from hsm_sim.server import HsmServer
from issuer_sim.accounts import AccountBook
from issuer_sim.emv import EmvAuthenticator
from issuer_sim.host import IssuerHost
from issuer_sim.pin import IssuerSecurity
from issuer_sim.server import IssuerServer
from kit import pki
from kit.dataset import Dataset, load_dataset
from kit.framed import FramedStream
from kit.logs import configure
from loadtest.generator import synthetic_pan
from loadtest.procstat import free_port
from loadtest.terminal_client import build_request
from protocols.codec import Codec
from protocols.dialects import get_dialect
from protocols.keys import original_data
from protocols.message import Message

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "conf" / "demo"
BIN = Path(sys.executable).parent
CODEC = Codec(get_dialect("terminal"))
TERMINAL = "T0000001"
MERCHANT = "M00000000000001"
ISSUERS = ("alpha", "beta", "gamma")
GAMMA_CARDS = ("6250940000000019",)
_GONE = (OSError, anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


# -- the terminals' view ------------------------------------------------------------------------


@dataclass
class Ledger:
    """What the terminals saw, and what they still owe (reversals)."""

    approvals: list[tuple[str, str, str, int]] = field(default_factory=list)
    """(RRN, MTI, PAN, amount) of every 00 a terminal received."""
    approved: list[Message] = field(default_factory=list)
    """Approved purchases that may still be reversed at random."""
    pending: list[tuple[Message, Message]] = field(default_factory=list)
    """(reversal to send, its original): owed until answered with anything but 91."""
    sent: int = 0
    answered: int = 0
    unanswered: int = 0
    codes: dict[str, int] = field(default_factory=dict)


class Terminals:
    def __init__(self, port: int, pans: list[str], rnd: random.Random, workers: int) -> None:
        self.port = port
        self.pans = pans
        self.rnd = rnd
        self.workers = workers
        self.ledger = Ledger()
        self.stan = itertools.count(1)
        self.new_traffic = True
        self.stopping = False
        self.in_flight = 0

    def _stan(self) -> str:
        return f"{next(self.stan) % 999999 + 1:06d}"

    def purchase(self) -> Message:
        pan = self.rnd.choice(self.pans)
        return build_request(
            "0200",
            terminal=TERMINAL,
            merchant=MERCHANT,
            pan=pan,
            amount=self.rnd.randint(1, 5000),
            stan=self._stan(),
        )

    def reversal(self, original: Message) -> Message:
        f = original.fields
        return build_request(
            "0400",
            terminal=TERMINAL,
            merchant=MERCHANT,
            pan=f["2"],
            amount=int(f["4"]),
            processing=f["3"],
            stan=self._stan(),
            extra={"90": original_data(original.mti, f["11"], f["7"])},
        )

    def _next(self) -> tuple[Message, Message | None] | None:
        ledger = self.ledger
        if ledger.pending and (not self.new_traffic or self.rnd.random() < 0.5):
            return ledger.pending.pop(0)
        if not self.new_traffic:
            return None
        if ledger.approved and self.rnd.random() < 0.08:
            original = ledger.approved.pop(self.rnd.randrange(len(ledger.approved)))
            return self.reversal(original), original
        return self.purchase(), None

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(self.workers):
                tg.start_soon(self._worker)

    async def _worker(self) -> None:
        while not self.stopping:
            try:
                stream = await anyio.connect_tcp("127.0.0.1", self.port)
            except OSError:
                await anyio.sleep(0.05)
                continue
            framed = FramedStream(stream, max_size=8192, partial_timeout=10.0)
            try:
                await self._session(framed)
            finally:
                await framed.aclose()

    async def _session(self, framed: FramedStream) -> None:
        while not self.stopping:
            job = self._next()
            if job is None:
                await anyio.sleep(0.05)
                continue
            msg, original = job
            self.in_flight += 1
            self.ledger.sent += 1
            try:
                with anyio.fail_after(15):
                    await framed.send_frame(CODEC.encode(msg))
                    resp = CODEC.decode(await framed.receive_frame())
            except (*_GONE, TimeoutError):
                self._no_answer(msg, original)
                return
            finally:
                self.in_flight -= 1
            self._answer(msg, original, resp)

    def _no_answer(self, msg: Message, original: Message | None) -> None:
        self.ledger.unanswered += 1
        if original is None:  # a purchase without answer: reverse it
            self.ledger.pending.append((self.reversal(msg), msg))
        else:  # a reversal without answer: repeat it as it was (a duplicate if it got in)
            self.ledger.pending.append((msg, original))

    def _answer(self, msg: Message, original: Message | None, resp: Message) -> None:
        ledger = self.ledger
        ledger.answered += 1
        rc = resp.fields.get("39", "")
        ledger.codes[f"{msg.mti}:{rc}"] = ledger.codes.get(f"{msg.mti}:{rc}", 0) + 1
        if rc == "00":
            f = msg.fields
            ledger.approvals.append((resp.fields["37"], msg.mti, f["2"], int(f["4"])))
            if original is None:
                ledger.approved.append(msg)
        if original is not None and rc == "91":
            ledger.pending.append((self.reversal(original), original))  # try again later


# -- the simulated issuers and the gateway process ----------------------------------------------


def issuer_server(issuer: str, data: Dataset, pki_dir: Path, port: int) -> IssuerServer:
    security = IssuerSecurity.from_dataset(data, issuer)
    book = AccountBook.from_cards(issuer, data.cards, data.issuer_behaviour.synthetic, security)
    ctx = pki.server_context(pki_dir, f"issuer-{issuer}", require_client_cert=True)
    host = IssuerHost(book, emv=EmvAuthenticator.for_issuer(data, issuer))
    return IssuerServer(host, ctx, port=port, allowed_clients=("switch",))  # the gateway's links


class Issuers:
    def __init__(self, tg: anyio.abc.TaskGroup, data: Dataset, pki_dir: Path) -> None:
        self.tg = tg
        self.servers = {i: issuer_server(i, data, pki_dir, free_port()) for i in ISSUERS}
        self.down: set[str] = set()
        self.kills = 0

    async def start(self) -> None:
        for server in self.servers.values():
            await self.tg.start(server.run)

    def book(self, issuer: str) -> AccountBook:
        return self.servers[issuer].host.book

    async def kill_for(self, issuer: str, seconds: float) -> None:
        if issuer in self.down:
            return
        self.down.add(issuer)
        self.kills += 1
        old = self.servers[issuer]
        old.stop()
        await anyio.sleep(seconds)
        new = old.restarted()
        await self.tg.start(new.run)
        self.servers[issuer] = new
        self.down.discard(issuer)

    async def fault_for(self, issuer: str, seconds: float, *, latency: float, drop: float) -> None:
        faults = self.servers[issuer].faults
        faults.latency_ms, faults.drop_ratio = latency, drop
        await anyio.sleep(seconds)
        faults.latency_ms, faults.drop_ratio = 0.0, 0.0

    def calm(self) -> None:
        for server in self.servers.values():
            server.faults.latency_ms = server.faults.drop_ratio = 0.0


def _reader_config(journal_conf: Path) -> Any:
    """The checker writes nothing: it opens the file with an in-process writer, never a
    writer process of its own beside the gateway's."""
    return dataclasses.replace(load_config(journal_conf), writer="loop")


def write_confs(
    work: Path, ports: dict[str, int], hsm: int, gw: int, admin: int, writer: str
) -> Path:
    keys = {name: os.urandom(32).hex() for name in ("data", "lookup", "chain")}
    (work / "journal.toml").write_text(
        "[journal]\n"
        f'path = "{work / "journal.sqlite3"}"\n'
        f'writer = "{writer}"\n'
        'active_key_id = "chaos"\n'
        f'keys = [{{ id = "chaos", hex = "{keys["data"]}" }}]\n'
        f'lookup_key = {{ hex = "{keys["lookup"]}" }}\n'
        f'chain_key = {{ hex = "{keys["chain"]}" }}\n'
    )
    limits = ", ".join(
        f'{{ issuer = "{i}", max_amount = 100000000, max_count = 1000 }}' for i in ISSUERS
    )
    links = "".join(
        f'[[links]]\nissuer = "{i}"\nendpoints = ["127.0.0.1:{p}"]\nconnections = 2\n'
        "timeout = 1.0\nbackoff_initial = 0.05\nbackoff_max = 0.5\n"
        for i, p in ports.items()
    )
    conf = work / "gateway.toml"
    conf.write_text(
        f'data = "{DEMO / "data.toml"}"\npki_dir = "{work / "pki"}"\nrisk = ""\n'
        f'journal = "{work / "journal.toml"}"\nshutdown_grace = 5.0\n'
        f"[terminal]\nport = {gw}\ntls_port = -1\nrequest_timeout = 10.0\n"
        f"[admin]\nport = {admin}\n[qr_api]\nport = -1\n"
        f'[hsm]\nendpoints = ["127.0.0.1:{hsm}"]\n'
        "[saf]\nreversal_delay = 0.2\npoll_interval = 0.2\nbackoff_base = 0.1\n"
        "backoff_max = 1.0\ntimeout = 2.0\n"
        f"[standin]\nfailure_threshold = 3\ncooldown = 1.0\nlimits = [{limits}]\n"
        '[log]\nlevel = "warning"\ntransactions = false\n' + links
    )
    return conf


class GatewayProcess:
    def __init__(self, conf: Path, port: int, admin: int, log: Path) -> None:
        self.conf, self.port, self.admin = conf, port, admin
        self.log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.proc: Process | None = None
        self.starts = 0
        self.start_seconds: list[float] = []

    async def start(self) -> None:
        started = time.perf_counter()
        self.proc = await anyio.open_process(
            [str(BIN / "gateway"), "run", "--conf", str(self.conf), "--backend", "asyncio"],
            stdin=subprocess.DEVNULL,
            stdout=self.log_fd,
            stderr=subprocess.STDOUT,
        )
        self.starts += 1
        async with httpx.AsyncClient() as http:
            with anyio.fail_after(30):
                while True:
                    if self.proc.returncode is not None:
                        raise RuntimeError(f"gateway exited with {self.proc.returncode}")
                    try:
                        ready = await http.get(f"http://127.0.0.1:{self.admin}/readyz", timeout=1)
                        if ready.status_code in (200, 503):
                            break
                    except httpx.HTTPError:
                        pass
                    await anyio.sleep(0.05)
        self.start_seconds.append(time.perf_counter() - started)

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            return await self.proc.wait()

    async def ready(self, timeout: float = 15.0) -> bool:
        async with httpx.AsyncClient() as http:
            with anyio.move_on_after(timeout):
                while True:
                    try:
                        if (await http.get(f"http://127.0.0.1:{self.admin}/readyz")).is_success:
                            return True
                    except httpx.HTTPError:
                        pass
                    await anyio.sleep(0.1)
        return False


# -- one run ---------------------------------------------------------------------------------


async def saf_depth(journal_conf: Path) -> int:
    async with open_journal(_reader_config(journal_conf)) as journal:
        return sum(d.depth for d in await journal.saf_depths())


async def check_books(
    journal_conf: Path, ledger: Ledger, issuers: Issuers, opening: dict[str, tuple[str, int]]
) -> dict[str, Any]:
    problems: list[str] = []
    now = dt.datetime.now(dt.UTC)
    async with open_journal(_reader_config(journal_conf)) as journal:
        verified = await journal.verify()
        if not verified.ok:
            problems.append(f"chain broken at seq {verified.broken_seq}: {verified.reason}")
        for rrn, mti, _pan, amount in ledger.approvals:
            stored = await journal.get(rrn)
            if stored is None or stored.response_code != "00" or stored.amount != amount:
                problems.append(f"approval {mti} rrn {rrn} seen by a terminal: not in the journal")
        checked = 0
        for pan, (issuer, balance) in opening.items():
            txns = await journal.find_by_pan(
                pan, now - dt.timedelta(days=2), now + dt.timedelta(days=1), limit=1_000_000
            )
            booked = sum(
                t.amount or 0
                for t in txns
                if (t.mti or "").startswith("02")
                and (t.processing_code or "")[:2] in ("00", "01")
                and t.response_code == "00"
                and t.state != TxnState.REVERSED
            )
            account = issuers.book(issuer).find(pan)
            spent = balance - (account.balance if account is not None else balance)
            if spent != booked:
                masked = f"{pan[:6]}******{pan[-4:]}"
                problems.append(f"card {masked}: issuer debited {spent}, journal says {booked}")
            checked += 1
        depths = {d.issuer_id: d.depth for d in await journal.saf_depths() if d.depth}
        if depths:
            problems.append(f"SAF not drained: {depths}")
        in_flight = await journal.in_flight()
        if in_flight:
            problems.append(f"{len(in_flight)} transactions left sent_to_issuer")
        stats = {
            "events": verified.count,
            "stood_in": len(await journal.in_state(TxnState.STOOD_IN))
            + len(await journal.in_state(TxnState.ADVISED)),
            "reversed": len(await journal.in_state(TxnState.REVERSED)),
            "timed_out": len(await journal.in_state(TxnState.TIMED_OUT)),
        }
    return {"cards_checked": checked, "problems": problems, **stats}


async def chaos(args: argparse.Namespace, work: Path) -> int:
    rnd = random.Random(args.seed)
    data = load_dataset(DEMO / "data.toml")
    pki_dir = pki.ensure_pki(work / "pki", ["gateway", "switch", *(f"issuer-{i}" for i in ISSUERS)])
    summary: dict[str, Any] = {"rounds": [], "seed": args.seed}
    failed = False
    async with anyio.create_task_group() as tg:
        hsm_cfg = dataclasses.replace(load_hsm_config(DEMO / "hsm.toml"), port=0)
        hsm_port = await tg.start(HsmServer(hsm_cfg).serve)
        issuers = Issuers(tg, data, pki_dir)
        await issuers.start()
        ports = {i: s.port for i, s in issuers.servers.items()}
        gw_port, admin = free_port(), free_port()
        conf = write_confs(work, ports, hsm_port, gw_port, admin, args.writer)
        prefixes = {r.issuer: r.prefix for r in data.issuer_behaviour.synthetic}
        pans = [synthetic_pan(prefixes[i], rnd) for i in ("alpha", "beta") for _ in range(12)]
        pans += list(GAMMA_CARDS)
        opening: dict[str, tuple[str, int]] = {}
        for pan in pans:
            issuer = "gamma" if pan in GAMMA_CARDS else ("alpha" if pan[0] == "4" else "beta")
            account = issuers.book(issuer).find(pan)
            assert account is not None
            opening[pan] = (issuer, account.balance)
        gateway = GatewayProcess(conf, gw_port, admin, work / "gateway.log")
        terminals = Terminals(gw_port, pans, rnd, args.workers)
        await gateway.start()
        await gateway.ready()
        tg.start_soon(terminals.run)
        for number in range(1, args.rounds + 1):
            started = time.perf_counter()
            kills = 0
            terminals.new_traffic = True
            async with anyio.create_task_group() as faults:
                for _ in range(args.kills):
                    await anyio.sleep(rnd.uniform(0.3, 1.2))
                    roll = rnd.random()
                    issuer = rnd.choice(ISSUERS)
                    if roll < 0.35:
                        faults.start_soon(issuers.kill_for, issuer, rnd.uniform(1.0, 4.0))
                    elif roll < 0.5:
                        slow = partial(issuers.fault_for, issuer, 1.5, latency=1500, drop=0)
                        faults.start_soon(slow)
                    elif roll < 0.6:
                        lossy = partial(issuers.fault_for, issuer, 1.0, latency=0, drop=0.5)
                        faults.start_soon(lossy)
                    await gateway.kill()
                    kills += 1
                    await gateway.start()
            issuers.calm()
            # Settle: no new purchases; terminals finish their reversals; SAF drains.
            terminals.new_traffic = False
            await gateway.ready()
            with anyio.move_on_after(120):
                while terminals.ledger.pending or terminals.in_flight:  # noqa: ASYNC110
                    await anyio.sleep(0.1)
            with anyio.move_on_after(120):
                while await saf_depth(work / "journal.toml"):  # noqa: ASYNC110
                    await anyio.sleep(0.2)
            code = await gateway.terminate()
            report = await check_books(work / "journal.toml", terminals.ledger, issuers, opening)
            ledger = terminals.ledger
            result = {
                "round": number,
                "sigkills": kills,
                "issuer_kills_total": issuers.kills,
                "seconds": round(time.perf_counter() - started, 1),
                "requests_sent_total": ledger.sent,
                "answered_total": ledger.answered,
                "unanswered_total": ledger.unanswered,
                "approvals_seen_total": len(ledger.approvals),
                "reversals_owed": len(ledger.pending),
                "sigterm_exit": code,
                "discrepancies": len(report["problems"]),
                **report,
            }
            failed = failed or bool(report["problems"]) or bool(ledger.pending) or code != 0
            summary["rounds"].append(result)
            print(orjson.dumps(result).decode(), flush=True)
            if number < args.rounds:
                await gateway.start()
                await gateway.ready()
        terminals.stopping = True
        summary["codes"] = terminals.ledger.codes
        summary["gateway_start_seconds_avg"] = round(
            sum(gateway.start_seconds) / len(gateway.start_seconds), 2
        )
        summary["ok"] = not failed
        tg.cancel_scope.cancel()
    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.chaos", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kills", type=int, default=20, help="gateway SIGKILLs per round")
    parser.add_argument("--workers", type=int, default=8, help="concurrent terminal connections")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", default=str(ROOT / "var" / "chaos"))
    parser.add_argument(
        "--writer",
        choices=("process", "loop"),
        default="process",
        help="the gateway's journal writer (the demo's is a process)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.kills < 1 or args.workers < 1:
        parser.error("--rounds, --kills and --workers must be at least 1")
    configure("warning")
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    for stale in work.glob("journal.sqlite3*"):
        stale.unlink()
    return anyio.run(chaos, args, work)


if __name__ == "__main__":
    raise SystemExit(main())
