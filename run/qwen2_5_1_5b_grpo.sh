#!/usr/bin/env bash
# GRPO on Qwen2.5-1.5B-Instruct with MATH-lighteval: the Ascend single-card sample, by the book
# (cann-recipes-train llm_rl/qwen2_5/verl_npu_demo/run_qwen2_5_1_5b_single.sh on verl release/v0.6.1,
# reported MATH 43.48 -> 55.06). Values: npu_rl/configs/qwen2_5_1_5b_grpo.yaml (vLLM rollout, n=8, batch 256,
# mini-batch 256, micro-batch 8, prompt 512 / response 1024 tokens, lr 1e-6 with 10 warmup steps, KL loss
# low_var_kl 0.001, 5 epochs, save every 70 steps, validate every 10) and the sample's reward as the
# `ascend_sample_math` preset. Data: python -m npu_rl.tools.preprocess_math --prompt-template ascend_sample (the sample's
# <think>/<answer> system prompt).
#
#   bash run/qwen2_5_1_5b_grpo.sh [dotted overrides ...]       one Atlas A2 card
#   NPROC_PER_NODE=8 bash run/qwen2_5_1_5b_grpo.sh             eight cards of this node (torchrun + FSDP2)
#   run/qwen2_5_1_5b_grpo_multinode.sh / run/qwen2_5_1_5b_grpo_cuda.sh   several nodes / NVIDIA GPUs
#
# Where this run knowingly differs from the sample, and why:
# - No Ray and no verl: torchrun + FSDP2 with the vLLM engine in the trainer process (same math, same
#   batch accounting; verl's hybrid engine colocates the same way).
# - The system prompt is a system turn in each parquet row instead of a replaced tokenizer_config.json;
#   Qwen2.5's template renders both to the same text, and the model folder stays untouched.
# - Correctness in the reward is math-verify with the sample's settings when math-verify is installed
#   (pip install math-verify, as the sample's requirements do); without it our own grader decides, which
#   also counts 0.25 = 1/4 but differs on a few forms (bench/README.md) - install it for comparable curves.
# - TASK_QUEUE_ENABLE=2 (torch_npu's asynchronous dispatch) is set for speed; the sample leaves the default.
# - HCCL_CONNECT_TIMEOUT and HCCL_EXEC_TIMEOUT are the sample's 360 s; the multi-node script raises them.
# - The sample's `use_remove_padding=False` is not followed: logprob and training passes here skip padding
#   (actor.forward=auto: packed rows, same log-probs to fp32 tolerance; under the sample's gradient checkpointing
#   too, the packed layers recompute themselves); `critic_warmup=0` is moot for GRPO
#   (no critic); `data.val_batch_size` only splits validation generation into calls of 256 prompts.
#
# Environment knobs: MODEL_PATH, DATA_DIR, NPROC_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT,
# DEVICE (npu | cuda | cpu), PYTHON (the interpreter of the environment with torch_npu), LOG_FILE,
# ASCEND_HOME (default /usr/local/Ascend). Run from any directory; relative paths are repository-relative.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DEVICE="${DEVICE:-npu}"
PYTHON="${PYTHON:-python3}"
MODEL_PATH="${MODEL_PATH:-models/Qwen2.5-1.5B-Instruct}"
DATA_DIR="${DATA_DIR:-data/math}"
NPROC_PER_NODE="${NPROC_PER_NODE:-1}"
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
LOG_FILE="${LOG_FILE:-outputs/qwen2_5_1_5b_grpo.node${NODE_RANK}.log}"

# ---- inputs: stop before anything starts, saying how to get what is missing -------------------
missing=0
if [ ! -f "$MODEL_PATH/config.json" ]; then
    cat >&2 <<EOF
error: no model at MODEL_PATH=$MODEL_PATH (config.json not found). Download it:
    pip install -U huggingface_hub
    hf download Qwen/Qwen2.5-1.5B-Instruct --local-dir $MODEL_PATH
  (set HF_ENDPOINT to a mirror if huggingface.co is unreachable, or MODEL_PATH to an existing copy)
EOF
    missing=1
fi
if [ ! -f "$DATA_DIR/train.parquet" ] || [ ! -f "$DATA_DIR/test.parquet" ]; then
    cat >&2 <<EOF
error: no MATH-lighteval parquet in DATA_DIR=$DATA_DIR (train.parquet and test.parquet). Download the
dataset and convert it to verl's row schema (prompt with the \\boxed{} instruction, ground truth):
    hf download DigitalLearningGmbH/MATH-lighteval --repo-type dataset --local-dir downloads/MATH-lighteval
    $PYTHON -m npu_rl.tools.preprocess_math --input downloads/MATH-lighteval --output-dir $DATA_DIR --prompt-template ascend_sample
EOF
    missing=1
fi
if ! "$PYTHON" -c "import torch, transformers, npu_rl" 2>/dev/null; then
    echo "error: $PYTHON cannot import torch, transformers and npu_rl; install into that environment: pip install -e '.[npu,math-verify]'" >&2
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
    # The sample's settings: HCCL timeouts and base port, NZ weight layout off for RL precision.
    export HCCL_CONNECT_TIMEOUT="${HCCL_CONNECT_TIMEOUT:-360}"
    export HCCL_EXEC_TIMEOUT="${HCCL_EXEC_TIMEOUT:-360}"
    export HCCL_IF_BASE_PORT="${HCCL_IF_BASE_PORT:-64033}"
    export VLLM_ASCEND_ENABLE_NZ="${VLLM_ASCEND_ENABLE_NZ:-0}"
    export ASCEND_GLOBAL_LOG_LEVEL="${ASCEND_GLOBAL_LOG_LEVEL:-3}" # errors only, as in the sample
    export ASCEND_SLOG_PRINT_TO_STDOUT="${ASCEND_SLOG_PRINT_TO_STDOUT:-0}"
    export TASK_QUEUE_ENABLE="${TASK_QUEUE_ENABLE:-2}" # torch_npu's asynchronous operator dispatch
    # No expandable_segments here: vLLM sleep mode (rollout.free_cache_engine, on in this config) cannot
    # work with it, and npu_rl/ascend_env.py removes it from PYTORCH_NPU_ALLOC_CONF whenever sleep mode is on.
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
    --config "${CONFIG:-qwen2_5_1_5b_grpo}"
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
