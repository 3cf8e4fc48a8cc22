"""The hf rollout sizes its generate calls to the device's free memory (npu_rl.rollout.kv_budget).

No card here: the device's (free, total) report is a function handed to the rollout, so a small
"device" is a lambda; the arithmetic it is compared with is the real cache's and buffers' bytes.
"""

from __future__ import annotations

import pytest
import torch
from test_rollout_hf import PROMPTS, HFRollout
from transformers import AutoModelForCausalLM, DynamicCache

from npu_rl.config.fields import ConfigError
from npu_rl.device import Accelerator
from npu_rl.rollout import kv_budget
from npu_rl.rollout.base import SamplingParams
from npu_rl.rollout.fast_decode import FastDecoder
from npu_rl.rollout.kv_budget import DecodeShape

PARAMS = SamplingParams(n=3, temperature=1.0, max_new_tokens=6)
SEEDS = [1, 2, 3, 4]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()


@pytest.fixture(scope="module")
def pad_id(tiny_tokenizer):
    return tiny_tokenizer.pad_token_id


def call_sizes(rollout, monkeypatch) -> list[int]:
    """The number of prompts of each generate call the rollout makes (filled in as it runs)."""
    sizes: list[int] = []
    inner = rollout._generate_chunk
    monkeypatch.setattr(
        rollout, "_generate_chunk", lambda prompts, *a: sizes.append(len(prompts)) or inner(prompts, *a)
    )
    return sizes


def test_kv_bytes_per_token_is_what_the_cache_and_the_decode_buffers_hold(model, pad_id, monkeypatch):
    shape = DecodeShape.of(model)
    cache = DynamicCache()
    with torch.no_grad():
        model(input_ids=torch.tensor([PROMPTS[0]]), past_key_values=cache, use_cache=True)
    held = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert held == len(PROMPTS[0]) * shape.kv_bytes_per_token

    buffers: list[int] = []
    start = FastDecoder.start

    def record(self, *args):
        start(self, *args)
        buffers.append(sum(t.nbytes for t in self.keys + self.values))

    monkeypatch.setattr(FastDecoder, "start", record)
    HFRollout(model, [pad_id], pad_id).generate(PROMPTS, PARAMS, seeds=SEEDS)
    width = max(len(p) for p in PROMPTS)
    assert buffers == [len(PROMPTS) * PARAMS.n * (width + PARAMS.max_new_tokens) * shape.kv_bytes_per_token]


def test_calls_shrink_to_what_fits_and_the_samples_stay_the_same(model, pad_id, monkeypatch, capsys):
    width = max(len(p) for p in PROMPTS)
    per_prompt = DecodeShape.of(model).bytes_per_prompt(PARAMS, width, fast=True)
    free = int(2.5 * per_prompt / kv_budget.HEADROOM)  # room for two prompts' samples, not three
    small = HFRollout(model, [pad_id], pad_id, free_memory=lambda: (free, 10 * free))
    sizes = call_sizes(small, monkeypatch)
    out = small.generate(PROMPTS, PARAMS, seeds=SEEDS)
    assert sizes == [2, 2]
    roomy = HFRollout(model, [pad_id], pad_id, free_memory=lambda: (100 * free, 100 * free))
    roomy_sizes = call_sizes(roomy, monkeypatch)
    ref = roomy.generate(PROMPTS, PARAMS, seeds=SEEDS)
    assert roomy_sizes == [4]
    assert torch.equal(out.response_ids, ref.response_ids) and torch.equal(out.lengths, ref.lengths)
    # other batch shapes, other fp32 summation orders: measured max 4.8e-7 on an Intel Xeon with AVX-512 and with
    # AVX2 kernels forced; atol 5e-6 is 10x
    torch.testing.assert_close(out.logprobs, ref.logprobs, atol=5e-6, rtol=0)
    small.generate(PROMPTS, PARAMS, seeds=SEEDS)  # the same lowered size is reported once
    said = capsys.readouterr().out
    assert said.count("[npu_rl] hf rollout: 2 prompts per generate call instead of rollout.micro_batch_size=64") == 1


def test_a_device_without_room_for_one_prompt_stops_before_generating(model, pad_id, monkeypatch):
    rollout = HFRollout(model, [pad_id], pad_id, free_memory=lambda: (1000, 10**9))
    sizes = call_sizes(rollout, monkeypatch)
    with pytest.raises(ConfigError, match=r"B of the device are free: lower rollout\.n or rollout\.max_new_tokens"):
        rollout.generate(PROMPTS, PARAMS, seeds=SEEDS)
    assert sizes == []


def test_the_cpu_reports_no_device_memory_and_keeps_micro_batch_size(model, pad_id, monkeypatch):
    rollout = HFRollout(model, [pad_id], pad_id, micro_batch_size=3, free_memory=Accelerator("cpu").memory_free_total)
    sizes = call_sizes(rollout, monkeypatch)
    rollout.generate(PROMPTS, PARAMS, seeds=SEEDS)
    assert sizes == [3, 1]
