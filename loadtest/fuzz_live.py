"""``loadtest fuzz-live``: mutated valid messages sent to a running stack's ports, in batches;
after each batch every process must be alive and a normal purchase still get ``00``.

    loadtest fuzz-live --stack --batches 5 --count 200                  # a stack of its own
    loadtest fuzz-live --count 100 --log var/demo.log                   # make demo's ports

Targets (``--targets``, all by default), 127.0.0.1 only:

* ``terminal``  the gateway's terminal TCP port: ISO 8583 purchases (magstripe, PIN under the
  TPK, DUKPT with MAC, contactless with an ARQC) and a reversal, mutated (``loadtest.mutate``);
* ``tls``       the same on the terminal TLS port (trusting the demo CA);
* ``qr``        the QR API: payments, refunds, verifications, MPM codes, status reads, with the
  demo acquirer's key, mutated as HTTP (body members, head, lengths, chunking);
* ``admin``     the admin API: every route, with a viewer token;
* ``hsm``       the HSM simulator: the fuzz corpus's host commands (``fuzz/corpus/hsm-request``);
* ``issuer``    each issuer simulator's port over mutual TLS with the demo's ``switch`` client
  certificate (the switch's issuer links): purchases and sign-ons. The gateway itself listens
  for no issuer.

Each case is one connection: its bytes, then what comes back within ``--read-timeout``. An
answer that holds a Python traceback is a finding. Cases come from ``--source`` (127.0.0.2 by
default, loopback too), so the APIs' per-address throttles, which a flood of bad credentials
rightly trips, do not refuse the checks after each batch, which come from 127.0.0.1: every
process alive (with ``--stack``; otherwise every port still accepts), a magstripe purchase and
a PIN purchase (through the HSM) answered ``00``, a QR payment ``00``, ``/readyz`` 200.

With ``--stack`` (or ``--log FILE``) the logs are read at the end: no traceback and no clear
PAN (the dataset's card numbers, or any 13 to 19 digit Luhn-valid run not starting with 0).
Exit status 0 when every check held, 1 when one did not, 2 when the run could not start.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import re
import shutil
import ssl
import sys
import tempfile
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import orjson

from loadtest.bench import DEMO, ROOT, BenchError, Stack, start_stack
from loadtest.mix import MixError, TxnFactory, load_data
from loadtest.mutate import HttpSeed, IsoFields, frame, framed_case, http_case
from loadtest.runs import backend_args

HOST = "127.0.0.1"
TARGETS = ("terminal", "tls", "cup", "qr", "admin", "hsm", "issuer")
TRACEBACK = re.compile(rb"Traceback \(most recent call last\)|File \"[^\"]+\.py\", line \d+")
TOKEN = re.compile(r"[0-9A-Za-z]+")
DIGIT_RUN = re.compile(r"(?<![0-9])[1-9][0-9]{12,18}(?![0-9])")
HEX_BLOB = re.compile(r"[0-9a-fA-F]{24,}")
"""A digest, key check or cipher text: digit runs inside one are not card numbers (a SHA-256
in hex holds a Luhn-valid 13-digit run about once in three)."""
DEMO_VIEWER = "demo-viewer-TEST-ONLY"


@dataclass
class Target:
    name: str
    port: int
    cases: Callable[[random.Random], tuple[str, bytes]]
    tls: ssl.SSLContext | None = None
    hostname: str | None = None


@dataclass
class Tally:
    sent: Counter[str] = field(default_factory=Counter)
    """Cases by target and kind."""
    outcomes: Counter[str] = field(default_factory=Counter)
    """By target and outcome: answered, closed (no byte back), silent, refused, tls-refused."""
    findings: list[str] = field(default_factory=list)


# -- targets ----------------------------------------------------------------------------


def iso_seeds(factory: TxnFactory) -> list[bytes]:
    """Valid terminal requests of every kind, and a reversal of the first purchase."""
    kinds = ("magstripe", "pin_tpk", "pin_dukpt", "contactless")
    seeds = [factory.build(k).payload for k in kinds if factory.missing(k) is None]
    first = factory.build("magstripe")
    seeds.append(first.payload)
    if first.original is not None:
        seeds.append(factory.reversal(first.original).payload)
    return seeds


def link_seeds(factory: TxnFactory, issuer: str) -> list[bytes]:
    """Purchases in the issuer's own ranges and a sign-on, as the switch's links send them."""
    from protocols.message import Message

    ranges = [r for r in factory.ranges if r.issuer == issuer]
    saved = factory.ranges
    factory.ranges = ranges or saved
    try:
        seeds = [factory.build("magstripe").payload, factory.build("pin_tpk").payload]
    finally:
        factory.ranges = saved
    f7 = time.strftime("%m%d%H%M%S", time.gmtime())
    sign_on = Message("0800", {"7": f7, "11": factory.next_stan(), "70": "001"})
    seeds.append(factory.codec.encode(sign_on.mti, sign_on.fields))
    return seeds


def hsm_seeds() -> list[bytes]:
    corpus = ROOT / "fuzz" / "corpus" / "hsm-request"
    seeds = [p.read_bytes() for p in sorted(corpus.iterdir())] if corpus.is_dir() else []
    return seeds or [b"0001NC"]


def qr_seeds(factory: TxnFactory) -> list[HttpSeed]:
    auth = (("Authorization", f"Bearer {factory.qr_api_key}"), ("Content-Type", "application/json"))
    body = orjson.dumps(factory.qr_body())
    seeds = [
        HttpSeed("POST", "/v1/qr/payments", auth, body),
        HttpSeed("POST", "/v1/qr/payments/pay_0000/refund", auth, b'{"amount": 100}'),
        HttpSeed("POST", "/v1/qr/payments/pay_0000/verify", auth, b'{"otp": "123456"}'),
        HttpSeed(
            "POST",
            "/v1/qr/mpm",
            auth,
            orjson.dumps({"merchant_id": factory.qr_merchant, "amount": 100, "currency": "156"}),
        ),
        HttpSeed("GET", "/v1/qr/payments/pay_0000", auth),
    ]
    corpus = ROOT / "fuzz" / "corpus" / "qr-api"
    if corpus.is_dir():
        seeds += [
            HttpSeed("POST", "/v1/qr/payments", auth, p.read_bytes())
            for p in sorted(corpus.iterdir())
        ]
    return seeds


def admin_seeds(token: str) -> list[HttpSeed]:
    auth = (("Authorization", f"Bearer {token}"),)
    paths = ("/healthz", "/readyz", "/metrics", "/status", "/alerts")
    seeds = [HttpSeed("GET", p, auth) for p in paths]
    seeds.append(HttpSeed("POST", "/admin/reload", auth, b"{}"))
    return seeds


def build_targets(
    names: Iterable[str],
    *,
    factory: TxnFactory,
    terminal_port: int,
    tls_port: int,
    qr_port: int,
    admin_port: int,
    admin_token: str,
    hsm_port: int,
    issuer_ports: dict[str, int],
    pki_dir: Path,
    conf: Path = DEMO,
    cup_port: int = 0,
) -> list[Target]:
    """Every target that has a port; ISO 8583 seeds in each port's dialect and framing (the
    terminal ports' from ``gateway.toml``, each issuer's from ``issuer-sim.toml``)."""
    from kit import pki
    from protocols.dialects import get_dialect
    from protocols.fastcodec import best_codec

    wanted = set(names)
    out: list[Target] = []
    spec = get_dialect("terminal")
    codec = best_codec(spec)
    iso = iso_seeds(factory)
    fields = IsoFields(codec, spec, iso)
    if "terminal" in wanted and terminal_port:
        out.append(Target("terminal", terminal_port, lambda r: framed_case(iso, r, fields)))
    if "tls" in wanted and tls_port:
        out.append(
            Target(
                "tls",
                tls_port,
                lambda r: framed_case(iso, r, fields),
                tls=pki.client_context(pki_dir, None),
                hostname="localhost",
            )
        )
    if "qr" in wanted and qr_port:
        qr = qr_seeds(factory)
        payment = qr[0]

        def fresh_payment(_: random.Random) -> HttpSeed:
            return HttpSeed(payment.method, payment.path, payment.headers,
                            orjson.dumps(factory.qr_body()))  # fmt: skip

        out.append(Target("qr", qr_port, lambda r: http_case(qr, r, fresh_payment)))
    if "admin" in wanted and admin_port:
        admin = admin_seeds(admin_token)
        out.append(Target("admin", admin_port, lambda r: http_case(admin, r)))
    if "hsm" in wanted and hsm_port:
        hsm = hsm_seeds()
        out.append(Target("hsm", hsm_port, lambda r: framed_case(hsm, r)))
    if "issuer" in wanted:
        client = pki.client_context(pki_dir, "switch")
        for issuer, port in sorted(issuer_ports.items()):
            ep_codec, ep_framing = issuer_link(conf, issuer)
            link = _reencode(codec, ep_codec, link_seeds(factory, issuer))
            lf = IsoFields(ep_codec, spec, link)
            out.append(
                Target(
                    f"issuer-{issuer}",
                    port,
                    partial(_framed, link, lf, ep_framing),
                    tls=client,
                    hostname=f"issuer-{issuer}",
                )
            )
    if "cup" in wanted and cup_port:
        cup_codec, cup_framing = terminal_listener(conf, "cup")
        cup = _reencode(codec, cup_codec, iso)
        out.append(
            Target(
                "cup",
                cup_port,
                partial(_framed, cup, IsoFields(cup_codec, spec, cup), cup_framing),
            )
        )
    return out


def _reencode(source: Any, target: Any, seeds: list[bytes]) -> list[bytes]:
    """``seeds`` in another dialect (those it can carry; all as they are if none)."""
    out = []
    for seed in seeds:
        try:
            out.append(target.encode(source.decode(seed)))
        except Exception:  # a message this dialect cannot carry is no seed for it
            continue
    return out or list(seeds)


def _framed(
    seeds: list[bytes], fields: IsoFields, framing: str, rnd: random.Random
) -> tuple[str, bytes]:
    return framed_case(seeds, rnd, fields, framing)


def issuer_link(conf: Path, issuer: str) -> tuple[Any, str]:
    """(codec, framing) of an issuer simulator's link, from the profile's issuer-sim.toml."""
    import datetime as dt

    from issuer_sim.config import IssuerSimConfig
    from kit.conf import load
    from kit.linkdialect import link_codec

    ep = load(IssuerSimConfig, conf / "issuer-sim.toml").endpoint(issuer)
    codec = link_codec(
        ep.dialect, header=ep.header, translation=ep.translation,
        clock=lambda: dt.datetime.now(dt.UTC),
    )  # fmt: skip
    return codec, ep.framing


def terminal_listener(conf: Path, name: str) -> tuple[Any, str]:
    """(codec, framing) of one of the gateway's further terminal listeners (read from the
    profile's TOML: the load kit speaks the wire, it does not import the switch)."""
    from protocols.dialects import get_dialect
    from protocols.fastcodec import best_codec

    doc = tomllib.loads((conf / "gateway.toml").read_text())
    listeners = doc.get("terminal", {}).get("listeners", [])
    listener = next(x for x in listeners if x.get("name") == name)
    dialect = listener.get("dialect", "iso87-ascii")
    return best_codec(get_dialect(dialect)), str(listener.get("framing", "binary2"))


# -- sending ----------------------------------------------------------------------------


async def one_case(
    target: Target, kind: str, data: bytes, tally: Tally, source: str, read_timeout: float
) -> None:
    tally.sent[f"{target.name} {kind}"] += 1
    try:
        with anyio.fail_after(5):
            stream: Any = await anyio.connect_tcp(HOST, target.port, local_host=source)
            if target.tls is not None:
                from anyio.streams.tls import TLSStream

                stream = await TLSStream.wrap(
                    stream,
                    ssl_context=target.tls,
                    hostname=target.hostname,
                    standard_compatible=False,
                )
    except (OSError, anyio.BrokenResourceError, ssl.SSLError, TimeoutError) as exc:
        outcome = "tls-refused" if isinstance(exc, ssl.SSLError) else "refused"
        tally.outcomes[f"{target.name} {outcome}"] += 1
        return
    answer = bytearray()
    outcome = "silent"
    async with stream:
        try:
            # Several writes: a whole request in one segment is the easy case.
            cut = len(data) // 2 if len(data) > 64 else len(data)
            await stream.send(data[:cut])
            if data[cut:]:
                await stream.send(data[cut:])
            with anyio.move_on_after(read_timeout):
                while len(answer) < 65_536:
                    chunk = await stream.receive(65_536)
                    answer += chunk
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            outcome = "closed"
        except (OSError, anyio.BrokenResourceError, ssl.SSLError):
            outcome = "reset"
    if answer:
        outcome = "answered"
    tally.outcomes[f"{target.name} {outcome}"] += 1
    if TRACEBACK.search(answer):
        tally.findings.append(
            f"{target.name}: a traceback in the answer to a {kind} case: {bytes(answer[:200])!r}"
        )


async def fuzz_batch(
    targets: Sequence[Target],
    count: int,
    rnd: random.Random,
    tally: Tally,
    *,
    source: str,
    concurrency: int,
    read_timeout: float,
    deadline: float,
) -> None:
    limiter = anyio.CapacityLimiter(concurrency)

    async def run(target: Target, kind: str, data: bytes) -> None:
        async with limiter:
            if time.monotonic() < deadline:
                await one_case(target, kind, data, tally, source, read_timeout)

    async with anyio.create_task_group() as tg:
        for _ in range(count):
            for target in targets:
                kind, data = target.cases(rnd)
                tg.start_soon(run, target, kind, data)


# -- checks after each batch -------------------------------------------------------------


async def purchase_code(port: int, payload: bytes) -> str:
    from protocols.dialects import get_dialect
    from protocols.fastcodec import best_codec
    from protocols.framing import Framer, encode_frame

    codec = best_codec(get_dialect("terminal"))
    framer = Framer(8192)
    with anyio.fail_after(10):
        async with await anyio.connect_tcp(HOST, port) as stream:
            await stream.send(encode_frame(payload))
            while True:
                framer.feed(await stream.receive())
                answer = framer.next_frame()
                if answer is not None:
                    return str(codec.decode(answer).fields.get("39", "--"))


async def health(
    factory: TxnFactory,
    *,
    terminal_port: int,
    qr_url: str,
    admin_port: int,
    stack: Stack | None,
    ports: Sequence[tuple[str, int]],
    notes: list[str] | None = None,
    pin_noted: bool = False,
) -> list[str]:
    """What is wrong with the stack now (empty: all well). With ``notes`` (a hostile issuer
    runs), /readyz other than 200 is noted there, not wrong: a switch that finds an issuer's
    link broken is right to say it is not ready. ``pin_noted`` (a hostile HSM runs): the PIN
    purchase's answer is noted too, as the HSM it needs answers garbage."""
    import httpx

    wrong: list[str] = []
    if stack is not None:
        wrong += [
            f"{s.name} exited ({s.proc.returncode})"
            for s in stack.services
            if s.proc.poll() is not None
        ]
    for name, port in ports:
        try:
            with anyio.fail_after(5):
                await (await anyio.connect_tcp(HOST, port)).aclose()
        except (OSError, TimeoutError):
            wrong.append(f"{name} port {port} no longer accepts")
    for kind in ("magstripe", "pin_tpk"):
        if factory.missing(kind) is not None:
            continue
        told = notes if pin_noted and kind == "pin_tpk" and notes is not None else wrong
        try:
            code = await purchase_code(terminal_port, factory.build(kind).payload)
        except (OSError, TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError) as exc:
            told.append(f"{kind} purchase: no answer ({type(exc).__name__})")
            continue
        if code != "00":
            told.append(f"{kind} purchase answered {code}, not 00")
    async with httpx.AsyncClient(timeout=10) as client:
        if qr_url and factory.qr_api_key:
            try:
                r = await client.post(
                    f"{qr_url}/v1/qr/payments",
                    json=factory.qr_body(),
                    headers={"Authorization": f"Bearer {factory.qr_api_key}"},
                )
                code = (
                    r.json().get("response_code")
                    if r.status_code < 300
                    else f"HTTP {r.status_code}"
                )
            except (httpx.HTTPError, ValueError) as exc:
                code = type(exc).__name__
            if code != "00":
                wrong.append(f"QR payment: {code}, not 00")
        if admin_port:
            try:
                status = (await client.get(f"http://{HOST}:{admin_port}/readyz")).status_code
            except httpx.HTTPError as exc:
                status = 0
                wrong.append(f"/readyz: {type(exc).__name__}")
            if status and status != 200:
                (notes if notes is not None else wrong).append(f"/readyz answered {status}")
    return wrong


# -- logs -------------------------------------------------------------------------------


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def mask(pan: str) -> str:
    return f"{pan[:6]}{'*' * (len(pan) - 10)}{pan[-4:]}"


def scan_logs(text: str, known_pans: Iterable[str]) -> list[str]:
    """Tracebacks and clear card numbers in log text (masked in what is returned)."""
    found: list[str] = []
    pans = set(known_pans)
    for n, line in enumerate(text.splitlines(), 1):
        if TRACEBACK.search(line.encode("utf-8", "replace")):
            found.append(f"line {n}: a traceback: {line[:160]}")
        found += [f"line {n}: the dataset's card {mask(p)} in clear" for p in pans if p in line]
        for token in TOKEN.findall(line):
            if len(token) < 13 or (HEX_BLOB.fullmatch(token) and not token.isdigit()):
                continue
            for m in DIGIT_RUN.finditer(token):
                run = m.group()
                if run not in pans and luhn_ok(run):
                    found.append(
                        f"line {n}: a Luhn-valid {len(run)}-digit run {mask(run)} in clear"
                    )
    return found


def dataset_pans(factory: TxnFactory) -> list[str]:
    return [c.pan for c in factory.dataset.cards]


# -- the command ------------------------------------------------------------------------


@dataclass
class Plan:
    targets: list[str]
    batches: int
    count: int
    seconds: float
    concurrency: int
    read_timeout: float
    source: str
    seed: int


async def campaign(
    plan: Plan,
    factory: TxnFactory,
    targets: list[Target],
    *,
    terminal_port: int,
    qr_url: str,
    admin_port: int,
    stack: Stack | None,
    emit: Callable[[str], None],
    notes: list[str] | None = None,
    pin_noted: bool = False,
) -> tuple[Tally, list[str]]:
    """The batches; ``factory`` builds the checks' purchases (not in a hostile issuer's
    ranges), ``notes`` collects what a hostile issuer makes the switch say."""
    rnd = random.Random(plan.seed)
    tally = Tally()
    problems: list[str] = []
    deadline = time.monotonic() + plan.seconds
    ports = [(t.name, t.port) for t in targets]
    for batch in range(1, plan.batches + 1):
        if time.monotonic() >= deadline:
            emit(f"time is up after {batch - 1} batches")
            break
        t0 = time.monotonic()
        await fuzz_batch(
            targets,
            plan.count,
            rnd,
            tally,
            source=plan.source,
            concurrency=plan.concurrency,
            read_timeout=plan.read_timeout,
            deadline=deadline,
        )
        wrong = await health(
            factory,
            terminal_port=terminal_port,
            qr_url=qr_url,
            admin_port=admin_port,
            stack=stack,
            ports=ports,
            notes=notes,
            pin_noted=pin_noted,
        )
        sent = sum(tally.sent.values())
        state = "all alive, purchase 00" if not wrong else "; ".join(wrong)
        emit(f"batch {batch}: {sent} cases so far, {time.monotonic() - t0:.1f} s: {state}")
        problems += [f"after batch {batch}: {w}" for w in wrong]
        if wrong and stack is not None and any(s.proc.poll() is not None for s in stack.services):
            break  # a process is gone: the next batches would only say so again
    return tally, problems


def report(tally: Tally, problems: Sequence[str], log_findings: Sequence[str]) -> tuple[bool, str]:
    lines = ["", "cases by target and outcome:"]
    by_target: dict[str, Counter[str]] = {}
    for key, n in tally.outcomes.items():
        target, outcome = key.rsplit(" ", 1)
        by_target.setdefault(target, Counter())[outcome] += n
    for target, c in sorted(by_target.items()):
        lines.append(
            f"  {target:<16} {sum(c.values()):>6}  "
            + ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
        )
    kinds: Counter[str] = Counter()
    for key, n in tally.sent.items():
        kinds[key.rsplit(" ", 1)[1]] += n
    lines.append("mutations: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    ok = not problems and not tally.findings and not log_findings
    for title, items in (
        ("after a batch", problems),
        ("in answers", tally.findings),
        ("in the logs", log_findings),
    ):
        lines.append(f"{'FAIL' if items else 'PASS'}  {title}: {len(items)} finding(s)")
        lines += [f"    {item}" for item in items[:20]]
    lines.append(f"verdict: {'PASS' if ok else 'FAIL'}")
    return ok, "\n".join(lines)


def _run(args: argparse.Namespace, tmp: Path) -> int:
    factory = TxnFactory(load_data(args.conf / "data.toml"), rnd=random.Random(args.seed))
    plan = Plan(
        targets=[t.strip() for t in args.targets.split(",") if t.strip()],
        batches=args.batches,
        count=args.count,
        seconds=args.seconds,
        concurrency=args.concurrency,
        read_timeout=args.read_timeout,
        source=args.source,
        seed=args.seed,
    )
    unknown = set(plan.targets) - set(TARGETS)
    if unknown:
        print(
            f"loadtest fuzz-live: unknown targets {sorted(unknown)}; known: {TARGETS}",
            file=sys.stderr,
        )
        return 2
    logs: list[Path] = list(args.log)
    hostile_id = args.hostile_issuer
    hostile: list[Any] = []
    notes: list[str] | None = None
    if hostile_id:
        # The checks' purchases and QR payments go to the other issuers; the hostile one gets
        # purchases of its own ranges through the switch (target "via-switch").
        ranges = factory.ranges
        mine = tuple(r.prefix for r in ranges if r.issuer == hostile_id)
        others = tuple(r.prefix for r in ranges if r.issuer != hostile_id)
        if not mine or not others:
            print(f"loadtest fuzz-live: {hostile_id!r} needs synthetic ranges of its own and"
                  " another issuer's", file=sys.stderr)  # fmt: skip
            return 2
        data = load_data(args.conf / "data.toml")
        factory = TxnFactory(data, prefixes=others, rnd=random.Random(args.seed))
        hostile_factory = TxnFactory(data, prefixes=mine, rnd=random.Random(args.seed + 1))
        notes = []

    if args.hostile_hsm:
        # The checks' purchases go to issuers whose links need no MAC (the HSM computes it),
        # and their PIN purchase is only noted; PIN purchases go through the switch.
        data = load_data(args.conf / "data.toml")
        macless = {i.id for i in data.issuers if i.zak is None}
        plain = tuple(r.prefix for r in factory.ranges if r.issuer in macless)
        if not plain:
            print("loadtest fuzz-live: no synthetic range of an issuer without a link MAC",
                  file=sys.stderr)  # fmt: skip
            return 2
        factory = TxnFactory(data, prefixes=plain, rnd=random.Random(args.seed))
        hostile_factory = TxnFactory(data, rnd=random.Random(args.seed + 1))
        notes = []

    def start_hostile(stack: Stack) -> None:
        thread: Any
        if args.hostile_hsm:
            from loadtest.hostile_hsm import HostileHsmThread

            thread = HostileHsmThread(
                args.conf, stack.ports[1500], ratio=args.hostile_ratio, seed=args.seed
            )
        else:
            from loadtest.hostile_issuer import HostileThread

            thread = HostileThread(
                args.conf, hostile_id, stack.issuer_ports[hostile_id],
                ratio=args.hostile_ratio, seed=args.seed,
            )  # fmt: skip
        thread.start()
        hostile.append(thread)

    hostile_any = bool(hostile_id or args.hostile_hsm)

    with contextlib.ExitStack() as stack_cm:
        stack: Stack | None = None
        if args.stack:
            sim_doc = tomllib.loads((args.conf / "issuer-sim.toml").read_text())
            sims = [i["id"] for i in sim_doc.get("issuers", []) if i["id"] != hostile_id]
            stack = stack_cm.enter_context(
                start_stack(
                    args.conf, tmp, backend="uvloop", terminal_tls=True, log_level="info",
                    log_transactions=True, issuers=sims if hostile_id else None,
                    hsm=not args.hostile_hsm, further_listeners=True,
                    before_gateway=start_hostile if hostile_any else None,
                )
            )  # fmt: skip
            stack_cm.callback(lambda: [h.stop() for h in hostile])
            assert stack.log is not None
            logs.append(stack.log)
            ports = {
                "terminal": stack.terminal_port,
                "tls": stack.terminal_tls_port,
                "qr": int(stack.qr_url.rsplit(":", 1)[1]) if stack.qr_url else 0,
                "admin": stack.admin_port,
                "hsm": stack.hsm_port,
                "cup": max(0, stack.ports.get(8585, 0)),
            }
            issuers, token, pki_dir = stack.issuer_ports, stack.admin_token, stack.pki_dir
        else:
            ports = {
                "terminal": args.terminal_port, "tls": args.tls_port, "qr": args.qr_port,
                "admin": args.admin_port, "hsm": args.hsm_port, "cup": args.cup_port,
            }  # fmt: skip
            pairs = [item.split("=", 1) for item in args.issuer]
            issuers = {k: int(v) for k, v in pairs}
            token, pki_dir = args.admin_token, args.pki_dir
        targets = build_targets(
            plan.targets,
            factory=factory,
            terminal_port=ports["terminal"],
            tls_port=ports["tls"],
            qr_port=ports["qr"],
            admin_port=ports["admin"],
            admin_token=token,
            hsm_port=ports["hsm"],
            issuer_ports=issuers,
            pki_dir=pki_dir,
            conf=args.conf,
            cup_port=ports["cup"],
        )
        if args.hostile_hsm:
            targets = [t for t in targets if t.name != "hsm"]
            targets.append(
                Target(
                    "via-switch-to-hsm",
                    ports["terminal"],
                    lambda r: ("pin-purchase", frame(hostile_factory.build("pin_tpk").payload)),
                )
            )
        if hostile_id:
            targets = [t for t in targets if t.name != f"issuer-{hostile_id}"]
            targets.append(
                Target(
                    f"via-switch-to-{hostile_id}",
                    ports["terminal"],
                    lambda r: ("purchase", frame(hostile_factory.build("magstripe").payload)),
                )
            )
        qr_url = f"http://{HOST}:{ports['qr']}" if ports["qr"] else ""
        print(
            f"fuzz-live: {', '.join(t.name for t in targets)}; {plan.batches} batches of"
            f" {plan.count} cases per target, at most {plan.seconds:g} s, seed {plan.seed},"
            f" from {plan.source}",
            flush=True,
        )
        name, options = backend_args("uvloop")
        tally, problems = anyio.run(
            lambda: campaign(
                plan, factory, targets, terminal_port=ports["terminal"], qr_url=qr_url,
                admin_port=ports["admin"], stack=stack, emit=lambda s: print(s, flush=True),
                notes=notes, pin_noted=args.hostile_hsm,
            ),
            backend=name,
            backend_options=options,
        )  # fmt: skip
        if stack is not None:
            time.sleep(0.5)  # the last lines reach the log
    log_findings: list[str] = []
    for path in logs:
        text = path.read_text(errors="replace") if path.exists() else ""
        log_findings += [f"{path.name}: {f}" for f in scan_logs(text, dataset_pans(factory))]
        if args.keep_logs is not None and path.exists():
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, args.keep_logs / path.name)
    ok, text = report(tally, problems, log_findings)
    if hostile:
        who = "HSM" if args.hostile_hsm else f"issuer {hostile_id}"
        seen = Counter(notes or [])
        text += (
            f"\nhostile {who}: answers {dict(hostile[0].answers)}; noted meanwhile (not"
            f" failures): {dict(seen) or 'nothing'}"
        )
    print(text, flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(
            orjson.dumps(
                {
                    "plan": plan.__dict__,
                    "sent": dict(tally.sent),
                    "outcomes": dict(tally.outcomes),
                    "answer_findings": tally.findings,
                    "problems": problems,
                    "log_findings": log_findings,
                    "hostile_answers": dict(hostile[0].answers) if hostile else None,
                    "notes": notes,
                    "pass": ok,
                },
                option=orjson.OPT_INDENT_2,
            )
        )
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="loadtest fuzz-live",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--stack", action="store_true", help="start a demo stack of its own")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--count", type=int, default=200, help="cases per target per batch")
    parser.add_argument("--seconds", type=float, default=300.0, help="stop after this long")
    parser.add_argument("--concurrency", type=int, default=16, help="connections at once")
    parser.add_argument("--read-timeout", type=float, default=0.3, help="per case, seconds")
    parser.add_argument("--source", default="127.0.0.2", help="loopback address cases come from")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--conf", type=Path, default=DEMO, help="profile directory (dataset)")
    parser.add_argument("--terminal-port", type=int, default=8583)
    parser.add_argument("--tls-port", type=int, default=8584)
    parser.add_argument("--qr-port", type=int, default=8080)
    parser.add_argument("--admin-port", type=int, default=9090)
    parser.add_argument("--admin-token", default=DEMO_VIEWER)
    parser.add_argument("--hsm-port", type=int, default=1500)
    parser.add_argument("--cup-port", type=int, default=8585, help="UnionPay-style listener")
    parser.add_argument(
        "--issuer",
        action="append",
        default=[],
        help="ID=PORT of an issuer simulator (default: alpha=9583 beta=9584 gamma=9585)",
    )
    parser.add_argument("--pki-dir", type=Path, default=ROOT / "var" / "certs")
    parser.add_argument(
        "--hostile-issuer",
        default="",
        help="with --stack: this issuer (alpha or beta: it needs synthetic cards) answers the "
        "switch with mutated bytes (loadtest.hostile_issuer); its purchases are sent through "
        "the switch, the checks use the other issuers",
    )
    parser.add_argument(
        "--hostile-hsm",
        action="store_true",
        help="with --stack: the HSM answers the switch with mutated bytes "
        "(loadtest.hostile_hsm); PIN purchases are sent through the switch",
    )
    parser.add_argument("--hostile-ratio", type=float, default=0.7, help="answers mutated")
    parser.add_argument("--log", type=Path, action="append", default=[], help="log to scan")
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy the logs here")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.issuer and not args.stack:
        args.issuer = ["alpha=9583", "beta=9584", "gamma=9585"]
    if (args.hostile_issuer or args.hostile_hsm) and not args.stack:
        parser.error("--hostile-issuer and --hostile-hsm need --stack (a simulator is replaced)")
    if args.hostile_issuer and args.hostile_hsm:
        parser.error("one hostile peer at a time: the checks need a well-behaved path")
    if args.source.split(".")[0] != "127":
        parser.error("--source must be a loopback address (127.x.x.x)")
    args.seed = args.seed if args.seed is not None else random.randrange(2**32)
    args.conf = args.conf.resolve()
    tmp = Path(tempfile.mkdtemp(prefix="payswitch-fuzz-live-"))
    try:
        return _run(args, tmp)
    except (BenchError, MixError, OSError) as exc:
        print(f"loadtest fuzz-live: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
