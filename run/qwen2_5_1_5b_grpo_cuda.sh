#!/usr/bin/env bash
# The Qwen2.5-1.5B GRPO run on NVIDIA GPUs (NCCL): one GPU by default, NPROC_PER_NODE=N for N GPUs,
# NNODES/NODE_RANK/MASTER_ADDR as in run/qwen2_5_1_5b_grpo_multinode.sh for several nodes.
# Needs a CUDA build of torch in $PYTHON's environment (pip install torch, then pip install -e .).
set -euo pipefail
export DEVICE=cuda
exec bash "$(dirname "${BASH_SOURCE[0]}")/qwen2_5_1_5b_grpo.sh" "trainer.experiment_name=qwen2_5_1_5b_math_cuda" "$@"
