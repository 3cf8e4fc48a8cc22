#!/usr/bin/env bash
# PPO with a critic on Qwen2.5-Math-7B, SimpleRL-Zero's recipe (seed 004; npu_rl/configs/qwen2_5_math_7b_ppo.yaml:
# actor lr 5e-7, critic lr 9e-6, KL 0.01 in the reward, T=0.6, 8 samples, prompts <= 1024, responses <= 3000,
# 1024 prompts per rollout, mini-batch 128). Same launcher, devices and knobs as run/qwen2_5_1_5b_grpo.sh:
#
#   NPROC_PER_NODE=8 bash run/qwen2_5_math_7b_ppo.sh               eight Ascend cards (torchrun + FSDP2)
#   DEVICE=cuda NPROC_PER_NODE=8 bash run/qwen2_5_math_7b_ppo.sh   eight NVIDIA GPUs
#
# Inputs: hf download Qwen/Qwen2.5-Math-7B --local-dir models/Qwen2.5-Math-7B, and MATH levels 3-5:
#   python -m npu_rl.tools.preprocess_math --input downloads/MATH-lighteval --output-dir data/math_l3to5 --levels 3 4 5
set -euo pipefail
export CONFIG=qwen2_5_math_7b_ppo
export MODEL_PATH="${MODEL_PATH:-models/Qwen2.5-Math-7B}"
export DATA_DIR="${DATA_DIR:-data/math_l3to5}"
export LOG_FILE="${LOG_FILE:-outputs/qwen2_5_math_7b_ppo.node${NODE_RANK:-0}.log}"
exec bash "$(dirname "${BASH_SOURCE[0]}")/qwen2_5_1_5b_grpo.sh" "$@"
