"""``loadtest bench``: the benchmark every performance claim cites.

    loadtest bench --scenario plain --duration 10 --repeat 3          # the full stack
    loadtest bench --target issuer --duration 5                       # one issuer-sim alone
    loadtest bench --target hsm --duration 5                          # hsm-sim alone (CA)
    loadtest bench --target all --scenario plain --json var/bench.json

``stack`` starts the demo profile (conf/demo) as separate processes on free loopback ports: the
HSM simulator when its console script and hsm.toml exist, one issuer simulator per issuer, and
the gateway (config rewritten only for ports, absolute paths, a throw-away journal file and
quiet logs). It warms up, then runs the scenario (plain: magstripe purchases; pin: PIN
purchases under the TPK; mixed: every kind, see loadtest.mix.SCENARIOS) in closed loop
(``--in-flight`` over ``--connections``) or open loop (``--rate``) for ``--duration`` seconds,
``--repeat`` times, and prints for each process (gateway, each issuer-sim, hsm-sim, this load
generator) CPU microseconds per transaction, the time it waited for a CPU (runnable, not
running) and peak RSS, with end-to-end TPS and latency percentiles, and the median over the
repeats.

``issuer`` drives one issuer simulator directly over mutual TLS (as the gateway's links do);
``hsm`` drives the HSM simulator with CA PIN translations through the gateway's HsmClient.
Their TPS is what "never the bottleneck" (at least 2x the gateway's TPS) is checked against.

White box (the one switch module the load kit may import, ``tests/test_architecture.py``):
``--target hsm`` uses ``gateway.upstream.hsm_client``, so the figure is the HSM as the switch
sees it. Everything else here starts the programs and speaks the wire.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import orjson

from loadtest.generator import LoadConfig
from loadtest.mix import SCENARIOS
from loadtest.procstat import cpu_seconds, cpu_wait_seconds, descendants, free_port, peak_rss_kib
from loadtest.runs import backend_args, run_generator
from loadtest.stats import RunStats, format_report

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEMO = ROOT / "conf" / "demo"
PATH_KEYS = frozenset({"data", "pki_dir", "risk", "otp_enrolment"})
PATH_SUFFIXES = ("_file", "_dir")


class BenchError(Exception):
    """The stack could not be started or driven."""


# -- configuration rewriting ------------------------------------------------------------


def relocate(doc: Any, base: Path, ports: Mapping[int, int], key: str = "") -> Any:
    """A copy of a TOML document with demo ports replaced (``ports``: demo -> new; -1 turns a
    listener off) and relative file paths made absolute against ``base``."""
    if isinstance(doc, dict):
        return {k: relocate(v, base, ports, k) for k, v in doc.items()}
    if isinstance(doc, list):
        return [relocate(v, base, ports, key) for v in doc]
    if isinstance(doc, bool):
        return doc
    if isinstance(doc, int) and key.endswith("port"):
        return ports.get(doc, doc)
    if isinstance(doc, str):
        if (
            (key in PATH_KEYS or key.endswith(PATH_SUFFIXES))
            and doc
            and not Path(doc).is_absolute()
        ):
            return str((base / doc).resolve())
        host, sep, port = doc.rpartition(":")
        if sep and host and port.isdigit() and int(port) in ports:
            return f"{host}:{ports[int(port)]}"
    return doc


def materialize(path: Path, module: str, cls: str) -> dict[str, Any]:
    """The config file with every default filled in (so default ports and paths, such as the
    gateway's HSM endpoint or QR API port, get relocated too); the raw TOML when the config
    class cannot load it."""
    import dataclasses
    import importlib

    raw = tomllib.loads(path.read_text())
    try:
        config_cls = getattr(importlib.import_module(module), cls)
        obj = config_cls(**raw)
        doc = dataclasses.asdict(obj)
    except Exception:
        return raw
    return _plain(doc)  # type: ignore[no-any-return]


def _plain(value: Any) -> Any:
    """Tuples as lists, ``None`` left out (TOML has no null): what tomllib would give."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
        )
    raise BenchError(f"cannot write {type(value).__name__} to TOML")


def dump_toml(doc: Mapping[str, Any], prefix: str = "") -> str:
    """TOML text for a document as tomllib reads it (tables, arrays of tables, scalars)."""
    lines: list[str] = []
    nested: list[tuple[str, Any]] = []
    for key, value in doc.items():
        tables = isinstance(value, list) and value and all(isinstance(v, dict) for v in value)
        if isinstance(value, dict) or tables:
            nested.append((key, value))
        else:
            lines.append(f"{json.dumps(key)} = {_toml_value(value)}")
    for key, value in nested:
        name = f"{prefix}{json.dumps(key)}"
        if isinstance(value, dict):
            lines.append(f"\n[{name}]")
            lines.append(dump_toml(value, f"{name}."))
        else:
            for item in value:
                lines.append(f"\n[[{name}]]")
                lines.append(dump_toml(item, f"{name}."))
    return "\n".join(line for line in lines if line)


def merge(doc: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``doc`` with ``extra``'s keys set, tables merged key by key."""
    out = dict(doc)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


# -- processes --------------------------------------------------------------------------


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    port: int


@dataclass
class Stack:
    services: list[Service] = field(default_factory=list)
    terminal_port: int = 0
    terminal_tls_port: int = 0
    """0: no TLS terminal listener (``start_stack(terminal_tls=False)``)."""
    admin_port: int = 0
    admin_token: str = ""
    """Bearer token (viewer) of the gateway's admin API."""
    qr_url: str = ""
    issuer_ports: dict[str, int] = field(default_factory=dict)
    hsm_port: int = 0
    pki_dir: Path = ROOT / "var" / "certs"
    log: Path | None = None
    """The file every service's output goes to."""
    ports: dict[int, int] = field(default_factory=dict)
    """The profile's ports and the free ones used instead (-1: listener off), also of the
    services not started (``hsm=False``: the HSM endpoint the gateway is given)."""

    def stop(self) -> None:
        for s in self.services:
            if s.proc.poll() is None:
                s.proc.terminate()
        for s in self.services:
            try:
                s.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                s.proc.kill()
                s.proc.wait()


def _wait_port(service: Service, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise BenchError(f"{service.name} exited with {service.proc.returncode}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", service.port), 0.5),
        ):
            return
        time.sleep(0.05)
    raise BenchError(f"{service.name} not listening on {service.port} within {timeout:g} s")


def _wait_ready(service: Service, admin_port: int, timeout: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise BenchError(f"{service.name} exited with {service.proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            url = f"http://127.0.0.1:{admin_port}/readyz"
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise BenchError(f"{service.name} not ready within {timeout:g} s")


def _spawn(name: str, cmd: list[str], port: int, log: Path) -> Service:
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    return Service(name, proc, port)


@contextlib.contextmanager
def start_stack(
    conf: Path,
    tmp: Path,
    *,
    backend: str,
    issuers: Sequence[str] | None = None,
    gateway: bool = True,
    hsm: bool = True,
    log_transactions: bool = False,
    workers: int = 1,
    writer: str = "",
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    terminal_tls: bool = False,
    log_level: str = "warning",
    before_gateway: Callable[[Stack], None] | None = None,
    further_listeners: bool = False,
) -> Iterator[Stack]:
    """The demo profile's processes on free ports; stopped (SIGTERM) on exit. ``workers``
    and ``writer`` (the journal's: ``loop`` or ``process``; empty: the profile's) override
    the profile; ``overrides`` maps a profile file (``gateway.toml``, ``issuer-sim.toml``,
    ``risk.toml``, ``journal.toml``, ``hsm.toml``) to keys merged into it (the soak's
    lowered caps). ``terminal_tls`` keeps the TLS terminal listener (the bench drives TCP
    only); ``log_level`` is the gateway's and the issuer simulators'. ``before_gateway`` is
    called once the simulators listen, before the gateway starts (an issuer of the caller's
    own, on a port of ``issuer_ports`` whose simulator ``issuers`` left out).
    ``further_listeners`` keeps the profile's further terminal listener (8585, UnionPay
    style) on a free port (``ports[8585]``)."""
    extra = dict(overrides or {})
    from kit import pki

    gw_doc = materialize(conf / "gateway.toml", "gateway.config", "GatewayConfig")
    sim_doc = materialize(conf / "issuer-sim.toml", "issuer_sim.config", "IssuerSimConfig")
    wanted = list(issuers) if issuers is not None else [i["id"] for i in sim_doc["issuers"]]
    # No TLS terminal listener unless asked, no UnionPay-style one (8585): the bench drives
    # TCP on 8583.
    ports: dict[int, int] = {
        8584: free_port() if terminal_tls else -1,
        8585: free_port() if further_listeners else -1,
    }
    stack = Stack(pki_dir=(conf / gw_doc.get("pki_dir", "../../var/certs")).resolve())
    for demo_port in (8583, 9090, 8080, 1500):
        ports[demo_port] = free_port()
    for ep in sim_doc["issuers"]:
        ports[ep["port"]] = free_port()
        stack.issuer_ports[ep["id"]] = ports[ep["port"]]
    names = ["gateway", "switch", *(f"issuer-{i['id']}" for i in sim_doc["issuers"])]
    pki.ensure_pki(stack.pki_dir, names)

    # Files the configs name by default (risk.toml, ...) resolve next to the rewritten ones.
    for entry in conf.iterdir():
        if entry.name in ("gateway.toml", "issuer-sim.toml", "hsm.toml", "journal.toml"):
            continue
        if entry.name in extra:
            doc = relocate(tomllib.loads(entry.read_text()), conf, ports)
            (tmp / entry.name).write_text(dump_toml(merge(doc, extra[entry.name])))
        else:
            (tmp / entry.name).symlink_to(entry.resolve())
    gw_doc.setdefault("pki_dir", str(stack.pki_dir))
    sim_doc.setdefault("pki_dir", str(stack.pki_dir))
    sim = relocate(sim_doc, conf, ports)
    sim["log_level"] = log_level
    sim["issuers"] = [i for i in sim["issuers"] if i["id"] in wanted]
    if not gateway:
        sim["issuers"] = [spoken_by_the_load_client(i) for i in sim["issuers"]]
    sim = merge(sim, extra.get("issuer-sim.toml", {}))
    (tmp / "issuer-sim.toml").write_text(dump_toml(sim))
    gw = relocate(gw_doc, conf, ports)
    # relocate made every file the gateway names absolute, to the profile's own copy: one the
    # caller overrides (the soak's lowered risk.toml caps) must be the rewritten copy instead.
    for key in PATH_KEYS:
        named = gw.get(key)
        if (
            isinstance(named, str)
            and Path(named).name in extra
            and Path(named).resolve() == (conf / Path(named).name).resolve()
        ):
            gw[key] = str(tmp / Path(named).name)
    gw.setdefault("log", {}).update(level=log_level, transactions=log_transactions)
    if workers > 1:
        gw["workers"] = workers
    # The admin API wants a bearer token for /status: a viewer token of this bench only,
    # and a fresh audit file next to the rewritten configs.
    admin = gw.setdefault("admin", {})
    stack.admin_token = secrets.token_urlsafe(24)
    digest = hashlib.sha256(stack.admin_token.encode()).hexdigest()
    admin["tokens"] = [{"id": "bench", "role": "viewer", "sha256": digest}]
    admin.pop("tokens_env", None)
    if admin.get("audit_file"):
        admin["audit_file"] = str(tmp / "audit.log")
    qr_api = gw.get("qr_api")
    if isinstance(qr_api, dict) and qr_api.get("store_file"):
        qr_api["store_file"] = str(tmp / "qr.sqlite3")  # a fresh QR store per bench too
    journal_file = gw.get("journal")
    if isinstance(journal_file, str) and journal_file:
        # A fresh journal per bench: a file that grows across runs makes each run slower
        # (deeper B-trees, page-cache misses) and the figures incomparable.
        jdoc = tomllib.loads((conf / journal_file).read_text())
        if jdoc.get("journal", {}).get("backend", "sqlite") == "sqlite":
            jdoc["journal"]["path"] = str(tmp / "journal.sqlite3")
            if writer:
                jdoc["journal"]["writer"] = writer
        jdoc = merge(jdoc, extra.get("journal.toml", {}))
        (tmp / "journal.toml").write_text(dump_toml(jdoc))
        gw["journal"] = "journal.toml"
    gw = merge(gw, extra.get("gateway.toml", {}))
    (tmp / "gateway.toml").write_text(dump_toml(gw))
    stack.ports = ports
    stack.terminal_port = ports[8583]
    stack.terminal_tls_port = max(0, ports[8584])
    stack.admin_port = ports[9090]
    qr_port = gw.get("qr_api", {}).get("port", -1)
    if isinstance(qr_port, int) and qr_port > 0:
        stack.qr_url = f"http://127.0.0.1:{qr_port}"

    log = tmp / "services.log"
    stack.log = log
    back = ["--backend", backend]
    try:
        hsm_conf = conf / "hsm.toml"
        if hsm and hsm_conf.exists() and (BIN / "hsm-sim").exists():
            doc = relocate(materialize(hsm_conf, "hsm_sim.config", "HsmConfig"), conf, ports)
            doc["backend"] = "asyncio"  # hsm-sim picks uvloop itself when installed
            doc = merge(doc, extra.get("hsm.toml", {}))
            (tmp / "hsm.toml").write_text(dump_toml(doc))
            svc = _spawn(
                "hsm-sim", [str(BIN / "hsm-sim"), "run", "--conf", str(tmp / "hsm.toml")],
                ports[1500], log,
            )  # fmt: skip
            stack.services.append(svc)
            stack.hsm_port = ports[1500]
        for issuer in wanted:
            port = stack.issuer_ports[issuer]
            cmd = [str(BIN / "issuer-sim"), "run", "--conf", str(tmp / "issuer-sim.toml")]
            svc = _spawn(f"issuer-sim {issuer}", [*cmd, "--issuer", issuer, *back], port, log)
            stack.services.append(svc)
        for svc in stack.services:
            _wait_port(svc)
        if before_gateway is not None:
            before_gateway(stack)
        if gateway:
            cmd = [str(BIN / "gateway"), "run", "--conf", str(tmp / "gateway.toml"), *back]
            svc = _spawn("gateway", cmd, stack.terminal_port, log)
            stack.services.append(svc)
            _wait_ready(svc, stack.admin_port)
        yield stack
    except BenchError as exc:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise BenchError(f"{exc}\n--- service output (tail) ---\n{tail}") from None
    finally:
        stack.stop()


# -- measurement --------------------------------------------------------------------------


def _cpu(pid: int) -> float:
    return _usage(pid, True)[0]


def _usage(pid: int, children: bool) -> tuple[float, float]:
    """(CPU seconds, seconds waiting for a CPU) of ``pid`` (with ``children``: its
    descendants too, never this process's: it started the services); 0 for one gone."""
    children = children and pid != os.getpid()
    try:
        return cpu_seconds(pid, children=children), cpu_wait_seconds(pid, children=children)
    except OSError:
        return 0.0, 0.0


def measure(
    stack: Stack, cfg: LoadConfig, backend: str, *, progress: bool
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """One measured run: the generator's summary and per-process CPU/RSS figures."""
    pids = {s.name: s.proc.pid for s in stack.services}
    pids["loadgen"] = os.getpid()
    # Each service with its children counted in, then each child on its own ("of which").
    watched = {name: (pid, True) for name, pid in pids.items()}
    watched.update(
        (f"{name}/{_role(child)}-{i}", (child, False))
        for name, pid in pids.items()
        for i, child in enumerate(descendants(pid) if pid != os.getpid() else ())
    )
    before = {name: _usage(*how) for name, how in watched.items()}
    wall0 = time.monotonic()
    name, options = backend_args(backend)
    summary: dict[str, Any] = anyio.run(
        lambda: run_generator(cfg, progress=progress), backend=name, backend_options=options
    )
    wall = time.monotonic() - wall0
    count = max(1, summary["transactions"])
    procs: dict[str, dict[str, float]] = {}
    for pname, (pid, whole) in watched.items():
        cpu, wait = _usage(pid, whole)
        rss = 0.0
        if whole:
            with contextlib.suppress(OSError):  # gone: no figure
                rss = peak_rss_kib(pid) / 1024
        used = cpu - before[pname][0]
        procs[pname] = {
            "cpu_us_per_txn": round(used / count * 1e6, 1),
            "cpu_percent": round(100 * used / wall, 1),
            "wait_percent": round(100 * (wait - before[pname][1]) / wall, 1),
            "peak_rss_mib": round(rss, 1),
        }
    return summary, procs


def _role(pid: int) -> str:
    """What a service's child process is, for the per-process table."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "child"
    if b"gateway.journal.writer" in cmd:
        return "journal-writer"
    return "worker" if b"--worker" in cmd else "child"


def _print_run(summary: dict[str, Any], procs: Mapping[str, Mapping[str, float]]) -> None:
    print(format_report(summary))
    # "wait %": runnable but waiting for a CPU (the machine is short of cores for it).
    print(f"\n{'process':<20} {'CPU us/txn':>11} {'CPU %':>7} {'wait %':>7} {'peak RSS MiB':>13}")
    for name, p in procs.items():
        shown = f"  of which {name.partition('/')[2]}" if "/" in name else name
        print(
            f"{shown:<20} {p['cpu_us_per_txn']:>11} {p['cpu_percent']:>7}"
            f" {p['wait_percent']:>7} {p['peak_rss_mib']:>13}"
        )
    # A service's children are in its own figure already.
    total = sum(p["cpu_us_per_txn"] for n, p in procs.items() if "/" not in n)
    print(f"{'all processes':<20} {round(total, 1):>11}", flush=True)


def _median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median TPS, latency percentiles and per-process CPU over repeated runs."""

    def med(values: list[float | None]) -> float | None:
        vals = [v for v in values if v is not None]
        return round(statistics.median(vals), 3) if vals else None

    lat_keys = ("p50", "p90", "p99", "p99.9")
    out: dict[str, Any] = {
        "runs": len(runs),
        "tps": med([r["summary"]["tps"] for r in runs]),
        "latency_ms": {k: med([r["summary"]["latency_ms"][k] for r in runs]) for k in lat_keys},
        "errors": sum(r["summary"]["error_count"] for r in runs),
        "processes": {},
    }
    for name in runs[0]["processes"]:
        if not all(name in r["processes"] for r in runs):
            continue  # a child process that was not there in every run (restarted)
        out["processes"][name] = {
            k: med([r["processes"][name][k] for r in runs])
            for k in ("cpu_us_per_txn", "cpu_percent", "wait_percent", "peak_rss_mib")
        }
    return out


def _print_median(label: str, med: Mapping[str, Any]) -> None:
    lat = med["latency_ms"]
    print(
        f"\n== {label}: median of {med['runs']} runs: {med['tps']} TPS"
        f"  p50 {lat['p50']} ms  p90 {lat['p90']} ms  p99 {lat['p99']} ms"
        f"  p99.9 {lat['p99.9']} ms  errors {med['errors']}"
    )
    for name, p in med["processes"].items():
        print(
            f"   {name:<20} {p['cpu_us_per_txn']:>9} us/txn  {p['wait_percent']:>5} % waiting"
            f" for a CPU  {p['peak_rss_mib']:>7} MiB peak RSS"
        )
    print(flush=True)


def _load_config(args: argparse.Namespace, port: int, **kw: Any) -> LoadConfig:
    base = LoadConfig(
        port=port,
        connections=args.connections,
        in_flight=args.in_flight,
        rate=args.rate,
        duration=args.duration,
        warmup=0.0,
        mix=args.scenario,
        amount=100,
        amount_max=5000,
        timeout=args.timeout,
    )
    return replace(base, **kw)


def _journal_writes(admin_port: int, token: str = "") -> dict[str, Any] | None:
    """The gateway's group-commit counters (``/status``), or None without a journal."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        url = f"http://127.0.0.1:{admin_port}/status"
        body = httpx.get(url, headers=headers, timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return None
    journal = body.get("journal") or {}
    writes: dict[str, Any] | None = journal.get("writes")
    return writes


def _series(label: str, stack: Stack, args: argparse.Namespace, cfg: LoadConfig) -> dict[str, Any]:
    if args.warmup > 0:
        print(f"-- {label}: warm-up {args.warmup:g} s", flush=True)
        anyio.run(
            lambda: run_generator(replace(cfg, duration=args.warmup), progress=False),
            backend=backend_args(args.backend)[0],
            backend_options=backend_args(args.backend)[1],
        )
    runs: list[dict[str, Any]] = []
    for i in range(args.repeat):
        print(f"-- {label}: run {i + 1}/{args.repeat}, {cfg.duration:g} s", flush=True)
        summary, procs = measure(stack, cfg, args.backend, progress=not args.quiet)
        _print_run(summary, procs)
        if (
            stack.admin_port
            and (writes := _journal_writes(stack.admin_port, stack.admin_token)) is not None
        ):
            print(
                f"journal since start: {writes['ops']} records in {writes['batches']} commits"
                f" (mean {writes['mean_batch']}, largest {writes['largest_batch']})",
                flush=True,
            )
        runs.append({"summary": summary, "processes": procs})
    med = _median_of(runs)
    _print_median(label, med)
    return {"label": label, "runs": runs, "median": med}


def bench_stack(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    with start_stack(
        args.conf,
        tmp,
        backend=args.backend,
        log_transactions=args.log_transactions,
        workers=args.workers,
        writer=args.writer,
    ) as stack:
        # No QR API in this stack: the qr item is reported unavailable, never sent elsewhere.
        cfg = _load_config(
            args, stack.terminal_port, data=args.conf / "data.toml", qr_url=stack.qr_url
        )
        return _series(f"stack {args.scenario}", stack, args, cfg)


def bench_issuer(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from kit import pki
    from kit.dataset import load_dataset

    data = load_dataset(args.conf / "data.toml")
    issuer = args.issuer
    prefixes = tuple(r.prefix for r in data.issuer_behaviour.synthetic if r.issuer == issuer)
    if not prefixes:
        raise BenchError(f"issuer {issuer!r} has no synthetic card range in the dataset")
    with start_stack(
        args.conf, tmp, backend=args.backend, issuers=[issuer], gateway=False, hsm=False
    ) as stack:
        tls = pki.client_context(stack.pki_dir, "switch")
        cfg = _load_config(
            args,
            stack.issuer_ports[issuer],
            mix="magstripe=1",
            prefixes=prefixes,
            tls=tls,
            tls_hostname=f"issuer-{issuer}",
            data=args.conf / "data.toml",
        )
        return _series(f"issuer-sim {issuer} alone", stack, args, cfg)


def spoken_by_the_load_client(issuer: dict[str, Any]) -> dict[str, Any]:
    """An issuer-sim entry speaking SPEC's dialect, the one the load generator writes: driven
    without the gateway (``--target issuer``), a host on another dialect (the demo's beta is
    ``iso87-bcd``, gamma ``iso93-bcd``) would not read its requests. The figure is the host's
    own cost, as it was before the demo's links had dialects."""
    plain = {k: v for k, v in issuer.items() if k not in ("header", "translation", "also_accept")}
    plain["dialect"] = "terminal"
    return plain


def bench_hsm(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from kit.logs import configure

    configure("warning")  # the HSM client logs each connect at info
    with start_stack(
        args.conf, tmp, backend=args.backend, issuers=[], gateway=False, hsm=True
    ) as stack:
        if not stack.hsm_port:
            raise BenchError("no hsm-sim here (console script or conf/demo/hsm.toml missing)")
        label = "hsm-sim alone (CA TPK->ZPK)"
        runs: list[dict[str, Any]] = []
        for i in range(args.repeat + (1 if args.warmup > 0 else 0)):
            warm = args.warmup > 0 and i == 0
            duration = args.warmup if warm else args.duration
            pids = {s.name: s.proc.pid for s in stack.services} | {"loadgen": os.getpid()}
            before = {n: _cpu(p) for n, p in pids.items()}
            name, options = backend_args(args.backend)
            drive = functools.partial(
                _drive_hsm, stack.hsm_port, args, duration, args.conf / "data.toml"
            )
            stats: RunStats = anyio.run(drive, backend=name, backend_options=options)
            if warm:
                continue
            summary = stats.summary()
            count = max(1, stats.count)
            procs = {
                n: {
                    "cpu_us_per_txn": round((_cpu(p) - before[n]) / count * 1e6, 1),
                    "cpu_percent": round(100 * (_cpu(p) - before[n]) / stats.elapsed, 1),
                    "peak_rss_mib": round(peak_rss_kib(p) / 1024, 1),
                }
                for n, p in pids.items()
            }
            print(f"-- {label}: run {len(runs) + 1}/{args.repeat}")
            _print_run(summary, procs)
            runs.append({"summary": summary, "processes": procs})
        med = _median_of(runs)
        _print_median(label, med)
        return {"label": label, "runs": runs, "median": med}


async def _drive_hsm(port: int, args: argparse.Namespace, duration: float, data: Path) -> RunStats:
    """Closed loop of CA translations: ``in_flight`` workers over ``connections``."""
    from gateway.upstream.hsm_client import HsmClient, HsmError
    from hsm_sim import terminal
    from hsm_sim.lmk import Lmk
    from kit.dataset import load_dataset

    ds = load_dataset(data)
    if ds.hsm is None:
        raise BenchError("the dataset has no [hsm] LMK")
    lmk = Lmk(ds.hsm.lmk.key)
    tpk_clear = next(t.tpk.key for t in ds.terminals if t.tpk is not None)
    zpk_clear = next(i.zpk.key for i in ds.issuers if i.zpk is not None)
    tpk, zpk = lmk.encrypt(bytes.fromhex(tpk_clear)), lmk.encrypt(bytes.fromhex(zpk_clear))
    pan = "4761739000000001"
    blocks = [terminal.pin_block_under_tpk(tpk_clear, f"{i:04d}", pan) for i in range(64)]
    stats = RunStats()
    stats.info = {"mode": "closed-loop", "in_flight": args.in_flight, "command": "CA"}
    async with HsmClient(
        [f"127.0.0.1:{port}"], connections=args.connections, timeout=args.timeout
    ) as hsm:
        await hsm.diagnostics()
        start = time.perf_counter()  # uvloop's loop clock only has millisecond resolution
        end = start + duration

        async def worker(offset: int) -> None:
            i = offset
            while (t0 := time.perf_counter()) < end:
                try:
                    await hsm.translate_pin_tpk_to_zpk(tpk, zpk, blocks[i % 64], pan)
                except HsmError as exc:
                    stats.error(type(exc).__name__, "ca")
                else:
                    stats.record(time.perf_counter() - t0, "00", "ca")
                i += 1

        async with anyio.create_task_group() as tg:
            for w in range(args.in_flight):
                tg.start_soon(worker, w)
        stats.elapsed = time.perf_counter() - start
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="loadtest bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--target", choices=("stack", "issuer", "hsm", "all"), default="stack")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="plain")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before the runs")
    parser.add_argument("--repeat", type=int, default=1, help="measured runs (median shown)")
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--rate", type=float, default=0.0, help="open loop at this rate instead")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--issuer", default="beta", help="--target issuer: which one")
    parser.add_argument("--backend", choices=("uvloop", "asyncio", "trio"), default="uvloop")
    parser.add_argument("--conf", type=Path, default=DEMO, help="profile directory")
    parser.add_argument("--log-transactions", action="store_true", help="gateway logs each txn")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="gateway worker processes (the profile's risk "
        "store decides whether limits are exact across them: memory is per process)",
    )
    parser.add_argument(
        "--writer",
        choices=("", "loop", "process"),
        default="",
        help="journal writer (default: the profile's)",
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--quiet", action="store_true", help="no per-second progress lines")
    args = parser.parse_args(argv)
    args.conf = args.conf.resolve()
    targets = ["stack", "issuer", "hsm"] if args.target == "all" else [args.target]
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    results: dict[str, Any] = {"load_average_before": [round(x, 2) for x in load]}
    bench = {"stack": bench_stack, "issuer": bench_issuer, "hsm": bench_hsm}
    tmp = Path(tempfile.mkdtemp(prefix="payswitch-bench-"))
    try:
        for target in targets:
            (tmp / target).mkdir()
            results[target] = bench[target](args, tmp / target)
    except BenchError as exc:
        print(f"loadtest bench: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if "stack" in results and len(targets) > 1:
        gw_tps = results["stack"]["median"]["tps"] or 0
        for other in ("issuer", "hsm"):
            if other in results and gw_tps:
                ratio = (results[other]["median"]["tps"] or 0) / gw_tps
                results[f"{other}_over_stack_tps"] = round(ratio, 2)
                print(f"{other} alone / stack TPS = {ratio:.2f} (target >= 2)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
