"""Shared session fixtures: a tiny tokenizer, a tiny random Qwen2 model and synthetic parquet files.

They are built with the same code as the demo assets (npu_rl.tools), so tests exercise the real
tokenizer pipeline, chat template and parquet schema. Everything is offline, seeded and takes a
few seconds per session.

Fixtures
- ``tiny_tokenizer_dir``: HF tokenizer folder (byte-level BPE, ~500 vocab, one token per digit,
  ChatML template, eos ``<|im_end|>``, pad ``<|endoftext|>``).
- ``tiny_tokenizer``: that tokenizer loaded with ``AutoTokenizer``.
- ``tiny_model_dir``: HF model folder (random-init Qwen2ForCausalLM, hidden 64, 2 layers, fp32,
  tied embeddings, seed 0) holding the same tokenizer and a generation config.
- ``synthetic_parquet``: ``{"train": Path, "test": Path}``, 48 / 16 rows in verl's row schema.
"""

from __future__ import annotations

import os
from pathlib import Path

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. On a shared 2-core machine
# spinning threads of concurrent processes starve each other (a 2 s test measured 74 s under load).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
from _tolerances import install as _record_tolerances

from npu_rl.tools import make_synthetic_math, make_tiny_model
from npu_rl.tools._tiny_tokenizer import save_tokenizer

_record_tolerances()  # only with NPU_RL_TOL_RECORD set (bench/tolerances.py)


@pytest.fixture(scope="session")
def _tiny_tokenizer_obj():
    return make_tiny_model.build_tokenizer(seed=0)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory, _tiny_tokenizer_obj) -> Path:
    return save_tokenizer(_tiny_tokenizer_obj, tmp_path_factory.mktemp("tiny_tokenizer"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, _tiny_tokenizer_obj) -> Path:
    model = make_tiny_model.random_model(_tiny_tokenizer_obj, size="test", seed=0)
    return make_tiny_model.save_model_dir(model, _tiny_tokenizer_obj, tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def synthetic_parquet(tmp_path_factory) -> dict[str, Path]:
    return make_synthetic_math.write_splits(tmp_path_factory.mktemp("synthetic"), n_train=48, n_test=16, seed=0)
