#!/usr/bin/env bash
# Create (or reuse) .venv and install npu_rl into it. Sourced by the run scripts.
# torch is installed first and by exact version so pip takes the CPU wheel and never a CUDA build;
# set NPU_RL_TORCH to another pin on accelerator machines (e.g. the one matching your torch_npu).
set -euo pipefail
NPU_RL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${NPU_RL_VENV:-$NPU_RL_ROOT/.venv}"
EXTRAS="${NPU_RL_EXTRAS:-dev}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
fi
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    "$VENV/bin/pip" install -q "torch==${NPU_RL_TORCH:-2.13.0}"
fi
"$VENV/bin/pip" install -q -e "$NPU_RL_ROOT[$EXTRAS]"
export PATH="$VENV/bin:$PATH"
