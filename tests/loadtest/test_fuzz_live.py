"""``loadtest fuzz-live``: its mutations and log scan on fixed inputs, and a bounded run (about
25 s) against a stack of its own, one issuer of which answers the switch with mutated bytes;
after it every process's log is read again here: no traceback, no clear card number; no
traceback in any answer; every process alive and a purchase still ``00`` after each batch."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

from loadtest import mutate
from loadtest.fuzz_live import TARGETS, luhn_ok, scan_logs
from tests.helpers import demo_dataset

BIN = Path(sys.executable).parent


def test_framed_cases_are_mutations_of_the_seeds_and_replay_from_a_seed() -> None:
    seeds = [b"0200" + bytes(range(40)), b"0800" + b"x" * 30]
    assert mutate.framed_case(seeds, random.Random(5)) == mutate.framed_case(
        seeds, random.Random(5)
    )
    rnd = random.Random(1)
    kinds = set()
    for _ in range(400):
        kind, data = mutate.framed_case(seeds, rnd)
        kinds.add(kind)
        declared = int.from_bytes(data[:2], "big")
        if kind == "valid":
            assert data[2:] in seeds
        elif kind == "length-long":
            assert declared > len(data) - 2
        elif kind == "length-short":
            assert declared < len(data) - 2
        elif kind == "oversized":
            assert declared > 8192
    assert kinds == set(mutate.FRAME_KINDS)


def test_http_cases_keep_a_request_shape_unless_the_bytes_are_the_case() -> None:
    seeds = [mutate.HttpSeed("POST", "/v1/qr/payments", (("Authorization", "Bearer k"),),
                             b'{"amount": 100, "currency": "156"}')]  # fmt: skip
    rnd = random.Random(2)
    kinds = set()
    for _ in range(400):
        kind, data = mutate.http_case(seeds, rnd)
        kinds.add(kind)
        if kind in ("json", "valid", "length-short", "length-long"):
            assert data.startswith(b"POST /v1/qr/payments HTTP/1.1\r\n")
        if kind == "huge-head":
            assert len(data) > 16_384
    assert kinds == set(mutate.HTTP_KINDS)


def test_json_mutations_include_what_orjson_cannot_write() -> None:
    rnd = random.Random(3)
    bodies = {mutate.json_mutation(b'{"amount": 1, "qr": "x"}', rnd) for _ in range(300)}
    assert any(b"1000000000000000000000000000000" in b for b in bodies)  # past 64 bits
    assert any(b.startswith(b'{"a":{"a":') for b in bodies)  # deep nesting
    assert any(b.count(b'"amount"') == 2 or b.count(b'"qr"') == 2 for b in bodies)  # duplicate


def test_log_scan_finds_tracebacks_and_clear_card_numbers_but_not_digests() -> None:
    pans = [c.pan for c in demo_dataset().cards]
    text = "\n".join([
        '{"event": "txn", "pan": "476173******0011"}',  # masked: fine
        '{"line_sha256": "fa31928a640338491027835b2847b4fda490823ba36eed53fd70222656946a02"}',
        '{"event": "x", "exception": "Traceback (most recent call last):\\n  File \\"a.py\\""}',
        f'{{"event": "leak", "track": "{pans[0]}=28121010000"}}',
        '{"event": "leak2", "value": "5413339000000002"}',  # synthetic, Luhn-valid
        '{"event": "amount", "value": "000000001250", "rrn": "634112000017"}',
    ])  # fmt: skip
    found = scan_logs(text, pans)
    assert [f.split(":")[0] for f in found] == ["line 3", "line 4", "line 5"]
    assert all(pans[0] not in f and "5413339000000002" not in f for f in found)  # masked
    assert luhn_ok("5413339000000002")


def test_fuzz_live_against_a_stack_leaves_every_process_well(tmp_path: Path) -> None:
    logs, report = tmp_path / "logs", tmp_path / "fuzz.json"
    cmd = [
        str(BIN / "loadtest"), "fuzz-live", "--stack", "--batches", "2", "--count", "30",
        "--seconds", "25", "--seed", "7", "--keep-logs", str(logs), "--json", str(report),
        "--hostile-issuer", "beta",  # beta's simulator answers the switch with mutated bytes
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    result = json.loads(report.read_text())
    assert result["pass"] is True
    assert result["problems"] == []
    assert result["answer_findings"] == []
    assert result["log_findings"] == []
    targets = {key.split(" ")[0] for key in result["sent"]}
    expected = {t for t in TARGETS if t != "issuer"} | {"issuer-alpha", "issuer-gamma"}
    expected.add("via-switch-to-beta")  # beta's purchases, through the switch
    assert targets == expected
    assert result["hostile_answers"]["mutated"] > 0  # the switch decoded garbage answers
    assert sum(result["sent"].values()) >= len(expected) * 30
    assert re.findall(r"batch \d: .*: all alive, purchase 00", out) != []
    # Our own read of every process's output (gateway, journal writer, issuer-sims, hsm-sim).
    text = (logs / "services.log").read_text(errors="replace")
    assert text.count("\n") > 50, "the services logged at info level"
    assert "Traceback" not in text
    for card in demo_dataset().cards:
        assert card.pan not in text
    assert scan_logs(text, [c.pan for c in demo_dataset().cards]) == []


def test_fuzz_live_with_a_hostile_hsm_leaves_the_switch_well(tmp_path: Path) -> None:
    """The HSM mutates most of its answers: PIN purchases through the switch get declines, and
    nothing else suffers (about 12 s)."""
    logs, report = tmp_path / "logs", tmp_path / "fuzz.json"
    cmd = [
        str(BIN / "loadtest"), "fuzz-live", "--stack", "--hostile-hsm", "--batches", "1",
        "--count", "30", "--seconds", "20", "--seed", "8", "--keep-logs", str(logs),
        "--json", str(report), "--targets", "terminal,qr",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    result = json.loads(report.read_text())
    assert result["pass"] is True
    assert result["hostile_answers"]["mutated"] > 0
    assert {key.split(" ")[0] for key in result["sent"]} == {"terminal", "qr", "via-switch-to-hsm"}
    text = (logs / "services.log").read_text(errors="replace")
    assert "Traceback" not in text
    assert scan_logs(text, [c.pan for c in demo_dataset().cards]) == []


def test_field_changes_reencode_with_a_fresh_stan_and_card() -> None:
    """Field-level cases get past the switch's duplicate window and card velocity (a new STAN
    and PAN each), and most of them encode."""
    from loadtest.fuzz_live import iso_seeds
    from loadtest.mix import TxnFactory, load_data
    from protocols.dialects import get_dialect
    from protocols.fastcodec import best_codec

    spec = get_dialect("terminal")
    codec = best_codec(spec)
    factory = TxnFactory(load_data(), rnd=random.Random(4))
    fields = mutate.IsoFields(codec, spec, iso_seeds(factory))
    seeds = {(m.fields.get("11"), m.fields.get("35", m.fields.get("2"))) for m in fields.messages}
    rnd = random.Random(9)
    cases = [fields.case(rnd) for _ in range(300)]
    encoded = [c for c in cases if c is not None]
    assert len(encoded) > 200
    decodable = 0
    for data in encoded:
        try:
            msg = codec.decode(data)
        except Exception:
            continue  # a changed field the codec writes but will not read back: a case too
        decodable += 1
        assert (msg.fields.get("11"), msg.fields.get("35", msg.fields.get("2"))) not in seeds
    assert decodable > 100
