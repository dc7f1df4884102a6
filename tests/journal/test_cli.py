"""``gateway journal ...`` end to end on a SQLite journal (the CLI runs on asyncio)."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from gateway.journal import NewAdvice, open_journal
from gateway.journal.cli import run
from gateway.journal.config import load_config, node_path, node_paths
from tests.journal.conftest import PAN, answered, key_table, purchase


def _write_conf(tmp_path: Path) -> Path:
    table = key_table()
    lines = [
        "[journal]",
        f'path = "{tmp_path / "journal.sqlite3"}"',
        'active_key_id = "k1"',
        f'keys = [{{ id = "k1", hex = "{table["keys"][0]["hex"]}" }}]',
        f'lookup_key = {{ hex = "{table["lookup_key"]["hex"]}" }}',
        f'chain_key = {{ hex = "{table["chain_key"]["hex"]}" }}',
    ]
    conf = tmp_path / "journal.toml"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def _populate(conf: Path, now: datetime) -> None:
    async def fill() -> None:
        async with open_journal(load_config(conf)) as journal:
            old = now - timedelta(days=3000)
            await journal.append(purchase("old", "000001", at=old))
            await journal.append(answered("old", "000001", at=old))
            await journal.append(purchase("new", "000002", at=now))
            await journal.append(answered("new", "000002", at=now))

    anyio.run(fill)


def test_cli_verify_archive_restore_settlement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = _write_conf(tmp_path)
    now = datetime.now(UTC)
    _populate(conf, now)

    assert run(["verify", "--conf", str(conf)]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 4

    out = tmp_path / "archive"
    assert (
        run(["archive", "--older-than-days", "1826", "--out", str(out), "--conf", str(conf)]) == 0
    )
    moved = json.loads(capsys.readouterr().out)
    assert (moved["count"], moved["first_seq"], moved["last_seq"]) == (2, 1, 2)

    assert run(["verify", "--conf", str(conf), "--archive", moved["path"]]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True

    assert run(["settlement", "--date", now.date().isoformat(), "--conf", str(conf)]) == 0
    totals = json.loads(capsys.readouterr().out)
    assert totals == [
        {
            "day": now.date().isoformat(),
            "issuer_id": "alpha",
            "currency": "156",
            "debit_count": 1,
            "debit_amount": 1500,
            "credit_count": 0,
            "credit_amount": 0,
        }
    ]

    assert run(["restore", moved["path"], "--conf", str(conf)]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 2
    assert run(["verify", "--conf", str(conf)]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 4
    assert run(["rebuild-index", "--conf", str(conf)]) == 0
    assert json.loads(capsys.readouterr().out) == {"events_replayed": 4}
    assert run(["saf", "--conf", str(conf)]) == 0
    assert json.loads(capsys.readouterr().out) == []

    # A second restore of the same archive is refused with a clear message, exit 3.
    assert run(["restore", moved["path"], "--conf", str(conf)]) == 3
    assert "already restored" in capsys.readouterr().err


def test_cli_reports_tampering_and_bad_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3

    conf = _write_conf(tmp_path)
    _populate(conf, datetime.now(UTC))
    with sqlite3.connect(tmp_path / "journal.sqlite3") as con:
        con.execute("UPDATE events SET response_code = '00' WHERE seq = 2")
        con.execute("UPDATE events SET amount = 1 WHERE seq = 3")
    assert run(["verify", "--conf", str(conf)]) == 1
    result = json.loads(capsys.readouterr().out)
    assert (result["ok"], result["broken_seq"]) == (False, 3)

    assert run(["verify", "--conf", str(tmp_path / "missing.toml")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[journal]\ncolour = 1\n")
    assert run(["verify", "--conf", str(bad)]) == 2
    assert "unknown key" in capsys.readouterr().err
    assert run(["settlement", "--date", "yesterday", "--conf", str(conf)]) == 2
    assert run(["frobnicate"]) == 2


def test_cli_merges_per_node_files_of_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``workers > 1`` on SQLite: one file per node; settlement and SAF depth are the merge
    view over them, verify checks each, and the commands that rewrite a file need --node."""
    conf = _write_conf(tmp_path)
    base = load_config(conf)
    now = datetime.now(UTC)

    async def fill(node: int, purchases: int) -> None:
        config = dataclasses.replace(base, path=node_path(base.path, node))
        async with open_journal(config) as journal:
            for i in range(purchases):
                tid, stan = f"n{node}-{i}", f"{node}{i:05d}"
                await journal.append(purchase(tid, stan, at=now))
                await journal.append(answered(tid, stan, at=now))
            await journal.enqueue_advice(
                NewAdvice(
                    issuer_id="alpha",
                    kind="0420",
                    txn_id=f"n{node}-0",
                    fields={"2": PAN, "11": "000001"},
                    created_at=now - timedelta(minutes=node + 1),
                )
            )

    anyio.run(fill, 0, 2)
    anyio.run(fill, 3, 1)
    assert sorted(node_paths(base.path)) == [0, 3]

    day = now.date().isoformat()
    assert run(["settlement", "--date", day, "--conf", str(conf)]) == 0
    (total,) = json.loads(capsys.readouterr().out)
    assert (total["debit_count"], total["debit_amount"]) == (3, 4500)
    assert run(["settlement", "--date", day, "--conf", str(conf), "--node", "3"]) == 0
    (one,) = json.loads(capsys.readouterr().out)
    assert (one["debit_count"], one["debit_amount"]) == (1, 1500)

    assert run(["saf", "--conf", str(conf)]) == 0
    (alpha,) = json.loads(capsys.readouterr().out)
    assert alpha["depth"] == 2
    assert alpha["oldest_age_seconds"] >= 4 * 60  # node 3's advice, 4 minutes old

    assert run(["verify", "--conf", str(conf)]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [(r["ok"], r["count"]) for r in results] == [(True, 4), (True, 2)]
    assert [Path(r["path"]).name for r in results] == [
        "journal-node0.sqlite3",
        "journal-node3.sqlite3",
    ]

    out = tmp_path / "archive"
    assert run(["archive", "--out", str(out), "--conf", str(conf)]) == 2
    assert "pass --node N" in capsys.readouterr().err
    assert run(["rebuild-index", "--conf", str(conf), "--node", "7"]) == 2
    assert "no journal file for node 7" in capsys.readouterr().err
    assert run(["rebuild-index", "--conf", str(conf), "--node", "0"]) == 0
    assert json.loads(capsys.readouterr().out) == {"events_replayed": 4}
    assert not Path(base.path).exists()  # nothing created for the unused base path


def test_cli_audit_file_records_commands_that_change_or_reveal_the_books(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.ops.audit import os_user, verify_file
    from gateway.ops.audit import run as audit_run

    monkeypatch.delenv("PAYSWITCH_AUDIT_FILE", raising=False)
    conf = _write_conf(tmp_path)
    now = datetime.now(UTC)
    _populate(conf, now)
    audit = tmp_path / "var" / "journal-audit.log"
    flag = ["--conf", str(conf), "--audit-file", str(audit)]
    out = tmp_path / "archive"

    assert run(["archive", "--older-than-days", "1826", "--out", str(out), *flag]) == 0
    moved = json.loads(capsys.readouterr().out)
    assert moved["count"] == 2  # JSON output as without --audit-file
    assert run(["verify", *flag]) == 0  # reveals nothing of the books: not recorded
    capsys.readouterr()
    monkeypatch.setenv("PAYSWITCH_AUDIT_FILE", str(audit))  # the default of --audit-file
    day = now.date().isoformat()
    assert run(["settlement", "--date", day, "--conf", str(conf)]) == 0
    assert run(["restore", moved["path"], "--conf", str(conf)]) == 0
    assert run(["restore", moved["path"], "--conf", str(conf)]) == 3  # exit status unchanged
    assert run(["rebuild-index", "--conf", str(conf)]) == 0
    capsys.readouterr()

    records = [json.loads(line) for line in audit.read_bytes().splitlines()]
    assert [(r["command"], r["exit_status"], r["outcome"]) for r in records] == [
        ("journal archive", 0, "ok"),
        ("journal settlement", 0, "ok"),
        ("journal restore", 0, "ok"),
        ("journal restore", 3, "journal error"),
        ("journal rebuild-index", 0, "ok"),
    ]
    assert all(r["actor"] == os_user() for r in records)
    assert records[0]["arguments"] == {
        "conf": str(conf),
        "node": None,
        "out": str(out),
        "older_than_days": 1826,
    }
    assert records[0]["moved"] == moved
    assert records[1]["arguments"]["day"] == day
    assert records[2]["arguments"]["file"] == moved["path"]
    assert records[2]["moved"]["count"] == 2
    assert "moved" not in records[3]  # refused: nothing moved
    key_hex = [line for line in conf.read_text().splitlines() if "hex" in line]
    for line in key_hex:  # no key material, even though the keys sit in --conf
        secret = line.split('hex = "')[1].split('"')[0]
        assert secret.encode() not in audit.read_bytes()
    report = verify_file(audit)
    assert (report.ok, report.lines) == (True, 5)
    assert audit_run(["verify", str(audit)]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_cli_refuses_a_command_it_cannot_audit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PAYSWITCH_AUDIT_FILE", raising=False)
    conf = _write_conf(tmp_path)
    _populate(conf, datetime.now(UTC))
    audit = tmp_path / "audit.log"
    audit.mkdir()  # a directory where the audit file should be
    out = tmp_path / "archive"
    args = ["archive", "--older-than-days", "1826", "--out", str(out), "--conf", str(conf)]
    assert run([*args, "--audit-file", str(audit)]) == 2
    captured = capsys.readouterr()
    assert "archive not run" in captured.err
    assert captured.out == ""
    assert not out.exists()  # nothing archived
    assert run(["verify", "--conf", str(conf), "--audit-file", str(audit)]) == 0  # not audited
    assert json.loads(capsys.readouterr().out)["count"] == 4


def test_cli_settlement_by_business_date(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two purchases a minute apart on 7 December UTC, either side of a 23:00 Shanghai cutover
    (15:00 UTC): one calendar day, two business dates."""
    conf = _write_conf(tmp_path)
    cutover = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)

    async def fill() -> None:
        async with open_journal(load_config(conf)) as journal:
            for txn, stan, at, business in [
                ("b", "000001", cutover - timedelta(minutes=1), date(2026, 12, 7)),
                ("a", "000002", cutover, date(2026, 12, 8)),
            ]:
                await journal.append(purchase(txn, stan, at=at, business_date=business))
                await journal.append(answered(txn, stan, at=at))

    anyio.run(fill)
    base = ["settlement", "--conf", str(conf)]

    def counts(argv: list[str]) -> list[tuple[str, int]]:
        assert run([*base, *argv]) == 0
        return [(t["day"], t["debit_count"]) for t in json.loads(capsys.readouterr().out)]

    assert counts(["--date", "2026-12-07"]) == [("2026-12-07", 2)]
    assert counts(["--date", "2026-12-07", "--by", "calendar"]) == [("2026-12-07", 2)]
    assert counts(["--date", "2026-12-07", "--by", "business"]) == [("2026-12-07", 1)]
    assert counts(["--business-date", "2026-12-08"]) == [("2026-12-08", 1)]
    assert counts(["--date", "2026-12-08"]) == []
    assert run([*base, "--business-date", "2026-12-08", "--by", "calendar"]) == 2
    assert run([*base, "--business-date", "2026-12-08", "--date", "2026-12-08"]) == 2
    assert run([*base, "--date", "2026-12-08", "--by", "settled"]) == 2
    capsys.readouterr()
