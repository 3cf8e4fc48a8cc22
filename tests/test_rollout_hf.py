"""The transformers rollout: sampling contract, EOS handling, logprobs, and the fast decode path.

Real tiny models (random init, built from config) and the real tokenizer; every expectation is
computed independently with plain full forwards of the model or `model.generate`.
"""

from __future__ import annotations

import pytest
import torch
from _arch_models import sharp_model
from transformers import AutoModelForCausalLM, Qwen2Config

from npu_rl.compute import REFERENCE_PLAN, ComputeError, build_plan
from npu_rl.device import Accelerator
from npu_rl.rollout.base import SamplingParams
from npu_rl.rollout.hf import HFRollout as _HFRollout
from npu_rl.rollout.hf import _uniforms, sample_next

PROMPTS = [[5, 17, 42, 99, 7, 301], [12, 250], [64, 65, 66, 67], [9, 8, 7, 6, 5, 4, 3, 2, 100]]


def HFRollout(model, eos, pad_id, fast: bool = True, **kwargs) -> _HFRollout:
    """The rollout with the plan `auto` resolves to on the CPU (fast), or the reference plan."""
    plan = build_plan(model, Accelerator("cpu")) if fast else REFERENCE_PLAN
    return _HFRollout(model, eos, pad_id, plan, **kwargs)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    m = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    return m.eval()


@pytest.fixture(scope="module")
def pad_id(tiny_tokenizer):
    return tiny_tokenizer.pad_token_id


def full_forward_logprobs(model, prompt: list[int], response: list[int], temperature: float) -> torch.Tensor:
    """log_softmax(logits / T) of each response token from one unpadded forward: the reference."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits / temperature, -1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


def greedy_generate(model, prompt: list[int], pad_id: int, max_new_tokens: int, eos: int | None, **kw) -> list[int]:
    """transformers' own greedy decoding of one unpadded prompt: the reference for the rollout's."""
    out = model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        pad_token_id=pad_id,
        **kw,
    )
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("fast", [True, False])
def test_greedy_equals_model_generate(model, pad_id, fast):
    rollout = HFRollout(model, [pad_id + 10_000], pad_id, fast=fast)  # an EOS that never comes
    out = rollout.generate(PROMPTS, SamplingParams(n=1, temperature=0.0, max_new_tokens=10))
    for row, prompt in enumerate(PROMPTS):
        assert out.response_ids[row].tolist() == greedy_generate(model, prompt, pad_id, 10, None)
        assert out.finish_reasons[row] == "length" and out.lengths[row] == 10


@pytest.mark.parametrize("fast", [True, False])
def test_eos_stops_each_row(model, pad_id, fast):
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=12)
    free = HFRollout(model, [pad_id + 10_000], pad_id, fast=fast).generate(PROMPTS, params)
    eos = int(free.response_ids[0, 3])  # row 0 stops at its 4th token (or where it first emits it)
    out = HFRollout(model, [eos], pad_id, fast=fast).generate(PROMPTS, params)
    for row in range(len(PROMPTS)):
        tokens = free.response_ids[row].tolist()
        stop = tokens.index(eos) + 1 if eos in tokens else 12
        assert out.lengths[row] == stop
        assert out.finish_reasons[row] == ("stop" if eos in tokens else "length")
        assert out.response_ids[row, :stop].tolist() == tokens[:stop]
        assert (out.response_ids[row, stop:] == pad_id).all()
        assert (out.logprobs[row, stop:] == 0).all()
    assert out.lengths[0] <= 4 and out.lengths.max() > out.lengths[0]  # the rows really stopped apart


@pytest.mark.parametrize("fast", [True, False])
def test_logprobs_equal_a_full_forward(model, pad_id, fast):
    temperature = 0.7
    out = HFRollout(model, [pad_id], pad_id, fast=fast).generate(
        PROMPTS, SamplingParams(n=3, temperature=temperature, max_new_tokens=9), seeds=[1, 2, 3, 4]
    )
    for row in range(len(PROMPTS) * 3):
        length = int(out.lengths[row])
        response = out.response_ids[row, :length].tolist()
        expected = full_forward_logprobs(model, PROMPTS[row // 3], response, temperature)
        # measured max 4.8e-7 (AVX-512), 9.5e-7 (AVX2-emulated); atol 5e-6 is 5x
        torch.testing.assert_close(out.logprobs[row, :length], expected, atol=5e-6, rtol=1e-5)


def test_same_seeds_same_samples_whatever_the_batch(model, pad_id):
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=8)
    seeds = [11, 22, 33, 44]
    together = HFRollout(model, [pad_id], pad_id).generate(PROMPTS, params, seeds=seeds)
    one_by_one = HFRollout(model, [pad_id], pad_id, micro_batch_size=1).generate(PROMPTS, params, seeds=seeds)
    alone = HFRollout(model, [pad_id], pad_id).generate(PROMPTS[2:3], params, seeds=seeds[2:3])
    width = alone.response_ids.shape[1]
    assert torch.equal(together.response_ids, one_by_one.response_ids)
    assert torch.equal(together.response_ids[8:12, :width], alone.response_ids)
    assert not torch.equal(together.response_ids[0:4], together.response_ids[4:8])  # seeds matter
    other = HFRollout(model, [pad_id], pad_id).generate(PROMPTS[2:3], params, seeds=[99])
    assert not torch.equal(other.response_ids, alone.response_ids)


def test_sample_next_respects_top_k_and_top_p():
    torch.manual_seed(0)
    logits = torch.randn(1, 50) * 3
    probs = torch.softmax(logits[0], -1)
    uniforms = (torch.arange(4000) + 0.5) / 4000  # evenly spaced: frequencies are exact probabilities
    rows = logits.expand(len(uniforms), -1)
    top = torch.topk(probs, 5).indices
    tokens, logprobs = sample_next(rows, SamplingParams(temperature=1.0, top_k=5), uniforms)
    assert set(tokens.tolist()) <= set(top.tolist())
    freq = torch.bincount(tokens, minlength=50).float() / len(uniforms)
    # 4000 evenly spaced uniforms: frequencies are off by the grid (measured 1.5e-4 on both kinds), not by kernels
    torch.testing.assert_close(freq[top], probs[top] / probs[top].sum(), atol=1e-3, rtol=0)
    # untruncated logprob; measured 4.8e-7 on both kinds, atol 5e-6 is 10x
    torch.testing.assert_close(logprobs, torch.log(probs[tokens]), atol=5e-6, rtol=0)

    order = torch.argsort(probs, descending=True)
    nucleus = order[: int((probs[order].cumsum(0) < 0.6).sum()) + 1]  # smallest set reaching 0.6
    tokens, _ = sample_next(rows, SamplingParams(temperature=1.0, top_p=0.6), uniforms)
    assert set(tokens.tolist()) == set(nucleus.tolist())


def test_sample_next_min_p_and_repetition_penalty_as_vllm_applies_them():
    torch.manual_seed(1)
    logits = torch.randn(1, 50) * 3
    uniforms = (torch.arange(4000) + 0.5) / 4000
    rows = logits.expand(len(uniforms), -1)
    probs = torch.softmax(logits[0] / 0.7, -1)
    tokens, logprobs = sample_next(rows, SamplingParams(temperature=0.7, min_p=0.2), uniforms)
    kept = (probs >= 0.2 * probs.max()).nonzero().squeeze(-1)
    assert set(tokens.tolist()) == set(kept.tolist()) and 1 < len(kept) < 50
    freq = torch.bincount(tokens, minlength=50).float() / len(uniforms)
    torch.testing.assert_close(freq[kept], probs[kept] / probs[kept].sum(), atol=1e-3, rtol=0)  # the grid's error
    # the logprob stays that of the plain tempered distribution; measured as the top-k case above
    torch.testing.assert_close(logprobs, torch.log(probs[tokens]), atol=5e-6, rtol=0)

    seen = torch.zeros(1, 50, dtype=torch.bool)
    seen[0, torch.argsort(logits[0], descending=True)[:3]] = True  # the three likeliest were seen
    seen[0, torch.argsort(logits[0])[:3]] = True  # and the three least likely (negative logits)
    penalized = torch.where(seen[0], torch.where(logits[0] > 0, logits[0] / 1.5, logits[0] * 1.5), logits[0])
    tokens, logprobs = sample_next(
        rows, SamplingParams(temperature=0.7, repetition_penalty=1.5), uniforms, seen.expand(len(uniforms), -1)
    )
    freq = torch.bincount(tokens, minlength=50).float() / len(uniforms)
    torch.testing.assert_close(freq, torch.softmax(penalized / 0.7, -1), atol=1e-3, rtol=0)
    torch.testing.assert_close(logprobs, torch.log(probs[tokens]), atol=5e-6, rtol=0)


@pytest.mark.parametrize("fast", [True, False])
def test_greedy_with_repetition_penalty_equals_model_generate(model, pad_id, fast):
    """The penalty covers each row's prompt and its own tokens, also after other rows finished."""
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=12, repetition_penalty=1.3)
    plain = HFRollout(model, [pad_id + 10_000], pad_id, fast=fast).generate(PROMPTS, params)
    eos = int(plain.response_ids[0, 3])  # a token row 0 emits early: rows stop at different steps
    out = HFRollout(model, [eos], pad_id, fast=fast).generate(PROMPTS, params)
    assert len(set(out.lengths.tolist())) > 1
    for row, prompt in enumerate(PROMPTS):
        ref = greedy_generate(model, prompt, pad_id, 12, eos, repetition_penalty=1.3)
        assert out.response_ids[row, : int(out.lengths[row])].tolist() == ref[: int(out.lengths[row])]
        assert len(ref) == int(out.lengths[row])
    penalty_free = HFRollout(model, [pad_id + 10_000], pad_id, fast=fast).generate(
        PROMPTS, SamplingParams(n=1, temperature=0.0, max_new_tokens=12)
    )
    assert not torch.equal(penalty_free.response_ids, plain.response_ids), "the penalty must change something"


def test_rollout_respects_top_k(model, pad_id):
    out = HFRollout(model, [pad_id], pad_id).generate(
        PROMPTS[:2], SamplingParams(n=4, temperature=1.0, top_k=2, max_new_tokens=6), seeds=[5, 6]
    )
    for row in range(8):
        prompt = PROMPTS[row // 4]
        response = out.response_ids[row, : int(out.lengths[row])].tolist()
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1]
        top2 = torch.topk(logits, 2).indices
        assert all(tok in top2[i].tolist() for i, tok in enumerate(response))


def agreeing_columns(net, prompts, params: SamplingParams, seeds, a, b, tie: float = 1e-5) -> torch.Tensor:
    """[rows, width] mask of the columns where two rollouts of the same model, seeds and EOS agree (every
    column of a row up to where it parts). Equal logits up to fp32 reassociation give equal samples,
    except where a row's uniform falls on the boundary between two neighbouring tokens of the CDF: the row
    may part there, and only there (checked against the full forward's distribution; on an Intel Xeon
    a Llama row parted at |u - CDF| = 2.4e-7). After the first parting the rows are not comparable."""
    uniforms = _uniforms(len(prompts), params, seeds)
    same = torch.ones(a.response_ids.shape, dtype=torch.bool)
    for row, col in (a.response_ids != b.response_ids).nonzero().tolist():
        if not same[row, col]:
            continue  # past this row's first parting
        x, y = sorted((int(a.response_ids[row, col]), int(b.response_ids[row, col])))
        prefix = prompts[row // params.n] + a.response_ids[row, :col].tolist()
        with torch.no_grad():
            probs = torch.softmax(net(input_ids=torch.tensor([prefix])).logits[0, -1].float(), -1)
        boundary = float(probs[: x + 1].sum())  # the CDF between tokens x and x + 1
        assert y == x + 1 and abs(float(uniforms[row, col]) - boundary) < tie, (row, col, x, y, boundary)
        same[row, col:] = False
    return same


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "llama"])
def test_fast_decode_matches_transformers_decode(model, pad_id, arch):
    net = sharp_model(arch, model.config.vocab_size, pad_id).eval()
    assert build_plan(net, Accelerator("cpu")).decoder == "fast"
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=16)
    seeds = [3, 1, 4, 1]
    # An EOS that some rows emit makes rows leave the decode batch at different steps.
    probe = HFRollout(net, [pad_id + 10_000], pad_id, fast=False).generate(PROMPTS, params, seeds=seeds)
    eos = int(probe.response_ids[0, 5])
    slow = HFRollout(net, [eos], pad_id, fast=False).generate(PROMPTS, params, seeds=seeds)
    fast = HFRollout(net, [eos], pad_id, fast=True).generate(PROMPTS, params, seeds=seeds)
    assert "stop" in slow.finish_reasons and "length" in slow.finish_reasons
    same = agreeing_columns(net, PROMPTS, params, seeds, slow, fast)
    assert same.float().mean() > 0.9, "rows may only part at a sampling tie"
    whole = same.all(-1)
    assert torch.equal(fast.lengths[whole], slow.lengths[whole])
    # measured max 5.3e-6 / 6.7e-6 on an AMD EPYC (AVX-512 / AVX2-emulated), 7.6e-6 / 8.1e-6 on an Intel Xeon
    # (AVX-512 with AMX / AVX2-emulated, MKL included): atol 5e-5 with the relative part leaves ~9x
    torch.testing.assert_close(fast.logprobs[same], slow.logprobs[same], atol=5e-5, rtol=1e-5)


def test_fast_decode_declines_what_it_does_not_reproduce(model):
    sliding = Qwen2Config(**{**model.config.to_dict(), "use_sliding_window": True, "sliding_window": 8})
    gelu = Qwen2Config(**{**model.config.to_dict(), "hidden_act": "gelu"})
    for config in (sliding, gelu):
        net = AutoModelForCausalLM.from_config(config)
        assert build_plan(net, Accelerator("cpu")).decoder == "plain"  # auto falls back
        with pytest.raises(ComputeError, match=r"rollout\.decoder=fast does not support"):
            build_plan(net, Accelerator("cpu"), decoder="fast")  # asked explicitly: refused at start-up


def test_small_model_decodes_on_one_thread_and_restores_the_setting(model, pad_id):
    before = torch.get_num_threads()
    seen = []
    net = sharp_model("qwen2", model.config.vocab_size, pad_id).eval()
    net.lm_head.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))  # fires only on the slow path
    try:
        torch.set_num_threads(2)
        params = SamplingParams(n=2, temperature=1.0, max_new_tokens=4)
        HFRollout(net, [pad_id], pad_id, fast=False).generate(PROMPTS[:1], params, seeds=[1])
        assert torch.get_num_threads() == 2
        assert seen == [2, 1, 1, 1]  # prefill on the configured threads, decode steps on one
    finally:
        torch.set_num_threads(before)
