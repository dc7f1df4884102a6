"""Live dashboard on the admin port: ``GET /dashboard`` (one self-contained page) and
``GET /dashboard/data`` (the JSON snapshot it polls every second).

The snapshot is computed here from the gateway's ``status()``, its metrics registry (counters
and histograms read as totals) and the risk engine's recent alerts. Rates come from a small ring
of samples kept by the endpoint: a request takes a new sample when the last one is at least
``_MIN_SPACING`` seconds old, otherwise it reuses the last snapshot, so any number of open pages
costs one registry read per second. The window (rates, response codes, approval rate, latency
percentiles) runs from the newest sample at least ``WINDOW_SECONDS`` old to now; older samples
are dropped. Nothing runs in the background.

The page uses no CDN and fetches only ``/dashboard/data``; its Content-Security-Policy allows
its own inline script and style by hash, and requests to itself only. Values are shown with
``textContent``, never parsed as HTML.

Card data: alerts are reduced to a fixed set of fields, the PAN is masked again with
``mask_pan`` and any 13-19 digit run in a text field is masked too; no key, PIN block or token
is ever read.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from gateway.metrics import Metrics, hsm_healthy
from kit.logs import get_logger
from protocols.redact import mask_pan

log = get_logger("gateway.ops.dashboard")

WINDOW_SECONDS = 60.0
_MIN_SPACING = 0.9
ALERTS_SHOWN = 20
APPROVED_RC = "00"
TIER_ORDER = ("no_cvm", "static", "one_factor", "two_factor", "certified")
"""Verification tiers weakest first (the risk engine's and the QR API's labels)."""
_PAN_RUN = re.compile(r"(?<![0-9A-Za-z])\d{13,19}(?![0-9A-Za-z])")
_ALERT_TEXT_KEYS = ("event", "rc", "merchant_id", "terminal_id", "currency", "at")

Buckets = tuple[tuple[float, float], ...]
"""Cumulative histogram buckets: (upper bound, count), ``inf`` last."""


@dataclass(frozen=True, slots=True)
class Sample:
    """Registry totals at one moment (monotonic seconds)."""

    t: float
    answers: dict[str, float]  # by response code
    latency: Buckets  # switch latency, every MTI together
    issuer_latency: dict[str, Buckets]
    issuer_failures: dict[str, float]
    saf_depth: dict[str, float] = field(default_factory=dict)
    saf_oldest: dict[str, float] = field(default_factory=dict)
    tier_declines: dict[str, float] = field(default_factory=dict)
    step_ups: dict[str, float] = field(default_factory=dict)
    challenges: dict[str, float] = field(default_factory=dict)  # by outcome


def read_sample(metrics: Metrics, t: float) -> Sample:
    """One pass over the registry (its first collector applies the batched observations)."""
    answers: dict[str, float] = {}
    latency: dict[float, float] = {}
    issuer_latency: dict[str, dict[float, float]] = {}
    failures: dict[str, float] = {}
    depth: dict[str, float] = {}
    oldest: dict[str, float] = {}
    # counters by one label: family name -> (label, where the totals go)
    by_label: dict[str, tuple[str, dict[str, float]]] = {
        "payswitch_risk_tier_declines": ("tier", {}),
        "switch_qr_step_ups": ("tier", {}),
        "switch_qr_challenges": ("outcome", {}),
    }
    for family in metrics.registry.collect():
        name = family.name
        for s in family.samples:
            labels = s.labels
            if name == "switch_transactions" and s.name.endswith("_total"):
                rc = labels.get("rc", "") or "--"
                answers[rc] = answers.get(rc, 0.0) + s.value
            elif name == "switch_transaction_seconds" and s.name.endswith("_bucket"):
                le = float(labels["le"])
                latency[le] = latency.get(le, 0.0) + s.value
            elif name == "switch_issuer_seconds" and s.name.endswith("_bucket"):
                per = issuer_latency.setdefault(labels["issuer"], {})
                le = float(labels["le"])
                per[le] = per.get(le, 0.0) + s.value
            elif name == "switch_issuer_failures" and s.name.endswith("_total"):
                issuer = labels["issuer"]
                failures[issuer] = failures.get(issuer, 0.0) + s.value
            elif name == "switch_saf_depth":
                depth[labels["issuer"]] = s.value
            elif name == "switch_saf_oldest_seconds":
                oldest[labels["issuer"]] = s.value
            elif name in by_label and s.name.endswith("_total"):
                label, totals = by_label[name]
                totals[labels[label]] = s.value
    return Sample(
        t=t,
        answers=answers,
        latency=tuple(sorted(latency.items())),
        issuer_latency={k: tuple(sorted(v.items())) for k, v in issuer_latency.items()},
        issuer_failures=failures,
        saf_depth=depth,
        saf_oldest=oldest,
        tier_declines=by_label["payswitch_risk_tier_declines"][1],
        step_ups=by_label["switch_qr_step_ups"][1],
        challenges=by_label["switch_qr_challenges"][1],
    )


def bucket_delta(new: Buckets, old: Buckets) -> Buckets:
    before = dict(old)
    return tuple((le, n - before.get(le, 0.0)) for le, n in new)


def quantile_ms(q: float, buckets: Buckets) -> float | None:
    """``histogram_quantile`` as Prometheus computes it (linear within the bucket), in ms;
    a rank in the ``+Inf`` bucket reports the largest finite bound. ``None`` without data."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for le, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(le):
                return round(lower * 1000, 3)
            inside = cumulative - below
            share = (rank - below) / inside if inside > 0 else 1.0
            return round((lower + (le - lower) * share) * 1000, 3)
        lower, below = le, cumulative
    return round(lower * 1000, 3)


def _diff(new: Mapping[str, float], old: Mapping[str, float]) -> dict[str, int]:
    out = {k: round(v - old.get(k, 0.0)) for k, v in new.items()}
    return {k: v for k, v in sorted(out.items()) if v > 0}


def _mask_text(value: str) -> str:
    return _PAN_RUN.sub(lambda m: mask_pan(m.group(0)), value)


def safe_alert(alert: Mapping[str, Any]) -> dict[str, Any]:
    """The fields the page shows, and nothing else; PANs masked whatever the source did."""
    out: dict[str, Any] = {}
    for key in _ALERT_TEXT_KEYS:
        value = alert.get(key)
        out[key] = _mask_text(str(value))[:64] if value is not None else None
    pan = alert.get("masked_pan")
    out["masked_pan"] = mask_pan(str(pan)) if pan else None
    amount, score = alert.get("amount"), alert.get("score")
    out["amount"] = amount if isinstance(amount, int) and not isinstance(amount, bool) else None
    out["score"] = score if isinstance(score, int) and not isinstance(score, bool) else None
    rules = alert.get("rules")
    names = rules if isinstance(rules, list | tuple) else []
    out["rules"] = [_mask_text(str(r))[:64] for r in names[:8]]
    return out


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


class Dashboard:
    """The ring of samples and the snapshot built from it."""

    def __init__(
        self,
        status: Callable[[], dict[str, Any]],
        metrics: Metrics,
        alerts: Callable[[int], Sequence[Mapping[str, object]]],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._status = status
        self._metrics = metrics
        self._alerts = alerts
        self._clock = clock
        self._wall_clock = wall_clock
        self._ring: deque[Sample] = deque(maxlen=int(WINDOW_SECONDS / _MIN_SPACING) + 2)
        self._last: dict[str, Any] | None = None

    def snapshot(self) -> dict[str, Any]:
        now = self._clock()
        ring = self._ring
        if self._last is not None and ring and now - ring[-1].t < _MIN_SPACING:
            return self._last
        ring.append(read_sample(self._metrics, now))
        # The oldest sample kept is the newest one at least a window old: the baseline of the
        # window (after a pause in polling, the window reaches back to the last sample taken).
        while len(ring) > 2 and now - ring[1].t >= WINDOW_SECONDS:
            ring.popleft()
        self._last = self._build(self._status())
        return self._last

    def _build(self, st: Mapping[str, Any]) -> dict[str, Any]:
        ring = self._ring
        newest, oldest = ring[-1], ring[0]
        series = [
            round((sum(b.answers.values()) - sum(a.answers.values())) / (b.t - a.t), 1)
            for a, b in zip(ring, list(ring)[1:], strict=False)
            if b.t > a.t
        ]
        by_rc = _diff(newest.answers, oldest.answers)
        answers = sum(by_rc.values())
        approved = by_rc.get(APPROVED_RC, 0)
        latency = bucket_delta(newest.latency, oldest.latency)
        totals = {k: round(v) for k, v in sorted(newest.answers.items())}
        journal = _dict(st.get("journal"))
        breakers = _dict(journal.get("breakers"))
        delivered = _dict(journal.get("saf_delivered"))
        return {
            "at": round(self._wall_clock(), 3),
            "ready": bool(st.get("ready")),
            "draining": bool(st.get("draining")),
            "in_flight": int(_number(st.get("in_flight"))),
            "tps": series[-1] if series else 0.0,
            "tps_series": series,
            "window": {
                "seconds": round(newest.t - oldest.t, 1),
                "answers": answers,
                "approved": approved,
                "approval_rate": round(approved / answers, 4) if answers else None,
                "by_rc": by_rc,
                "p50_ms": quantile_ms(0.5, latency),
                "p99_ms": quantile_ms(0.99, latency),
            },
            "totals": {
                "answers": sum(totals.values()),
                "approved": totals.get(APPROVED_RC, 0),
                "by_rc": totals,
            },
            "issuers": self._issuers(st.get("links"), breakers, delivered),
            "stand_in_approved": int(_number(journal.get("stand_in_approved"))),
            "journal": _journal(journal) if journal else None,
            "hsm": _hsm(st.get("hsm")),
            "alerts": self._recent_alerts(),
            "verification": _verification(newest),
        }

    def _issuers(
        self, links: object, breakers: Mapping[str, Any], delivered: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        newest, oldest = self._ring[-1], self._ring[0]
        by_issuer: dict[str, Mapping[str, Any]] = {}
        for link in links if isinstance(links, list) else []:
            if isinstance(link, Mapping) and "issuer" in link:
                by_issuer[str(link["issuer"])] = link
        names: Iterable[str] = sorted(
            {
                *by_issuer,
                *breakers,
                *newest.saf_depth,
                *newest.issuer_latency,
                *newest.issuer_failures,
            }
        )
        out = []
        for name in names:
            link = by_issuer.get(name, {})
            conns = [c for c in link.get("connections", ()) if isinstance(c, Mapping)]
            states = [str(c.get("state", "")) for c in conns]
            lat = bucket_delta(
                newest.issuer_latency.get(name, ()), oldest.issuer_latency.get(name, ())
            )
            failures = newest.issuer_failures.get(name, 0.0) - oldest.issuer_failures.get(name, 0.0)
            out.append(
                {
                    "issuer": name,
                    "ready": bool(link.get("ready")),
                    "connections_up": states.count("up"),
                    "connections": len(states),
                    "states": sorted(set(states)),
                    "breaker": str(_dict(breakers.get(name)).get("state", "n/a")),
                    "saf_depth": round(newest.saf_depth.get(name, 0.0)),
                    "saf_oldest_s": round(newest.saf_oldest.get(name, 0.0), 1),
                    "saf_delivered": int(_number(delivered.get(name))),
                    "p99_ms": quantile_ms(0.99, lat),
                    "failures": round(failures),
                    **_link_keys(link.get("key_lifecycle")),
                }
            )
        return out

    def _recent_alerts(self) -> list[dict[str, Any]]:
        return [safe_alert(a) for a in self._alerts(ALERTS_SHOWN) if isinstance(a, Mapping)]


def _link_keys(keys: object) -> dict[str, Any]:
    """A link's key lifecycle for the page: generation, check values (never a key), last and
    next change, changes and refusals; copied field by field, so nothing else can leak."""
    k = _dict(keys)

    def text(name: str) -> str | None:
        value = k.get(name)
        return value if isinstance(value, str) and len(value) <= 64 else None

    return {
        "key_exchange": bool(k.get("exchange")),
        "key_generation": int(_number(k.get("generation"))),
        "zpk_kcv": text("zpk_kcv"),
        "zak_kcv": text("zak_kcv"),
        "key_last_change": text("last_change"),
        "key_next_change": text("next_change"),
        "key_changes": int(_number(k.get("changes"))),
        "key_refusals": int(_number(k.get("refusals"))),
        "key_last_refusal": text("last_refusal"),
    }


def _verification(sample: Sample) -> dict[str, Any]:
    """Declines and step-ups by verification tier and the challenges' outcomes, since start
    (rare events: a minute's window would mostly show nothing). The success rate is the
    challenges completed per challenge issued (one never answered counts as failed)."""
    declines, step_ups = sample.tier_declines, sample.step_ups
    names = {t for t, n in (*declines.items(), *step_ups.items()) if n > 0}
    rank = {t: i for i, t in enumerate(TIER_ORDER)}
    tiers = [
        {
            "tier": t,
            "declines": round(declines.get(t, 0.0)),
            "step_ups": round(step_ups.get(t, 0.0)),
        }
        for t in sorted(names, key=lambda t: (rank.get(t, len(rank)), t))
    ]
    issued = sum(step_ups.values())
    completed = sample.challenges.get("completed", 0.0)
    return {
        "tiers": tiers,
        "challenges": {k: round(v) for k, v in sorted(sample.challenges.items()) if v > 0},
        "challenge_success_rate": round(completed / issued, 4) if issued else None,
    }


def _journal(journal: Mapping[str, Any]) -> dict[str, Any]:
    writes = _dict(journal.get("writes"))
    return {
        "backend": str(journal.get("backend", "")),
        "open": bool(journal.get("open")),
        "records": int(_number(writes.get("ops"))),
        "commits": int(_number(writes.get("batches"))),
        "mean_batch": _number(writes.get("mean_batch")),
        "failed_commits": int(_number(writes.get("failed_batches"))),
    }


def _hsm(value: object) -> dict[str, Any] | None:
    if not isinstance(value, Mapping):
        return None
    errors = _dict(value.get("errors"))
    endpoint = value.get("endpoint")
    return {
        "healthy": hsm_healthy(value),
        "endpoint": None if endpoint is None else str(endpoint),
        "connections": int(_number(value.get("connections"))),
        "requests": int(_number(value.get("requests"))),
        "timeouts": int(_number(value.get("timeouts"))),
        "errors": sum(int(_number(v)) for v in errors.values()),
        "p50_ms": _number(value.get("p50_ms")),
        "p99_ms": _number(value.get("p99_ms")),
    }


_STYLE = """
body{font:14px system-ui,sans-serif;margin:0;background:#0f1419;color:#d8dee9}
header{display:flex;gap:16px;align-items:center;padding:8px 16px;background:#1b2129}
h1{font-size:16px;margin:0}h2{font-size:13px;margin:0 0 6px;color:#8fa1b3;text-transform:uppercase}
h2:not(:first-child){margin-top:14px}
main{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:12px;padding:12px}
section{background:#1b2129;border-radius:6px;padding:10px 12px}
.big{font-size:28px;font-weight:600}.dim{color:#8fa1b3}
.ok{color:#a3d977}.warn{color:#ebcb8b}.bad{color:#ff6b6b}
table{border-collapse:collapse;width:100%}td,th{padding:2px 6px;text-align:left}
th{color:#8fa1b3;font-weight:normal}td.n,th.n{text-align:right}
.wide{grid-column:1/-1}svg{width:100%;height:60px}
input,button{background:#0f1419;color:#d8dee9;border:1px solid #3b4252;padding:2px 6px}
"""

_SCRIPT = """
const $ = (id) => document.getElementById(id);
const fmt = (v, d) => v === null || v === undefined ? "\\u2014" : Number(v).toFixed(d);
function cell(tr, text, cls) {
  const td = document.createElement("td"); td.textContent = text;
  if (cls) td.className = cls; tr.appendChild(td);
}
function rows(id, items, cols) {
  const body = $(id); body.replaceChildren();
  for (const item of items) {
    const tr = document.createElement("tr");
    for (const [get, cls] of cols) {
      const v = get(item); cell(tr, v[0], [cls, v[1]].filter(Boolean).join(" "));
    }
    body.appendChild(tr);
  }
}
function spark(series) {
  const w = 300, h = 60, max = Math.max(1, ...series);
  const step = w / Math.max(1, 59);
  const off = w - step * (series.length - 1);
  $("spark").setAttribute("points", series.map((v, i) =>
    (off + i * step).toFixed(1) + "," + (h - 2 - (v / max) * (h - 4)).toFixed(1)).join(" "));
  $("sparkmax").textContent = "max " + fmt(max, 1) + "/s";
}
function render(d) {
  $("state").textContent = d.draining ? "draining" : d.ready ? "ready" : "not ready";
  $("state").className = d.draining ? "warn" : d.ready ? "ok" : "bad";
  $("inflight").textContent = d.in_flight;
  $("tps").textContent = fmt(d.tps, 1); spark(d.tps_series);
  const w = d.window;
  $("win").textContent = fmt(w.seconds, 0);
  const rate = w.approval_rate;
  $("appr").textContent = rate === null ? "\\u2014" : fmt(rate * 100, 1) + " %";
  $("appr").className = "big " +
    (rate === null ? "dim" : rate >= 0.9 ? "ok" : rate >= 0.7 ? "warn" : "bad");
  $("answers").textContent = w.answers + " answers, " + w.approved + " approved (" +
    d.totals.answers + " since start)";
  $("p50").textContent = fmt(w.p50_ms, 1); $("p99").textContent = fmt(w.p99_ms, 1);
  const rc = Object.entries(w.by_rc).sort((a, b) => b[1] - a[1]);
  rows("rc", rc, [[(e) => [e[0]]], [(e) => [e[1]], "n"],
    [(e) => [fmt(100 * e[1] / Math.max(1, w.answers), 1) + " %"], "n"]]);
  rows("issuers", d.issuers, [
    [(i) => [i.issuer]],
    [(i) => [i.ready ? "signed on" : (i.states.join(",") || "down"), i.ready ? "ok" : "bad"]],
    [(i) => [i.connections_up + "/" + i.connections], "n"],
    [(i) => [i.breaker, i.breaker === "closed" ? "ok" : i.breaker === "n/a" ? "dim" : "bad"]],
    [(i) => [fmt(i.p99_ms, 1)], "n"], [(i) => [i.failures], "n"],
    [(i) => [i.saf_depth, i.saf_depth ? "warn" : ""], "n"], [(i) => [fmt(i.saf_oldest_s, 1)], "n"],
    [(i) => [i.saf_delivered], "n"]]);
  rows("linkkeys", d.issuers, [
    [(i) => [i.issuer]],
    [(i) => [i.key_exchange ? "under ZMK" : "fixed", i.key_exchange ? "ok" : "dim"]],
    [(i) => [i.key_generation], "n"],
    [(i) => [i.zpk_kcv || "\u2014"]], [(i) => [i.zak_kcv || "\u2014"]],
    [(i) => [i.key_last_change || "at start", i.key_last_change ? "" : "dim"]],
    [(i) => [i.key_next_change || "not scheduled", i.key_next_change ? "" : "dim"]],
    [(i) => [i.key_changes], "n"],
    [(i) => [i.key_refusals, i.key_refusals ? "bad" : ""], "n"],
    [(i) => [i.key_last_refusal || "", "dim"]]]);
  $("standin").textContent = d.stand_in_approved;
  const j = d.journal;
  $("journal").textContent = j ? j.backend + (j.open ? "" : " (closed)") + ": " + j.records +
    " records, " + j.commits + " commits, " + fmt(j.mean_batch, 1) + " per commit, " +
    j.failed_commits + " failed" : "no journal";
  $("journal").className = j && (!j.open || j.failed_commits) ? "bad" : "";
  const m = d.hsm;
  $("hsm").textContent = m ? (m.healthy ? "up " : "DOWN ") + (m.endpoint || "") + ", " +
    m.connections + " conn, " + m.requests + " req, " + m.timeouts + " timeouts, " + m.errors +
    " errors, p50 " + fmt(m.p50_ms, 1) + " ms, p99 " + fmt(m.p99_ms, 1) + " ms" : "no HSM";
  $("hsm").className = m ? (m.healthy ? "ok" : "bad") : "dim";
  const v = d.verification;
  rows("tiers", v.tiers, [[(t) => [t.tier]], [(t) => [t.declines], "n"],
    [(t) => [t.step_ups], "n"]]);
  const c = v.challenges, sr = v.challenge_success_rate;
  $("challenges").textContent = (c.completed || 0) + " completed, " + (c.wrong_code || 0) +
    " wrong codes, " + (c.locked || 0) + " locked, " + (c.expired || 0) + " expired";
  $("success").textContent = sr === null ? "\u2014" : fmt(sr * 100, 1) + " %";
  $("success").className = sr === null ? "dim" : sr >= 0.8 ? "ok" : sr >= 0.5 ? "warn" : "bad";
  rows("alerts", d.alerts, [[(a) => [(a.at || "").slice(11, 19)]],
    [(a) => [a.event, a.rc ? "bad" : "warn"]], [(a) => [a.rc || ""]], [(a) => [a.masked_pan || ""]],
    [(a) => [a.amount === null ? "" : a.amount + " " + (a.currency || "")], "n"],
    [(a) => [a.score === null ? "" : a.score], "n"], [(a) => [a.rules.join(", ")]],
    [(a) => [a.terminal_id || ""]]]);
}
const KEY = "payswitch-admin-token";
let token = sessionStorage.getItem(KEY) || "";
$("auth").addEventListener("submit", (e) => {
  e.preventDefault(); token = $("token").value.trim(); $("token").value = "";
  sessionStorage.setItem(KEY, token); $("auth").hidden = true;
});
async function tick() {
  try {
    const headers = token ? {Authorization: "Bearer " + token} : {};
    const r = await fetch("dashboard/data", {cache: "no-store", headers});
    if (r.status === 401 || r.status === 403) {
      $("auth").hidden = false;
      throw new Error(r.status === 401 ? "admin token needed" : "token lacks the viewer role");
    }
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
    $("updated").textContent = new Date().toLocaleTimeString(); $("updated").className = "dim";
  } catch (e) {
    $("updated").textContent = "no data: " + e.message; $("updated").className = "bad";
  }
  setTimeout(tick, 1000);
}
tick();
"""

_BODY = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>payswitch dashboard</title><style>{style}</style></head>
<body><header><h1>payswitch</h1><span id="state" class="dim">loading</span>
<span class="dim">in flight <b id="inflight">0</b></span>
<span class="dim">updated <span id="updated">never</span></span>
<form id="auth" hidden><input id="token" type="password" autocomplete="off"
placeholder="admin token (viewer)" aria-label="admin token"><button>use</button></form>
</header>
<main>
<section><h2>Transactions per second</h2><div><span class="big" id="tps">0</span>
<span class="dim" id="sparkmax"></span></div>
<svg viewBox="0 0 300 60" preserveAspectRatio="none" role="img" aria-label="last 60 s">
<polyline id="spark" fill="none" stroke="#88c0d0" stroke-width="1.5" points=""/></svg>
<div class="dim">last 60 s, per second</div></section>
<section><h2>Approval rate (last <span id="win">0</span> s)</h2>
<div class="big" id="appr">&mdash;</div><div class="dim" id="answers"></div>
<h2>Switch latency</h2><div>p50 <b id="p50">&mdash;</b> ms, p99 <b id="p99">&mdash;</b> ms</div>
</section>
<section><h2>Response codes (window)</h2><table><thead><tr><th>rc</th><th class="n">count</th>
<th class="n">share</th></tr></thead><tbody id="rc"></tbody></table></section>
<section class="wide"><h2>Issuers</h2><table><thead><tr><th>issuer</th><th>link</th>
<th class="n">conns up</th><th>breaker</th><th class="n">p99 ms</th><th class="n">failures</th>
<th class="n">SAF depth</th><th class="n">SAF oldest s</th><th class="n">SAF delivered</th>
</tr></thead><tbody id="issuers"></tbody></table>
<div class="dim">stand-in approvals: <b id="standin">0</b></div></section>
<section class="wide"><h2>Link keys</h2><table><thead><tr><th>issuer</th><th>exchange</th>
<th class="n">generation</th><th>ZPK KCV</th><th>ZAK KCV</th><th>last change</th>
<th>next change</th><th class="n">changes</th><th class="n">refusals</th><th>last refusal</th>
</tr></thead><tbody id="linkkeys"></tbody></table></section>
<section><h2>Journal</h2><div id="journal">&mdash;</div></section>
<section><h2>HSM</h2><div id="hsm">&mdash;</div></section>
<section><h2>Verification tiers (since start)</h2><table><thead><tr><th>tier</th>
<th class="n">declines</th><th class="n">step-ups</th></tr></thead><tbody id="tiers"></tbody>
</table><div>challenge success <b id="success">&mdash;</b></div>
<div class="dim" id="challenges"></div></section>
<section class="wide"><h2>Risk alerts (latest)</h2><table><thead><tr><th>UTC</th><th>event</th>
<th>rc</th><th>PAN</th><th class="n">amount</th><th class="n">score</th><th>rules</th>
<th>terminal</th></tr></thead><tbody id="alerts"></tbody></table></section>
</main><script>{script}</script></body></html>
"""


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


PAGE = _BODY.replace("{style}", _STYLE).replace("{script}", _SCRIPT)
CSP = (
    "default-src 'none'; "
    f"script-src '{_sha256(_SCRIPT)}'; "
    f"style-src '{_sha256(_STYLE)}'; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_DATA_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
_PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def dashboard_routes(
    status: Callable[[], dict[str, Any]],
    metrics: Metrics,
    alerts: Callable[[int], Sequence[Mapping[str, object]]] = lambda _: [],
    *,
    clock: Callable[[], float] = time.monotonic,
) -> list[Route]:
    """``/dashboard``, ``/dashboard/data`` and the page's empty ``/favicon.ico`` for the
    admin app's route list."""
    board = Dashboard(status, metrics, alerts, clock=clock)

    async def page(_: Request) -> Response:
        return HTMLResponse(PAGE, headers=_PAGE_HEADERS)

    async def data(_: Request) -> Response:
        try:
            body, code = board.snapshot(), 200
        except Exception as exc:  # a broken source is shown on the page, never a 500 trace
            log.error("dashboard_snapshot_failed", error=type(exc).__name__)
            body, code = {"error": "status unavailable"}, 503
        return JSONResponse(body, status_code=code, headers=_DATA_HEADERS)

    async def no_icon(_: Request) -> Response:
        return Response(status_code=204, headers={"Cache-Control": "max-age=86400"})

    return [
        Route("/dashboard", page),
        Route("/dashboard/data", data),
        Route("/favicon.ico", no_icon),
    ]
