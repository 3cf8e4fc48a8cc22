"""LoRA through peft (npu_rl.lora, `actor.lora.rank`): adapters train while the base stays frozen,
merged weights reproduce the adapted model, and a LoRA checkpoint merges and evaluates."""

from __future__ import annotations

import pytest
import torch
from _arch_models import sharp_model
from _dist_utils import run_workers
from safetensors.torch import load_file
from test_eval import parity_reward  # noqa: F401 (fixture)
from test_trainer import make_cfg, run
from torch.distributed.device_mesh import init_device_mesh

from npu_rl import actor, distributed, llama, lora
from npu_rl.compute import build_plan
from npu_rl.config import FSDPConfig
from npu_rl.device import Accelerator
from npu_rl.distributed import DistInfo

pytest.importorskip("peft")


def test_merged_weights_reproduce_the_adapted_model():
    model = lora.wrap(sharp_model("qwen2"), rank=4, alpha=8.0, target_modules=["q_proj", "v_proj", "down_proj"])
    ids = torch.randint(3, 500, (2, 9))
    base = sharp_model("qwen2")
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, base(input_ids=ids).logits)  # B starts at zero
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.1)
        adapted = model(input_ids=ids).logits
    assert llama.supports(model) and build_plan(model, Accelerator("cpu")).forward == "packed"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    merged = dict(lora.merged_tensors(model.state_dict().items()))
    assert set(merged) == set(base.state_dict())  # the base model's names, nothing else
    base.load_state_dict(merged)
    with torch.no_grad():
        torch.testing.assert_close(base(input_ids=ids).logits, adapted, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="matched no linear layer"):
        lora.wrap(sharp_model("qwen2"), rank=4, alpha=8.0, target_modules=["no_such_proj"])


def _bf16_base_worker(info: DistInfo) -> None:
    """A card's load (bf16 weights) under FSDP2 mixed precision, the card mocked: the mesh on the CPU."""
    distributed.device_mesh = lambda acc, fsdp_size=-1: init_device_mesh(
        "cpu", (info.world_size,), mesh_dim_names=("fsdp",)
    )
    card = Accelerator("cuda")

    def adapted() -> torch.nn.Module:
        torch.manual_seed(0)
        model = lora.wrap(sharp_model("qwen2").to(torch.bfloat16), 4, 8.0, ["all-linear"])
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.data.normal_(0, 0.1)  # non-zero adapters, identical on every rank
        return model

    model = distributed.shard_model(adapted(), FSDPConfig(), card, info, trainable=True)
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert {d for n, d in dtypes.items() if ".lora_" in n} == {torch.float32}  # the optimizer's masters
    assert {d for n, d in dtypes.items() if ".lora_" not in n} == {torch.bfloat16}  # the frozen base as loaded

    # FSDP computes in bf16 from bf16 copies either way (bf16 -> fp32 -> bf16 is exact), so the forward is
    # the unsharded bf16 model's, bit for bit (measured on AVX-512 and with AVX2 kernels forced)
    base_before = {n: p.full_tensor().clone() for n, p in model.named_parameters() if not p.requires_grad}
    ids = torch.randint(3, 500, (2, 9), generator=torch.Generator().manual_seed(info.rank))
    logits = model(input_ids=ids).logits
    with torch.no_grad():
        reference = adapted()(input_ids=ids).logits
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits, reference, rtol=0, atol=0)

    logits.float().square().mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all(".lora_" in n and g.dtype == torch.float32 for n, g in grads.items())
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    optim.step()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p.full_tensor(), base_before[name]), name


@pytest.mark.slow  # a 2-process FSDP run (~5 s); the one-process LoRA tests stay quick
@pytest.mark.dist
def test_frozen_base_stays_bf16_under_mixed_precision():
    run_workers(_bf16_base_worker, 2)


def test_all_linear_adapts_every_decoder_linear_but_not_the_head():
    model = lora.wrap(sharp_model("qwen2"), rank=4, alpha=8.0, target_modules=["all-linear"])
    adapted = {n.split(".lora_A.")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if ".lora_A." in n}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_packed_pass_reads_the_adapters(tiny_tokenizer):
    """The packed and fast-decoder paths fold the adapters in: same log-probs and adapter gradients as
    peft's own forward through transformers; an adapter on the LM head sends the model that way."""
    from test_packing import LENGTHS, make_batch
    from test_packing import run as run_pass

    from npu_rl.compute import REFERENCE_PLAN

    model = lora.wrap(sharp_model("qwen2", 512, tiny_tokenizer.pad_token_id), 4, 8.0, ["q_proj", "v_proj", "up_proj"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    batch = make_batch(tiny_tokenizer.pad_token_id, LENGTHS)
    mask = batch.response_mask.bool()
    reference = run_pass(model, batch, REFERENCE_PLAN)
    packed = run_pass(model, batch, build_plan(model, Accelerator("cpu"), forward="packed"))
    torch.testing.assert_close(packed[0][mask], reference[0][mask], atol=1.5e-5, rtol=0)  # test_packing's bounds
    for name, grad in reference[2].items():
        if ".lora_" in name:
            torch.testing.assert_close(packed[2][name], grad, atol=4e-5 * float(grad.abs().max()), rtol=0, msg=name)
    base = sharp_model("qwen2", 512, tiny_tokenizer.pad_token_id)
    with lora.adapters_disabled(model):  # the reference policy of a LoRA run
        packed = build_plan(model, Accelerator("cpu"), forward="packed")
        off = actor.compute_logprobs(model, batch, 1.0, 16, packed).logprobs
        assert not any(p.requires_grad for p in model.parameters())
    assert all(p.requires_grad == (".lora_" in n) for n, p in model.named_parameters())  # switched back on
    expected = actor.compute_logprobs(base, batch, 1.0, 16, REFERENCE_PLAN).logprobs
    torch.testing.assert_close(off[mask], expected[mask], atol=1.5e-5, rtol=0)
    adapted = actor.compute_logprobs(model, batch, 1.0, 16, REFERENCE_PLAN).logprobs
    assert not torch.allclose(adapted[mask], off[mask], atol=1e-3)  # the adapters do change the policy
    head = lora.wrap(sharp_model("qwen2", 512, tiny_tokenizer.pad_token_id), 4, 8.0, ["q_proj", "lm_head"])
    assert not llama.supports(head) and build_plan(head, Accelerator("cpu")).forward == "shared_prefix"


@pytest.mark.slow
def test_lora_run_trains_merges_and_evaluates(tmp_path, tiny_model_dir, synthetic_parquet, parity_reward):  # noqa: F811
    from npu_rl.eval import Evaluator
    from npu_rl.merge import merge_checkpoint

    cfg = make_cfg(
        tmp_path, tiny_model_dir, synthetic_parquet, "actor.lora.rank=4", "actor.lora.alpha=8",
        "actor.optim.lr=0.05", "trainer.total_training_steps=2", "trainer.test_freq=-1",
    )  # fmt: skip
    trainer = run(cfg)
    assert trainer.ref is trainer.model  # the KL reference is the base under the adapters, not a second copy
    state = trainer.model.state_dict()
    base = load_file(tiny_model_dir / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj"
    assert torch.equal(state[f"{name}.base_layer.weight"], base[f"{name}.weight"])  # the base is frozen
    assert state[f"{name}.lora_B.default.weight"].abs().max() > 0  # the adapter trained
    merged_dir = tmp_path / "merged"
    merge_checkpoint(tmp_path / "ckpt" / "global_step_2" / "actor", merged_dir)
    merged = load_file(merged_dir / "model.safetensors")
    expected = dict(lora.merged_tensors(state.items()))
    assert set(merged) <= set(expected) and not any(lora.is_lora_name(n) for n in merged)
    torch.testing.assert_close(merged[f"{name}.weight"], expected[f"{name}.weight"])
    assert not torch.equal(merged[f"{name}.weight"], base[f"{name}.weight"])
    with Evaluator(tmp_path / "ckpt", reward=parity_reward) as ev:  # merged on the fly
        result = ev.evaluate(synthetic_parquet["test"], output_dir=tmp_path / "eval", max_new_tokens=8, max_samples=3)
    assert result["num_prompts"] == 3
