"""npu_rl.distributed: single-process fallbacks and FSDP2 across real gloo processes."""

from __future__ import annotations

import pytest
import torch
from _dist_utils import run_workers
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM

from npu_rl.config import FSDPConfig
from npu_rl.device import Accelerator
from npu_rl.distributed import (
    DistInfo,
    all_reduce,
    barrier,
    clip_grad_norm_,
    init_distributed,
    iter_full_state_dict,
    shard_model,
)

CPU = Accelerator("cpu")


def _batch(model_dir, n: int = 4, length: int = 12) -> torch.Tensor:
    vocab = AutoModelForCausalLM.from_pretrained(model_dir).config.vocab_size
    return torch.randint(3, vocab, (n, length), generator=torch.Generator().manual_seed(1))


def test_single_process_without_torchrun(monkeypatch, tiny_model_dir):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = init_distributed(CPU)
    assert info == DistInfo(0, 1, 0)
    assert info.is_main and not info.is_distributed
    t = torch.tensor([1.5, -2.0])
    assert all_reduce(t, "mean") is t and t.tolist() == [1.5, -2.0]
    barrier()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert shard_model(model, FSDPConfig(), CPU, info, trainable=True) is model
    full = dict(iter_full_state_dict(model))
    assert list(full) == list(model.state_dict())
    assert all(torch.equal(full[k], v) for k, v in model.state_dict().items())


def test_init_without_master_addr_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(RuntimeError, match="MASTER_ADDR"):
        init_distributed(CPU)


def test_all_reduce_rejects_unknown_op():
    with pytest.raises(ValueError, match="avg"):
        all_reduce(torch.zeros(1), "avg")


def _with_grads(model_dir, ids):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model(input_ids=ids, labels=ids).loss.backward()
    return model


@pytest.mark.parametrize("max_norm", [0.05, 1e6])
def test_clip_grad_norm_plain_matches_torch(tiny_model_dir, max_norm):
    ids = _batch(tiny_model_dir)
    ours, theirs = _with_grads(tiny_model_dir, ids), _with_grads(tiny_model_dir, ids)
    norm = clip_grad_norm_(ours, max_norm)
    expected = torch.nn.utils.clip_grad_norm_(theirs.parameters(), max_norm)
    torch.testing.assert_close(norm, expected)
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)


def test_clip_grad_norm_leaves_non_finite_grads_for_the_caller(tiny_model_dir):
    model = _with_grads(tiny_model_dir, _batch(tiny_model_dir))
    first = next(model.parameters())
    first.grad[0, 0] = float("inf")
    before = [p.grad.clone() for p in model.parameters()]
    assert not torch.isfinite(clip_grad_norm_(model, 1.0))
    assert all(torch.equal(a, p.grad) for a, p in zip(before, model.parameters(), strict=True))


def _fsdp_worker(info: DistInfo, model_dir: str) -> None:
    assert info.is_distributed and info.world_size == 2
    rank = info.rank

    # collectives
    for op, expected in {"sum": 3.0, "mean": 1.5, "max": 2.0, "min": 1.0}.items():
        assert all_reduce(torch.tensor([rank + 1.0]), op).item() == expected, op

    ids = _batch(model_dir)
    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ref.train()
    ref_out = ref(input_ids=ids, labels=ids)
    ref_out.loss.backward()

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    model = shard_model(model, FSDPConfig(), CPU, info, trainable=True)
    assert isinstance(model.lm_head.weight, DTensor)
    assert model.lm_head.weight is model.model.embed_tokens.weight, "tied embeddings came apart"

    # each rank takes half of the global batch; equal token counts make the mean of means global
    local = ids[2 * rank : 2 * rank + 2]
    out = model(input_ids=local, labels=local)
    out.loss.backward()
    torch.testing.assert_close(out.logits, ref_out.logits[2 * rank : 2 * rank + 2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(all_reduce(out.loss.detach().clone(), "mean"), ref_out.loss.detach())
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad.full_tensor(), q.grad, rtol=1e-4, atol=1e-6, msg=name)

    norm = clip_grad_norm_(model, 0.05)
    expected = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.05)
    torch.testing.assert_close(norm, expected)
    assert not isinstance(norm, DTensor)
    assert all_reduce(norm.clone(), "max") == all_reduce(norm.clone(), "min")

    for m in (model, ref):
        torch.optim.SGD(m.parameters(), lr=0.5).step()  # linear in the grads, unlike Adam near 0
    full = list(iter_full_state_dict(model))
    assert [k for k, _ in full] == list(ref.state_dict())
    for (name, t), q in zip(full, ref.state_dict().values(), strict=True):
        assert not isinstance(t, DTensor)
        torch.testing.assert_close(t, q, rtol=1e-4, atol=1e-6, msg=name)

    # a frozen copy (the reference policy) shards too and gives the same logits without grads
    frozen = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    frozen = shard_model(frozen, FSDPConfig(param_offload=True), CPU, info, trainable=False)
    assert not any(p.requires_grad for p in frozen.parameters())
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(frozen(input_ids=local).logits, base(input_ids=local).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.dist
def test_fsdp2_two_ranks_match_single_process(tiny_model_dir):
    run_workers(_fsdp_worker, 2, str(tiny_model_dir))
