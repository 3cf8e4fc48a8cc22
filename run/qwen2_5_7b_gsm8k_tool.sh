#!/usr/bin/env bash
# Multi-turn GRPO with tools on GSM8K, Qwen2.5-7B-Instruct (run/configs/qwen2_5_7b_gsm8k_tool.yaml:
# the policy calls a sandboxed Python interpreter / calculator, at most 5 assistant turns, tools from
# run/configs/tools_gsm8k.yaml). See docs/multi_turn.md.
#
#   NPROC_PER_NODE=8 bash run/qwen2_5_7b_gsm8k_tool.sh                 eight Atlas A2 cards
#   DEVICE=cuda NPROC_PER_NODE=8 bash run/qwen2_5_7b_gsm8k_tool.sh     eight NVIDIA GPUs
#
# Environment knobs: MODEL_PATH, DATA_DIR, NPROC_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT,
# DEVICE (npu | cuda | cpu), PYTHON, LOG_FILE, ASCEND_HOME (default /usr/local/Ascend).
# The sandbox uses `unshare` (util-linux) for user/network/PID namespaces; where the container forbids
# them it falls back to an audit hook (weaker; see docs/multi_turn.md) and logs a warning.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DEVICE="${DEVICE:-npu}"
PYTHON="${PYTHON:-python3}"
MODEL_PATH="${MODEL_PATH:-models/Qwen2.5-7B-Instruct}"
DATA_DIR="${DATA_DIR:-data/gsm8k_tool}"
NPROC_PER_NODE="${NPROC_PER_NODE:-8}"
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
LOG_FILE="${LOG_FILE:-outputs/qwen2_5_7b_gsm8k_tool.node${NODE_RANK}.log}"

# ---- inputs: stop before anything starts, saying how to get what is missing -------------------
missing=0
if [ ! -f "$MODEL_PATH/config.json" ]; then
    cat >&2 <<EOF
error: no model at MODEL_PATH=$MODEL_PATH (config.json not found). Download it:
    pip install -U huggingface_hub
    hf download Qwen/Qwen2.5-7B-Instruct --local-dir $MODEL_PATH
  (set HF_ENDPOINT to a mirror if huggingface.co is unreachable, or MODEL_PATH to an existing copy)
EOF
    missing=1
fi
if [ ! -f "$DATA_DIR/train.parquet" ] || [ ! -f "$DATA_DIR/test.parquet" ]; then
    cat >&2 <<EOF
error: no GSM8K parquet in DATA_DIR=$DATA_DIR (train.parquet and test.parquet). Download GSM8K and
convert it with the tool-use system prompt:
    hf download openai/gsm8k --repo-type dataset --local-dir downloads/gsm8k
    $PYTHON tools/preprocess_gsm8k.py --input downloads/gsm8k --output-dir $DATA_DIR --tool-prompt
EOF
    missing=1
fi
if ! "$PYTHON" -c "import torch, transformers, npu_rl" 2>/dev/null; then
    echo "error: $PYTHON cannot import torch, transformers and npu_rl; install into that environment: pip install -e '.[npu]'" >&2
    missing=1
fi
[ "$missing" = 0 ] || exit 1

# ---- device environment -------------------------------------------------------------------
first_n() { seq -s, 0 $(($1 - 1)); }
case "$DEVICE" in
npu)
    ASCEND_HOME="${ASCEND_HOME:-/usr/local/Ascend}"
    set +u # CANN's scripts read unset variables
    for env_file in "$ASCEND_HOME/ascend-toolkit/set_env.sh" "$ASCEND_HOME/nnal/atb/set_env.sh"; do
        # shellcheck disable=SC1090
        if [ -f "$env_file" ]; then source "$env_file"; fi
    done
    set -u
    if ! "$PYTHON" -c "import torch_npu" 2>/dev/null; then
        echo "error: $PYTHON cannot import torch_npu: install CANN, then the torch_npu matching your torch" \
            "(pip install -e '.[npu]'), or set ASCEND_HOME to where CANN lives" >&2
        exit 1
    fi
    export ASCEND_RT_VISIBLE_DEVICES="${ASCEND_RT_VISIBLE_DEVICES:-$(first_n "$NPROC_PER_NODE")}"
    export HCCL_CONNECT_TIMEOUT="${HCCL_CONNECT_TIMEOUT:-1200}" # ranks load the model at different speeds
    export PYTORCH_NPU_ALLOC_CONF="${PYTORCH_NPU_ALLOC_CONF:-expandable_segments:True}" # rollout <-> train
    export TASK_QUEUE_ENABLE="${TASK_QUEUE_ENABLE:-2}" # torch_npu's asynchronous operator dispatch
    ;;
cuda)
    export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-$(first_n "$NPROC_PER_NODE")}"
    export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
    ;;
cpu) ;; # smoke tests of this script only
*)
    echo "error: DEVICE=$DEVICE; use npu, cuda or cpu" >&2
    exit 1
    ;;
esac

# ---- launch -------------------------------------------------------------------------------
ARGS=(
    --config run/configs/qwen2_5_7b_gsm8k_tool.yaml
    "model.path=$MODEL_PATH"
    "data.train_files=[$DATA_DIR/train.parquet]"
    "data.val_files=[$DATA_DIR/test.parquet]"
    "trainer.device=$DEVICE"
    "$@"
)
# torchrun even for one card: FSDP2 then gives fp32 master weights with bf16 compute and parks the
# reference model in host memory, exactly as on many cards.
if [ "$NNODES" -gt 1 ]; then
    LAUNCH=(--nnodes "$NNODES" --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")
else
    LAUNCH=(--standalone)
fi
LAUNCH=("$PYTHON" -m torch.distributed.run "${LAUNCH[@]}" --nproc_per_node "$NPROC_PER_NODE")
mkdir -p "$(dirname "$LOG_FILE")"
echo "[npu_rl] ${LAUNCH[*]} -m npu_rl.train ${ARGS[*]}" | tee "$LOG_FILE"
"${LAUNCH[@]}" -m npu_rl.train "${ARGS[@]}" 2>&1 | tee -a "$LOG_FILE"
