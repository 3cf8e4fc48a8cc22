#!/usr/bin/env bash
# Multi-turn GRPO with tools on GSM8K, Qwen2.5-7B-Instruct (npu_rl/configs/qwen2_5_7b_gsm8k_tool.yaml:
# the policy calls a sandboxed Python interpreter / calculator, at most 5 assistant turns, tools from
# npu_rl/configs/tools_gsm8k.yaml). See docs/multi_turn.md.
#
#   NPROC_PER_NODE=8 bash run/qwen2_5_7b_gsm8k_tool.sh                 eight Atlas A2 cards
#   DEVICE=cuda NPROC_PER_NODE=8 bash run/qwen2_5_7b_gsm8k_tool.sh     eight NVIDIA GPUs
#
# Data: GSM8K converted with the tool-use system prompt (seed 001's):
#   hf download openai/gsm8k --repo-type dataset --local-dir downloads/gsm8k
#   python -m npu_rl.tools.preprocess_gsm8k --input downloads/gsm8k --output-dir data/gsm8k_tool --tool-prompt
# The launch itself (input checks, Ascend/CUDA environment, torchrun) is run/qwen2_5_1_5b_grpo.sh's,
# with this recipe's config; its environment knobs apply (MODEL_PATH, DATA_DIR, NPROC_PER_NODE,
# NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, DEVICE, PYTHON, LOG_FILE, ASCEND_HOME).
# The sandbox uses `unshare` (util-linux) for user/network/PID namespaces; where the container forbids
# them it falls back to an audit hook (weaker; see docs/multi_turn.md) and logs a warning.
set -euo pipefail
export CONFIG=qwen2_5_7b_gsm8k_tool
export MODEL_PATH="${MODEL_PATH:-models/Qwen2.5-7B-Instruct}"
export DATA_DIR="${DATA_DIR:-data/gsm8k_tool}"
export NPROC_PER_NODE="${NPROC_PER_NODE:-8}"
export LOG_FILE="${LOG_FILE:-outputs/qwen2_5_7b_gsm8k_tool.node${NODE_RANK:-0}.log}"
exec bash "$(dirname "${BASH_SOURCE[0]}")/qwen2_5_1_5b_grpo.sh" "$@"
