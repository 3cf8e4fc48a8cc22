#!/usr/bin/env bash
# A newcomer's first hour, timed: the two figures the README states per CPU kind (issue 17), printed
# as one block to paste into README.md and bench/README.md. Run it on a quiet machine of the kind
# that is missing from those figures (e.g. 2 cores with AVX2 but no AVX-512).
#
#   bash bench/first_hour.sh            # ~10 min demo (base rebuilt) + ~2 min quick test subset
#
# 1. the demo from scratch: the tiny base is deleted first so its pre-training is timed too;
# 2. the quick test subset, `bash run/test.sh -m "not slow"` (pytest's own duration is reported).
# The demo's run directory and the pytest log stay in /tmp/npu_rl_first_hour.
set -euo pipefail
cd "$(dirname "$0")/.."
logs=/tmp/npu_rl_first_hour
mkdir -p "$logs"
cpu=$(lscpu | grep 'Model name' | sed 's/Model name: *//')
if grep -q avx512f /proc/cpuinfo; then kind="AVX-512"; else kind="AVX2-only (no AVX-512)"; fi
started=$(date -u '+%Y-%m-%d %H:%M UTC')

rm -rf assets/models/tiny-base
bash run/tiny_grpo.sh >"$logs/demo.log" 2>&1 || { echo "the demo failed: see $logs/demo.log" >&2; exit 1; }
bash run/test.sh -m "not slow" -q >"$logs/quick.log" 2>&1 || true  # its summary line says what failed

echo "== first hour on $(nproc) cores of $cpu ($kind), started $started"
echo "demo (bash run/tiny_grpo.sh, base rebuilt): $(grep '^== done in' "$logs/demo.log" | sed 's/^== //')"
grep -E "held-out greedy accuracy|pass@8" "$logs/demo.log" | tail -2
grep -E "^\[stage1-[a-z]+\] step [0-9]+/[0-9]+ " "$logs/demo.log" | tail -1 | sed 's/^/pre-training stage 1 ends: /'
echo "quick subset (bash run/test.sh -m \"not slow\"): $(grep -E '[0-9]+ (passed|failed)' "$logs/quick.log" | tail -1)"
