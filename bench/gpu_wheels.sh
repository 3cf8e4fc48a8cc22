#!/usr/bin/env bash
# Wheels for bench/gpu_check.sh's TRL and LoRA phases on the lent GPU machine, which has no network:
# trl and datasets with the two dependencies its image lacks (dill, multiprocess), and peft, pinned to
# the versions the CPU dry run was checked with (.venv-trl: trl 1.16.0, datasets 5.2.0; .venv: peft
# 0.21.2), for CPython 3.12 on x86-64 Linux (the H200 image's /opt/torch/.venv python3). Everything else trl and datasets need
# (accelerate, pandas, pyarrow, huggingface-hub, fsspec, xxhash, ...) is in that image.
#
#   bash bench/gpu_wheels.sh            # here, with PyPI reachable: fills bench/wheels (~2 MB, git-ignored)
#   then on the device: `bash bench/gpu_check.sh` with bench/wheels carried (see bench/README.md)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON_VERSION="${PYTHON_VERSION:-3.12}"
mkdir -p bench/wheels
"${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d bench/wheels \
    trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 peft==0.21.2
ls -l bench/wheels
