"""``python -m fuzz TARGET|all --runs N``: coverage-guided fuzzing with atheris (libFuzzer).

One target runs in this process (atheris owns it: ``atheris.Fuzz`` exits when done); ``all``
runs each target in a child process, ``--jobs`` at a time, and fails if any failed. The seed
corpus ``fuzz/corpus/TARGET/`` is read, never written: new inputs go to ``var/fuzz/TARGET/``
and a crashing input to ``var/fuzz/crashes/TARGET-crash-<sha1>`` (``--work`` moves both).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CORPUS = ROOT / "corpus"
WORK = ROOT.parent / "var" / "fuzz"


def _target_names() -> list[str]:
    # The names without importing the decoders: the fuzzed process instruments them as imported.
    return sorted(p.name for p in CORPUS.iterdir() if p.is_dir())


def run_one(name: str, runs: int, max_len: int, seconds: int, work: Path) -> None:
    try:
        import atheris  # optional: only the fuzzed process needs it
    except ImportError:
        sys.exit("atheris is not installed: pip install -e '.[dev]' (it ships Linux wheels)")
    with atheris.instrument_imports(include=["protocols", "gateway.qr.models"]):
        from fuzz.targets import TARGETS  # imported here to be instrumented

    new_inputs = work / name
    crashes = work / "crashes"
    new_inputs.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    # libFuzzer writes what it finds into the first corpus directory: the work one.
    argv = [
        sys.argv[0],
        f"-runs={runs}",
        f"-max_len={max_len}",
        f"-max_total_time={seconds}",
        f"-artifact_prefix={crashes}/{name}-",
        "-print_final_stats=1",
        str(new_inputs),
        str(CORPUS / name),
    ]
    atheris.Setup(argv, TARGETS[name])
    atheris.Fuzz()


def run_all(names: list[str], argv: list[str], jobs: int) -> int:
    """Each target in a child process, ``jobs`` at a time; with more than one, a child's
    libFuzzer log is printed whole when it ends, not interleaved."""

    def run(name: str) -> bool:
        start = time.monotonic()
        cmd = [sys.executable, "-m", "fuzz", name, *argv]
        out = None if jobs == 1 else subprocess.PIPE
        done = subprocess.run(  # noqa: S603 - our own module
            cmd, cwd=ROOT.parent, check=False, stdout=out, stderr=out, text=True
        )
        log = (done.stdout or "") + (done.stderr or "")
        took = time.monotonic() - start
        print(f"{log}fuzz {name}: exit {done.returncode} in {took:.1f} s", flush=True)
        return done.returncode == 0

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        failed = [n for n, ok in zip(names, pool.map(run, names), strict=True) if not ok]
    if failed:
        print(f"fuzz: failed: {' '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def main() -> None:
    names = _target_names()
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__)
    parser.add_argument("target", choices=[*names, "all"])
    parser.add_argument("--runs", type=int, default=100_000, help="executions (-1: forever)")
    parser.add_argument("--max-len", type=int, default=4096, help="longest input, bytes")
    parser.add_argument("--seconds", type=int, default=0, help="stop after (0: no limit)")
    parser.add_argument("--work", type=Path, default=WORK, help="new inputs and crashes")
    parser.add_argument("--jobs", type=int, default=1, help="targets at a time (all)")
    args = parser.parse_args()
    if args.target == "all":
        child = ["--runs", str(args.runs), "--max-len", str(args.max_len)]
        child += ["--seconds", str(args.seconds), "--work", str(args.work)]
        sys.exit(run_all(names, child, max(1, args.jobs)))
    run_one(args.target, args.runs, args.max_len, args.seconds, args.work)


if __name__ == "__main__":
    main()
