#!/usr/bin/env bash
# The test command: installs what the tests need into .venv, then runs pytest.
# Extra arguments go to pytest, e.g. `bash run/test.sh -m "not slow"` for the quick subset.
set -euo pipefail
cd "$(dirname "$0")/.."
NPU_RL_EXTRAS="${NPU_RL_EXTRAS:-dev,swanlab}" source run/setup_env.sh
ruff check npu_rl reward tools tests bench
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
python -m pytest "$@"
