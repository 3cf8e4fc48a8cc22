"""The vLLM backend's pure helpers, without an engine (the engine tests are slow: tests/test_vllm_rollout.py)."""

from __future__ import annotations

import sys

import pytest
import torch
from transformers import AutoConfig

from npu_rl.config import ConfigError, RolloutConfig, load_config
from npu_rl.rollout import vllm as vllm_backend


def test_samples_are_right_padded_with_their_group_and_sample_index():
    rows = [
        ([5, 6, 7], [-0.1, -0.2, -0.3], "stop"),
        ([8], [-0.5], "length"),
        ([9, 9], [-1.0, -2.0], "stop"),
        ([], [], "stop"),
    ]
    out = vllm_backend._pack(rows, pad_token_id=0, n=2)
    assert out.response_ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 9, 0], [0, 0, 0]]
    assert out.logprobs[0].tolist() == pytest.approx([-0.1, -0.2, -0.3]) and out.logprobs[1, 1:].eq(0).all()
    assert out.lengths.tolist() == [3, 1, 2, 0]
    assert out.finish_reasons == ["stop", "length", "stop", "stop"]
    assert out.group.tolist() == [0, 0, 1, 1] and out.sample.tolist() == [0, 1, 0, 1]


def test_nearby_prompt_seeds_get_distant_vllm_seeds():
    seeds = [vllm_backend._spread(s) for s in range(100)]
    assert seeds == [vllm_backend._spread(s) for s in range(100)], "deterministic"
    assert all(0 <= s < 2**63 for s in seeds)
    # vLLM seeds sample j of a request with seed + j: no two prompts' streams may overlap for n <= 64
    assert min(abs(a - b) for i, a in enumerate(seeds) for b in seeds[i + 1 :]) > 64


def test_cpu_kv_cache_is_capped_and_holds_one_full_sequence(tiny_model_dir):
    cfg = AutoConfig.from_pretrained(tiny_model_dir)
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * 4  # fp32
    assert vllm_backend._cpu_kv_cache_bytes(tiny_model_dir, torch.float32, 8, 100) == per_token * 100 * 8
    huge = vllm_backend._cpu_kv_cache_bytes(tiny_model_dir, torch.float32, 10**9, 100)
    assert huge == max(per_token * 100, vllm_backend.CPU_KV_CACHE_CAP_BYTES)


def test_missing_vllm_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(ImportError, match=r"install_vllm_cpu\.sh"):
        vllm_backend.import_vllm()


def test_engine_knobs_left_null_keep_vllms_defaults():
    assert vllm_backend._optional_engine_args(RolloutConfig(name="vllm")) == {}
    cfg = RolloutConfig(name="vllm", enable_chunked_prefill=False, max_num_batched_tokens=4096)
    assert vllm_backend._optional_engine_args(cfg) == {"enable_chunked_prefill": False, "max_num_batched_tokens": 4096}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("rollout.engine_kwargs={enable_prefix_caching: false}", "is for rollout.name=vllm, not 'hf'"),
        ("rollout.engine_kwargs={max_num_seqs: 8}", "engine_kwargs.max_num_seqs: set rollout.max_num_seqs instead"),
        ("rollout.engine_kwargs={seed: 3}", "set trainer.seed instead"),
        ("rollout.engine_kwargs={logprobs_mode: raw_logprobs}", "npu_rl sets it"),
    ],
)
def test_engine_kwargs_cannot_fight_the_config(override, message, tiny_model_dir, synthetic_parquet):
    name = [] if "rollout.name=vllm" in message else ["rollout.name=vllm"]
    with pytest.raises(ConfigError, match=message):
        load_config(None, [*_inputs(tiny_model_dir, synthetic_parquet), *name, override])


def _inputs(model_dir, parquet) -> list[str]:
    return [f"model.path={model_dir}", f"data.train_files=[{parquet['train']}]"]


def test_engine_kwargs_are_checked_against_the_installed_vllm(tiny_model_dir, synthetic_parquet):
    pytest.importorskip("vllm")
    base = [*_inputs(tiny_model_dir, synthetic_parquet), "rollout.name=vllm"]
    with pytest.raises(ConfigError, match=r"engine_kwargs.enable_prefix_cache: .*did you mean 'enable_prefix_caching'"):
        load_config(None, [*base, "rollout.engine_kwargs={enable_prefix_cache: false}"])
    cfg = load_config(None, [*base, "rollout.engine_kwargs={enable_prefix_caching: false}"])
    assert cfg.rollout.engine_kwargs == {"enable_prefix_caching": False}


def test_a_vllm_without_generation_head_dtype_is_refused_for_the_fp32_head(monkeypatch):
    """Before vLLM's PR #48390 the head_dtype override was accepted and ignored for generation models: only
    the trainer's head would be fp32. Such a LogitsProcessor (no head_dtype in its __init__) is refused."""
    pytest.importorskip("vllm")
    from vllm.model_executor.layers.logits_processor import LogitsProcessor

    vllm_backend.check_fp32_head_support()  # the installed vLLM reads it

    def old_init(self, vocab_size, org_vocab_size=None, scale=1.0, logits_as_input=False, soft_cap=None):
        self.scale, self.vocab_size = scale, vocab_size

    monkeypatch.setattr(LogitsProcessor, "__init__", old_init)
    with pytest.raises(ConfigError, match=r"model\.fp32_lm_head: vLLM .* generation logits in the model dtype"):
        vllm_backend.check_fp32_head_support()


class _Card:
    """A device that reports `free` of `total` bytes (the card is not here; the driver call is all it mocks)."""

    def __init__(self, free: int, total: int) -> None:
        self.reported = (free, total)

    def memory_free_total(self) -> tuple[int, int]:
        return self.reported


def test_vllm_memory_share_is_checked_before_the_engine_starts():
    gib = 1024**3
    vllm_backend.check_engine_memory(0.5, _Card(40 * gib, 64 * gib))  # 32 GiB asked, 40 free
    with pytest.raises(ConfigError) as err:
        vllm_backend.check_engine_memory(0.6, _Card(30 * gib, 64 * gib))
    message = str(err.value)
    assert "rollout.gpu_memory_utilization=0.6 asks vLLM for 38.4 GiB of this 64.0 GiB device" in message
    assert "30.0 GiB are free" in message and "set it to at most 0.46" in message  # 0.46 x 64 = 29.4 <= 30
    from npu_rl.device import Accelerator

    assert Accelerator("cpu").memory_free_total() is None  # the CPU: vLLM sizes its cache itself
    vllm_backend.check_engine_memory(0.9, Accelerator("cpu"))
