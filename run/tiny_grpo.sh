#!/usr/bin/env bash
# Offline GRPO demo on CPU: a tiny Qwen2 model visibly learns to work arithmetic problems.
#
#   bash run/tiny_grpo.sh [dotted overrides for the trainer, e.g. trainer.total_training_steps=80]
#
# 1. creates/uses .venv and installs npu_rl (run/setup_env.sh; CPU torch, never a CUDA build)
# 2. builds the assets if absent: synthetic train/test parquet (assets/data/synthetic) and the
#    pre-trained tiny base (assets/models/tiny-base; 450 + 60 pre-training steps)
# 3. evaluates the base on the held-out test parquet: greedy accuracy, sampled accuracy (T=1),
#    pass@8, mean response length
# 4. GRPO with the packaged config tiny_grpo (npu_rl/configs/tiny_grpo.yaml) (40 steps of 16 prompts x 8 samples)
# 5. evaluates the trained model identically and prints accuracy before -> after
#
# Work is fixed in steps; on 2 free cores of an AVX-512 AMD EPYC the whole run took 6 min 14 s (in a slow phase), 80% of it
# building the base once (bench/README.md, "Tiny GRPO demo"); later runs reuse it. Not yet timed on an
# AVX2-only machine (projected ~8 min: the previous recipe took 1.6x as long there).
# Set NPU_RL_THREADS to change the torch thread count (default: every core this process may use, `nproc`).
set -euo pipefail
cd "$(dirname "$0")/.."
NPU_RL_EXTRAS="${NPU_RL_EXTRAS:-dev}" source run/setup_env.sh
# Idle OpenMP threads sleep instead of spinning: on a shared machine spinning threads of concurrent
# processes starve each other (measured: 3x more CPU time per training step).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
THREADS="${NPU_RL_THREADS:-$(nproc)}"  # nproc counts the cores in this process's affinity mask
DATA=assets/data/synthetic
MODEL=assets/models/tiny-base
RUN="tiny_grpo_$(date +%Y%m%d_%H%M%S)"
LOG_DIR="outputs/tiny_grpo/$RUN"
CKPT_DIR="checkpoints/tiny_grpo/$RUN"
start=$SECONDS

if [ ! -f "$DATA/train.parquet" ] || [ ! -f "$DATA/test.parquet" ]; then
    echo "== building synthetic data in $DATA"
    python -m npu_rl.tools.make_synthetic_math --out-dir "$DATA"
fi
if [ ! -f "$MODEL/model.safetensors" ]; then
    echo "== pre-training the tiny base model into $MODEL (fixed step counts)"
    python -m npu_rl.tools.make_tiny_model --out-dir "$MODEL" --data-dir "$DATA" --num-threads "$THREADS" --skip-eval
fi

echo "== evaluating the base model on the held-out set"
python -m npu_rl.tools._headroom "$MODEL" --data "$DATA/test.parquet" --out-dir "$LOG_DIR/eval" --tag before \
    --num-threads "$THREADS"

echo "== GRPO ($RUN)"
python -m npu_rl.train --config tiny_grpo \
    trainer.experiment_name="$RUN" trainer.num_threads="$THREADS" "$@"

echo "== evaluating the trained model identically"
python -m npu_rl.tools._headroom "$CKPT_DIR" --data "$DATA/test.parquet" --out-dir "$LOG_DIR/eval" --tag after \
    --num-threads "$THREADS" --before "$LOG_DIR/eval/before.headroom.json"

echo "== done in $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s"
echo "training logs:  $LOG_DIR (metrics.jsonl, TensorBoard events, config.yaml)"
echo "evaluations:    $LOG_DIR/eval (before/after generations and summaries)"
echo "checkpoints:    $CKPT_DIR"
