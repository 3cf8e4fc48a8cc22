"""`model.fp32_lm_head` (npu_rl.head): the output head's product in fp32 on a bf16 model, on every path
that computes logits (the transformers forward, the fused and packed passes, the fast decoder, vLLM)."""

from __future__ import annotations

import json

import pytest
import torch
from _arch_models import sharp_model
from test_speed_paths import make_batch
from test_trainer import make_cfg, run
from torch.nn import functional as F

from npu_rl import actor, head, llama, packing
from npu_rl.compute import build_plan
from npu_rl.config import ConfigError, load_config
from npu_rl.device import Accelerator
from npu_rl.rollout.base import SamplingParams
from npu_rl.rollout.hf import HFRollout

CPU = Accelerator("cpu")
IDS = torch.tensor([[5, 17, 42, 99, 7, 301, 12, 250], [64, 65, 66, 67, 9, 8, 7, 6]])


def bf16_model(tied: bool = False, fp32_head: bool = True):
    net = sharp_model("qwen2", 512, 0)
    if tied:
        net.config.tie_word_embeddings = True
        net.tie_weights()
    net = net.to(torch.bfloat16).eval()
    if fp32_head:
        head.use_fp32_head(net)
    return net


def exact_logits(net, hidden: torch.Tensor) -> torch.Tensor:
    """The head's product of the bf16 values, in fp64 (the reference both fp32 results approximate)."""
    return F.linear(hidden.double(), net.lm_head.weight.detach().double())


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_transformers_forward_returns_fp32_logits_and_keeps_the_weights(tied):
    plain, fp32 = bf16_model(tied, fp32_head=False), bf16_model(tied)
    assert list(fp32.state_dict()) == list(plain.state_dict())
    assert all(t.dtype == torch.bfloat16 for t in fp32.state_dict().values())
    assert (fp32.lm_head.weight is fp32.model.embed_tokens.weight) == tied
    with torch.no_grad():
        out = fp32(IDS, output_hidden_states=True)
        rounded = plain(IDS).logits
    exact = exact_logits(fp32, out.hidden_states[-1])  # the last hidden state is after the final norm
    assert out.logits.dtype == torch.float32 and rounded.dtype == torch.bfloat16
    scale = float(exact.abs().max())
    fp32_err = float((out.logits.double() - exact).abs().max())
    bf16_err = float((rounded.double() - exact).abs().max())
    # bf16 keeps 8 significant bits: its rounding alone is up to 2^-9 x |logit|; fp32's 2^-24
    assert bf16_err > 2e-4 * scale, "the bf16 head rounds visibly (else this test shows nothing)"
    assert fp32_err < 1e-5 * scale, (fp32_err, scale)


def test_fused_and_packed_passes_compute_the_head_in_fp32(monkeypatch):
    net = bf16_model()
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def spy(model, hidden, linear):
        out = head.head_logits(model, hidden, linear)
        seen.append((hidden.detach(), out.detach()))
        return out

    monkeypatch.setattr(llama, "head_logits", spy)
    monkeypatch.setattr(packing, "head_logits", spy)
    batch = make_batch(0, [7, 2, 5, 7, 6, 1, 3, 4, 2])
    for forward in ("fused", "packed"):
        seen.clear()
        plan = build_plan(net, CPU, forward=forward)
        with torch.no_grad():
            actor.forward_logprobs(net, batch, 1.0, plan)
        assert seen, f"the {forward} pass did not go through npu_rl.head"
        for hidden, logits in seen:
            exact = exact_logits(net, hidden)
            assert logits.dtype == torch.float32
            assert float((logits.double() - exact).abs().max()) < 1e-5 * float(exact.abs().max())


def test_the_chunked_head_casts_an_fp32_heads_weight_once_and_sums_its_gradient_in_fp32():
    """actor.head_chunk_tokens with the fp32 head on a bf16 model: the weight's fp32 copy is made once per
    pass (seen in the profiler: casts of the [vocabulary, hidden] weight), not in every chunk and again in
    its recompute, and the head's gradient is summed over the chunks in fp32 as the whole head sums it.
    Measured with a cast per chunk (2026-11-29, Intel Xeon): 45 casts in one pass, the gradient apart from
    the whole head's by up to 1.1% of its largest entry in 19147 of 32768 entries (bf16 sums of the chunks'
    parts); now 2 casts (there and back) and 4 entries one bf16 step (5.7e-5 of the largest) apart."""
    net = bf16_model().train()
    batch = make_batch(0, [7, 12, 5, 17, 6, 11, 13, 14, 9])

    def head_grad(plan) -> torch.Tensor:
        net.zero_grad(set_to_none=True)
        logprobs = actor.forward_logprobs(net, batch, 1.0, plan)[0]
        (logprobs * batch.response_mask).sum().backward()
        return net.lm_head.weight.grad

    chunked = build_plan(net, CPU, forward="packed", head_chunk=4)
    whole = head_grad(build_plan(net, CPU, forward="packed"))
    with torch.profiler.profile(record_shapes=True) as prof:
        got = head_grad(chunked)
    shape = list(net.lm_head.weight.shape)
    casts = [e for e in prof.events() if e.name == "aten::_to_copy" and e.input_shapes and e.input_shapes[0] == shape]
    assert len(casts) <= 2, len(casts)
    diff = (got.double() - whole.double()).abs()
    assert float(diff.max()) < 1e-3 * float(whole.abs().max()) and int((diff > 0).sum()) < diff.numel() // 100


def test_fast_decoder_samples_from_the_fp32_head():
    """The fast decoder applies the head itself (npu_rl.rollout.fast_decode); it must give what the
    transformers decoder gives through `Fp32Head`. Measured: identical samples and log-probs on both kernel
    sets, where a bf16 head in the fast decoder changes the sampled tokens (log-probs apart by up to 6.8)."""
    prompts = [IDS[0].tolist(), IDS[1, :5].tolist()]
    params = SamplingParams(n=2, max_new_tokens=6)
    outs = {}
    for decoder in ("fast", "plain"):
        net = bf16_model()
        plan = build_plan(net, CPU, forward="plain", decoder=decoder)
        assert plan.decoder == decoder
        outs[decoder] = HFRollout(net, [10_000], 0, plan).generate(prompts, params, seeds=[1, 2])
    assert torch.equal(outs["fast"].response_ids, outs["plain"].response_ids)
    torch.testing.assert_close(outs["fast"].logprobs, outs["plain"].logprobs, atol=1e-5, rtol=0)


def test_configuration_refuses_what_the_fp32_head_cannot_do(tmp_path, tiny_model_dir, synthetic_parquet):
    from _train_proc import train_args

    args = train_args(tmp_path, tiny_model_dir, synthetic_parquet, "model.fp32_lm_head=true", "actor.lora.rank=4")
    with pytest.raises(ConfigError, match="lm_head"):
        load_config(None, [*args, "actor.lora.target_modules=[q_proj,lm_head]"])
    load_config(None, [*args, "actor.lora.target_modules=[q_proj]"])
    net = sharp_model("qwen2")
    net.lm_head = torch.nn.Sequential(net.lm_head)
    with pytest.raises(ConfigError, match=r"plain torch\.nn\.Linear"):
        head.use_fp32_head(net)


def test_grpo_trains_a_bf16_model_with_the_fp32_head(tmp_path, tiny_model_dir, synthetic_parquet):
    cfg = make_cfg(tmp_path, tiny_model_dir, synthetic_parquet, "model.dtype=bfloat16", "model.fp32_lm_head=true")
    trainer = run(cfg)
    assert head.is_fp32_head(trainer.model) and head.is_fp32_head(trainer.ref)
    assert trainer.model.lm_head.weight.dtype == torch.bfloat16
    rows = [json.loads(line) for line in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "actor/pg_loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert all(r["actor/grad_norm"] > 1e-4 for r in train_rows)
    # sampler (fast decoder) vs trainer (packed pass), bf16 bodies, fp32 heads: measured at most 1.6e-4 (AVX-512)
    # and 1.1e-4 (AVX2-emulated), as with bf16 heads on this near-uniform random model; 2e-3 is 12x
    assert all(r["rollout/logprob_diff"] < 2e-3 for r in train_rows), [r["rollout/logprob_diff"] for r in train_rows]


def _fsdp_head_worker(info, model_dir: str) -> None:
    """On each of 2 gloo ranks: the packed pass of a bf16 FSDP2-sharded model (tied embeddings, the head
    read through the root unit's hooks) with the fp32 head gives the one-process model's fp32 log-probs,
    and its backward reaches the sharded head weight."""
    from torch.distributed.tensor import DTensor
    from transformers import AutoModelForCausalLM

    from npu_rl.config import FSDPConfig
    from npu_rl.distributed import shard_model

    def load():
        net = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
        head.use_fp32_head(net)
        return net

    batch = make_batch(0, [7, 2, 5, 7, 6, 1, 3, 4, 2])
    one = load()
    expected = actor.forward_logprobs(one, batch, 1.0, build_plan(one, CPU, forward="packed")).logprobs.detach()
    model = shard_model(load(), FSDPConfig(), CPU, info, trainable=True)
    assert isinstance(model.lm_head.weight, DTensor) and head.is_fp32_head(model)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    logprobs = actor.forward_logprobs(model, batch, 1.0, build_plan(model, CPU, forward="packed")).logprobs
    # the same bf16 arithmetic on every rank (FSDP only gathers the weights): identical on both kernel sets
    torch.testing.assert_close(logprobs, expected, atol=1e-6, rtol=0)
    (logprobs * batch.response_mask).sum().backward()
    grad = model.lm_head.weight.grad
    assert grad is not None and float(grad.full_tensor().float().abs().sum()) > 0


@pytest.mark.slow
def test_fp32_head_under_fsdp2_on_two_ranks(tiny_model_dir):
    from _dist_utils import run_workers

    run_workers(_fsdp_head_worker, 2, str(tiny_model_dir))
