"""The operator files in ops/: Prometheus alert rules (promtool checks them and runs their
unit tests) and the Grafana dashboard, whose every metric name must be one the gateway
exports (compared with a real /metrics scrape)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from kit import pki
from tests.helpers import ROOT, running_stack
from tests.tools import require_tool

RULES = ROOT / "ops" / "prometheus" / "rules.yml"
RULE_TESTS = ROOT / "ops" / "prometheus" / "tests.yml"
DASHBOARD = ROOT / "ops" / "grafana" / "payswitch.json"
GRADES = {"critical", "major", "minor"}

# What is left of a PromQL expression once strings, label matchers, ranges, grouping
# clauses, variables, functions, keywords and numbers are gone: the metric names.
_STRIP = [
    r'"(?:[^"\\]|\\.)*"',
    r"\{[^}]*\}",
    r"\[[^\]]*\]",
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)",
    r"\$\{?\w+\}?",
    r"\b[a-z_]+\s*(?=\()",
]
_LABEL_VALUES = re.compile(r"label_values\(\s*([^,()]+?)\s*,[^)]*\)")  # Grafana's, not PromQL
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    expr = _LABEL_VALUES.sub(r"\1", expr)
    for pattern in _STRIP:
        expr = re.sub(pattern, " ", expr)
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return {n for n in names if n.lower() not in _KEYWORDS}


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs(node: Any) -> Iterator[str]:
    """Every query of the dashboard: panel targets and templating variables."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in {"expr", "definition"} and isinstance(value, str):
                yield value
            else:
                yield from dashboard_exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from dashboard_exprs(item)


def test_metric_names_are_found_in_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (instance, le) (rate(switch_x_bucket{a="b",c=~"d|e"}'
        "[$__rate_interval]))) > 0.5 and on (instance) up_total - time() < 30 * 86400"
    )
    assert metric_names(expr) == {"switch_x_bucket", "up_total"}
    assert metric_names("label_values(switch_y_total, instance)") == {"switch_y_total"}


def test_promtool_checks_the_rules() -> None:
    promtool = require_tool("promtool", "prometheus")
    out = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rules())} rules found" in out.stdout


def test_promtool_runs_the_rule_unit_tests() -> None:
    promtool = require_tool("promtool", "prometheus")
    out = subprocess.run(
        [promtool, "test", "rules", str(RULE_TESTS)],
        capture_output=True,
        text=True,
        check=False,
        cwd=RULE_TESTS.parent,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_alert_has_a_grade_and_a_runbook_and_each_grade_a_unit_test() -> None:
    tested = {
        (case["alertname"], alert["exp_labels"]["severity"])
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
        for alert in case["exp_alerts"]
    }
    graded = set()
    for rule in rules():
        assert rule["labels"]["severity"] in GRADES, rule["alert"]
        assert rule["annotations"]["runbook"].strip(), rule["alert"]
        assert "\n" not in rule["annotations"]["runbook"].strip(), rule["alert"]
        graded.add((rule["alert"], rule["labels"]["severity"]))
    assert len(graded) == len(rules()), "two rules with one name and grade"
    assert graded == tested
    assert {grade for _, grade in graded} == GRADES


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # one scrape of a running gateway: the backend does not matter here


def exported_names(text: str) -> set[str]:
    """Every sample name a scrape can show, from its families (those without samples yet,
    a labelled counter nobody incremented, are named by their TYPE line)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


@pytest.mark.anyio
async def test_dashboard_and_rules_use_only_metrics_the_gateway_exports(pki_dir: Path) -> None:
    async with (
        running_stack(pki_dir) as stack,
        httpx.AsyncClient() as http,
    ):
        scrape = await http.get(f"http://127.0.0.1:{stack.gateway.admin_port}/metrics")
    assert scrape.status_code == 200
    exported = exported_names(scrape.text)
    expiry = {
        s.labels["name"]: s.value
        for f in text_string_to_metric_families(scrape.text)
        if f.name == "switch_certificate_expiry_timestamp_seconds"
        for s in f.samples
    }
    assert expiry == {
        name: pki.not_after(pki_dir, name).timestamp() for name in ("ca", "gateway", "switch")
    }

    in_dashboard = {
        n for e in dashboard_exprs(json.loads(DASHBOARD.read_text())) for n in metric_names(e)
    }
    assert len(in_dashboard) >= 20
    assert in_dashboard <= exported, sorted(in_dashboard - exported)

    in_rules = {n for rule in rules() for n in metric_names(rule["expr"])}
    assert in_rules <= exported, sorted(in_rules - exported)
    # Every alert's subject is on the dashboard too.
    assert in_rules <= in_dashboard, sorted(in_rules - in_dashboard)
