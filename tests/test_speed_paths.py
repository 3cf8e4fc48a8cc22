"""Speed paths of the policy passes give the numbers of the straightforward path.

The shared-prompt forward (npu_rl.prefix, the `shared_prefix` and `fused` plans of npu_rl.compute)
and the skipping of all-padding response columns are compared with one plain forward over
[prompt | response] rows (the reference plan): logprobs, entropies and gradients.
"""

from __future__ import annotations

import copy

import pytest
import torch
from _arch_models import rollout_batch, sharp_model

from npu_rl import actor, llama, prefix
from npu_rl.compute import REFERENCE_PLAN, ComputeError, build_plan
from npu_rl.device import Accelerator
from npu_rl.kernels import onednn as cpu_linear

CPU = Accelerator("cpu")

PROMPTS = [[5, 17, 42, 99, 7, 301], [12, 250], [64, 65, 66, 67]]
N = 3


@pytest.fixture(scope="module", params=["qwen2", "qwen3", "llama", "mistral"])
def model(request, tiny_tokenizer):
    """Fused npu_rl.llama path for the first three, the transformers cache path for Mistral."""
    net = sharp_model(request.param, 512, tiny_tokenizer.pad_token_id)
    assert llama.supports(net) == (request.param != "mistral")
    return net


def make_batch(pad_id: int, lengths: list[int], width: int = 7) -> actor.PolicyBatch:
    gen = torch.Generator().manual_seed(0)
    responses = torch.randint(3, 400, (len(PROMPTS) * N, width), generator=gen)
    lengths_t = torch.tensor(lengths)
    responses[torch.arange(width)[None, :] >= lengths_t[:, None]] = pad_id
    return actor.build_policy_batch(rollout_batch(PROMPTS, responses, lengths_t, N), pad_id)


def plan_of(model, share: bool):
    """The shared-prompt plans (fused for Llama-family, shared_prefix otherwise) or the reference plan;
    the packed plan (`auto` for Llama-family) has its own tests in test_packing.py."""
    return build_plan(model, CPU, forward="fused" if llama.supports(model) else "auto") if share else REFERENCE_PLAN


def logprobs_and_grads(model, batch, share: bool):
    model.zero_grad(set_to_none=True)
    logprobs, entropy, _ = actor.forward_logprobs(model, batch, 0.8, plan_of(model, share), with_entropy=True)
    mask = batch.response_mask
    ((logprobs * mask).sum() + 0.1 * (entropy * mask).sum()).backward()
    return logprobs.detach(), entropy, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("rows", [slice(0, 9), slice(1, 7), slice(4, 5)], ids=["all", "cut-groups", "one-row"])
def test_shared_prompt_forward_equals_plain_forward(model, tiny_tokenizer, rows):
    lengths = [7, 2, 5, 7, 6, 1, 3, 4, 2]
    batch = make_batch(tiny_tokenizer.pad_token_id, lengths).slice(rows.start, rows.stop)
    mask = batch.response_mask.bool()
    plain = logprobs_and_grads(model, batch, share=False)
    shared = logprobs_and_grads(model, batch, share=True)
    # Tolerances from bench/tolerances.py (2 threads): logprobs max |err| 3.3e-6 on AVX-512, 3.8e-6 on
    # AVX2-emulated; entropies 2.9e-6 / 5.7e-6. atol = rtol = 1e-5 leaves >= 6x.
    torch.testing.assert_close(shared[0][mask], plain[0][mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared[1][mask], plain[1][mask], atol=1e-5, rtol=1e-5)
    # Gradients, fp32 reassociation, relative to the tensor's largest entry: measured max 3.9e-6 x scale on
    # AVX-512 and 4.0e-6 x scale on AVX2-emulated (3.9e-6 on a real AVX2 CI machine); atol 2e-5 x scale is 5x.
    for name, grad in plain[2].items():
        scale = float(grad.abs().max())
        torch.testing.assert_close(shared[2][name], grad, atol=2e-5 * scale, rtol=1e-4, msg=name)


@pytest.mark.parametrize("lengths", [[3, 2, 3, 1, 3, 2, 2, 3, 1], [1] * 9], ids=["up-to-3", "all-1"])
def test_all_padding_columns_are_skipped_and_zero(model, tiny_tokenizer, lengths):
    batch = make_batch(tiny_tokenizer.pad_token_id, lengths, width=7)  # columns past the longest: all padding
    used = max(lengths)
    with torch.no_grad():
        out = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
        ).logits
    log_pi = torch.log_softmax(out[:, -8:-1].float() / 0.8, -1)
    expected = log_pi.gather(-1, batch.input_ids[:, -7:, None]).squeeze(-1)
    expected_sum_pi_squared = log_pi.exp().square().sum(-1)
    for share in (False, True):
        logprobs, _, sum_pi_squared = actor.forward_logprobs(
            model, batch, 0.8, plan_of(model, share), with_sum_pi_squared=True
        )
        assert logprobs.shape == sum_pi_squared.shape == (9, 7)
        assert (logprobs[:, used:] == 0).all() and (sum_pi_squared[:, used:] == 0).all()
        mask = batch.response_mask.bool()  # measured max 5.3e-6 (AVX-512), 4.8e-6 (AVX2-emulated): >= 12x
        torch.testing.assert_close(logprobs[mask], expected[mask], atol=1e-5, rtol=1e-5)
        # sum pi^2: measured max 6.9e-7 (AVX-512), 7.2e-7 (AVX2-emulated): >= 18x
        torch.testing.assert_close(sum_pi_squared[mask], expected_sum_pi_squared[mask], atol=1e-5, rtol=1e-5)


def test_compute_logprobs_micro_batches_agree(model, tiny_tokenizer):
    batch = make_batch(tiny_tokenizer.pad_token_id, [7, 2, 5, 7, 6, 1, 3, 4, 2])
    mask = batch.response_mask.bool()
    whole = actor.compute_logprobs(model, batch, 1.0, 16, plan_of(model, True)).logprobs
    split = actor.compute_logprobs(model, batch, 1.0, 4, plan_of(model, True)).logprobs  # cuts groups
    # measured max 4.8e-6 (AVX-512), 6.7e-6 (AVX2-emulated): >= 15x with the relative part
    torch.testing.assert_close(split[mask], whole[mask], atol=1e-5, rtol=1e-5)


def test_group_starts_read_the_group_ids_not_the_tokens():
    starts, inverse = prefix.group_starts(torch.tensor([4, 4, 9, 2, 9, 4]))  # any order, any sizes
    assert starts.tolist() == [3, 0, 2]  # first row of groups 2, 4, 9
    assert inverse.tolist() == [1, 1, 2, 0, 2, 1]


def test_gradient_checkpointing_keeps_the_fused_layers_or_takes_the_plain_forward(model, tiny_tokenizer):
    """Llama-family models stay packed, the fused layers recomputing themselves (test_packing.py);
    others take transformers' checkpointed forward, which gives the plain forward's numbers."""
    net = copy.deepcopy(model)
    net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    net.train()
    plan = build_plan(net, CPU, gradient_checkpointing=True)
    fusable = llama.supports(net)
    assert (plan.forward, plan.checkpoint) == (("packed", True) if fusable else ("plain", False))
    assert plan.linears.name == "torch"
    if fusable:
        assert build_plan(net, CPU, forward="fused", gradient_checkpointing=True).checkpoint
        assert not build_plan(net, CPU, forward="plain", gradient_checkpointing=True).checkpoint
        plan = build_plan(net, CPU, forward="plain", gradient_checkpointing=True)
    with pytest.raises(ComputeError, match="gradient checkpointing"):
        build_plan(net, CPU, forward="shared_prefix", gradient_checkpointing=True)
    with pytest.raises(ComputeError, match=r"transformers' forward .* set model\.activation_offload=false"):
        build_plan(net, CPU, forward="plain", gradient_checkpointing=True, activation_offload=True)
    batch = make_batch(tiny_tokenizer.pad_token_id, [7, 2, 5, 7, 6, 1, 3, 4, 2])
    mask = batch.response_mask.bool()
    net.zero_grad(set_to_none=True)
    checkpointed = actor.forward_logprobs(net, batch, 0.8, plan)[0].detach()
    plain = logprobs_and_grads(model, batch, share=False)
    # measured 0 on both kinds (the same plain forward); the tolerance only admits another summation order
    torch.testing.assert_close(checkpointed[mask], plain[0][mask], atol=1e-5, rtol=1e-5)


def test_onednn_linear_matches_torch_linear_forward_and_backward():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 48, requires_grad=True)
    weight = torch.randn(24, 48, requires_grad=True)
    bias = torch.randn(24, requires_grad=True)
    grad = torch.randn(3, 5, 24)
    results = []
    for use_onednn in (False, True):
        for t in (x, weight, bias):
            t.grad = None
        with cpu_linear.linear_mode(use_onednn):
            y = torch.nn.functional.linear(x, weight, bias)
        y.backward(grad)
        results.append([y.detach(), x.grad, weight.grad, bias.grad])
    assert cpu_linear.available()  # this project's CPU torch builds have oneDNN: the test must exercise it
    for ref, got in zip(*results, strict=True):  # measured 0 on both kinds at these sizes; 1e-5 admits reordering
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_linear_mode_routes_only_eligible_calls(monkeypatch):
    x, w = torch.randn(2, 8, requires_grad=True), torch.randn(4, 8)

    def backend(a, b):
        return type(torch.nn.functional.linear(a, b).grad_fn).__name__

    with cpu_linear.linear_mode():
        assert backend(x, w) == "OneDNNLinearBackward"
        assert backend(x.double(), w.double()) != "OneDNNLinearBackward"  # not fp32: torch's own path
    assert backend(x, w) != "OneDNNLinearBackward"  # outside the block
    monkeypatch.setenv("NPU_RL_ONEDNN_LINEAR", "0")
    with cpu_linear.linear_mode():
        assert backend(x, w) != "OneDNNLinearBackward"


def test_onednn_is_chosen_per_weight_shape_by_a_measured_ratio(monkeypatch, model):
    from npu_rl.compute import linears_for, weight_shapes

    shapes = weight_shapes(model)
    if llama.supports(model):  # the fused q/k/v and gate/up weights are measured too
        assert {(64 + 2 * 2 * 16, 64), (2 * 96, 64)} <= shapes  # q + k + v heads x head_dim; gate + up
    monkeypatch.delenv("NPU_RL_ONEDNN_LINEAR", raising=False)
    assert cpu_linear.faster_shapes.__wrapped__(shapes) == frozenset()  # default: sgemm, reproducible on resume
    monkeypatch.setenv("NPU_RL_ONEDNN_LINEAR", "measure")
    chosen = cpu_linear.faster_shapes.__wrapped__(shapes)
    assert chosen <= shapes
    monkeypatch.setenv("NPU_RL_ONEDNN_LINEAR", "1")
    assert cpu_linear.faster_shapes.__wrapped__(shapes) == shapes  # forced: every shape
    x = torch.randn(3, 64, requires_grad=True)
    w_in, w_out = torch.randn(96, 64), torch.randn(97, 64)
    route = cpu_linear.linear_for(frozenset({(96, 64)}))
    assert type(route(x, w_in).grad_fn).__name__ == "OneDNNLinearBackward"
    assert type(route(x, w_out).grad_fn).__name__ != "OneDNNLinearBackward"  # a shape not chosen: torch's
    with cpu_linear.linear_mode(shapes=frozenset({(96, 64)})):
        assert type(torch.nn.functional.linear(x, w_out).grad_fn).__name__ != "OneDNNLinearBackward"
    assert linears_for(CPU, model=model).name.startswith("onednn(")
