#!/usr/bin/env bash
# GPU check (bench/gpu_check.py): a few GRPO steps of a Qwen2.5-1.5B-shaped model under FSDP2 on one
# card, checkpoint merge and resume, TRL's GRPOTrainer on the same settings for a ratio, one LoRA step,
# one gradient-checkpointed step.
#   bash bench/gpu_check.sh              # one H100/H200, no network, <= 9 minutes
#   bash bench/gpu_check.sh --dry-run    # CPU, tiny model (CI)
# Uses $PYTHON (default: python3 on PATH); wheels for missing packages go in bench/wheels/.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
exec timeout "${GPU_CHECK_TIMEOUT_S:-540}" "${PYTHON:-python3}" bench/gpu_check.py "$@"
