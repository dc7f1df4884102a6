"""The benchmark script runs and prints its figures (tiny sizes, memory backend)."""

from __future__ import annotations

import pytest

from benchmarks.risk import main


def test_bench_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--n", "20", "--runs", "1", "--concurrency", "4", "--redis-url", ""]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3  # sequential, concurrent, through the pipeline stage
    assert all(line.startswith("memory") and "wall median" in line for line in out)
    assert "prepare+commit" in out[2]
