#!/usr/bin/env bash
# Offline multi-turn GRPO demo on CPU: a tiny Qwen2 model learns to call the calculator more often,
# and its held-out accuracy goes up.
#
#   bash run/tiny_tool_grpo.sh [dotted overrides for the trainer, e.g. trainer.total_training_steps=40]
#
# 1. creates/uses .venv and installs npu_rl (run/setup_env.sh; CPU torch, never a CUDA build)
# 2. builds the assets if absent: the arithmetic demo's data and tiny base (as run/tiny_grpo.sh), then
#    npu_rl/tools/make_tool_demo.py: train/test parquet with a tool system prompt
#    (assets/data/synthetic_tool) and the base after a short SFT stage in which a share of the answers
#    call the calculator (assets/models/tiny-tool, with the Qwen2.5-style tool chat template)
# 3. evaluates it on the held-out test parquet with the multi-turn rollout and the real calculator:
#    greedy accuracy and tool-call rate, the same at T=1 (npu_rl/tools/_tool_eval.py)
# 4. GRPO with the packaged config tiny_tool_grpo (npu_rl/configs/tiny_tool_grpo.yaml): multi-turn,
#    calculator from npu_rl/configs/tools_calculator.yaml, only correct final answers rewarded
# 5. evaluates the trained model identically and prints accuracy and tool-call rate before -> after
#
# Work is fixed in steps. Set NPU_RL_THREADS to change the torch thread count (default: `nproc`).
set -euo pipefail
cd "$(dirname "$0")/.."
NPU_RL_EXTRAS="${NPU_RL_EXTRAS:-dev}" source run/setup_env.sh
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"  # see run/tiny_grpo.sh
THREADS="${NPU_RL_THREADS:-$(nproc)}"
BASE_DATA=assets/data/synthetic
BASE=assets/models/tiny-base
DATA=assets/data/synthetic_tool
MODEL=assets/models/tiny-tool
RUN="tiny_tool_grpo_$(date +%Y%m%d_%H%M%S)"
LOG_DIR="outputs/tiny_tool_grpo/$RUN"
CKPT_DIR="checkpoints/tiny_tool_grpo/$RUN"
start=$SECONDS

if [ ! -f "$BASE/model.safetensors" ]; then
    if [ ! -f "$BASE_DATA/test.parquet" ]; then
        echo "== building synthetic data in $BASE_DATA"
        python -m npu_rl.tools.make_synthetic_math --out-dir "$BASE_DATA"
    fi
    echo "== pre-training the tiny base model into $BASE (fixed step counts)"
    python -m npu_rl.tools.make_tiny_model --out-dir "$BASE" --data-dir "$BASE_DATA" --num-threads "$THREADS" --skip-eval
fi
if [ ! -f "$MODEL/model.safetensors" ] || [ ! -f "$DATA/test.parquet" ]; then
    echo "== teaching the base the calculator's call format into $MODEL (fixed step counts)"
    python -m npu_rl.tools.make_tool_demo --base-dir "$BASE" --out-dir "$MODEL" --data-dir "$DATA" \
        --num-threads "$THREADS"
fi

echo "== evaluating the tool-taught model on the held-out set (multi-turn, real calculator)"
python -m npu_rl.tools._tool_eval "$MODEL" --data "$DATA/test.parquet" --out-dir "$LOG_DIR/eval" --tag before \
    --num-threads "$THREADS"

echo "== GRPO with tools ($RUN)"
python -m npu_rl.train --config tiny_tool_grpo \
    trainer.experiment_name="$RUN" trainer.num_threads="$THREADS" "$@"

echo "== evaluating the trained model identically"
python -m npu_rl.tools._tool_eval "$CKPT_DIR" --data "$DATA/test.parquet" --out-dir "$LOG_DIR/eval" --tag after \
    --num-threads "$THREADS" --before "$LOG_DIR/eval/before.tool_eval.json"

echo "== done in $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s"
echo "training logs:  $LOG_DIR (metrics.jsonl with tool/call_rate, TensorBoard events, config.yaml)"
echo "evaluations:    $LOG_DIR/eval (before/after generations and summaries)"
echo "checkpoints:    $CKPT_DIR"
