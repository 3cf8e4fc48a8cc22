#!/usr/bin/env bash
# The Qwen2.5-1.5B GRPO run on several Ascend nodes: start this on every node, same settings, own NODE_RANK.
#
#   node 0:  NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash run/qwen2_5_1_5b_grpo_multinode.sh
#   node 1:  NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 bash run/qwen2_5_1_5b_grpo_multinode.sh
#
# MASTER_ADDR is node 0's address on the cluster network; NPROC_PER_NODE defaults to 8 cards.
# SOCKET_IFNAME=<nic> pins HCCL's and gloo's bootstrap to that interface when the default route is
# not the cluster network. Checkpoints (trainer.default_local_dir) and the model/data paths must be on
# storage every node sees: each rank writes its own shards into the same global_step_N directory.
# Weights are sharded within each node and replicated across nodes (HSDP, actor.fsdp.fsdp_size =
# NPROC_PER_NODE): all-gathers and reduce-scatters stay on the node's own links and only one gradient
# all-reduce per step crosses the network. FSDP_SIZE=-1 shards over every rank of every node instead
# (for a model whose weights and AdamW state do not fit one node's cards).
# Extra arguments are dotted config overrides, as for run/qwen2_5_1_5b_grpo.sh.
set -euo pipefail
: "${NNODES:?set NNODES, the number of nodes}"
: "${NODE_RANK:?set NODE_RANK, 0 on the node at MASTER_ADDR}"
: "${MASTER_ADDR:?set MASTER_ADDR, node 0 address reachable from every node}"
export NNODES NODE_RANK MASTER_ADDR
export NPROC_PER_NODE="${NPROC_PER_NODE:-8}"
export MASTER_PORT="${MASTER_PORT:-29500}"
# Across nodes the first collectives wait for the slowest node to load the model: more than the
# single-card sample's 360 s.
export HCCL_CONNECT_TIMEOUT="${HCCL_CONNECT_TIMEOUT:-1200}" HCCL_EXEC_TIMEOUT="${HCCL_EXEC_TIMEOUT:-1200}"
if [ -n "${SOCKET_IFNAME:-}" ]; then
    export HCCL_SOCKET_IFNAME="$SOCKET_IFNAME" GLOO_SOCKET_IFNAME="$SOCKET_IFNAME"
fi
exec bash "$(dirname "${BASH_SOURCE[0]}")/qwen2_5_1_5b_grpo.sh" \
    "trainer.experiment_name=qwen2_5_1_5b_math_${NNODES}x${NPROC_PER_NODE}" \
    "actor.fsdp.fsdp_size=${FSDP_SIZE:-$NPROC_PER_NODE}" "$@"
