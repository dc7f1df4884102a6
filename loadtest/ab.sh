#!/usr/bin/env bash
# A/B of `loadtest bench` between a git revision and the working tree, runs alternated so both
# sides see the same machine load (this VM's absolute figures move ±10 % between minutes).
#
#   loadtest/ab.sh REV ROUNDS [bench args...]
#   loadtest/ab.sh 3258e94 3 --scenario plain --duration 8 --in-flight 64
#
# REV is checked out once as a worktree in /tmp/payswitch-ab-REV; both sides run with this
# checkout's .venv, the old side with PYTHONPATH pointing at the worktree (the console scripts
# the bench spawns inherit it). One line per run: TPS, p99, gateway CPU per transaction, load.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
rev="$1"; rounds="$2"; shift 2
old="/tmp/payswitch-ab-$rev"
[ -d "$old" ] || git -C "$here" worktree add -q "$old" "$rev"
for _ in $(seq "$rounds"); do
  for side in old new; do
    dir="$here"; [ "$side" = old ] && dir="$old"
    out=$(cd "$dir" && PYTHONPATH="$dir" timeout 600 "$here/.venv/bin/python" -m loadtest.cli \
      bench "$@" --repeat 1 --quiet 2>&1) || true
    tps=$(echo "$out" | grep "median of" | sed -E 's/.*runs: ([0-9.]+) TPS.*p99 ([0-9.]+) ms.*/\1 TPS  p99 \2 ms/')
    gw=$(echo "$out" | grep -E "^   gateway " | awk '{print $2}')
    echo "$side: ${tps:-failed}  gateway ${gw:-?} us/txn  load $(cut -d' ' -f1 /proc/loadavg)"
  done
done
