"""The padding-free packed pass (npu_rl.packing, `actor.forward=packed`) gives the padded path's
numbers: log-probs, entropies and gradients against one plain transformers forward over padded
[prompt | response] rows, on Qwen2, Qwen3 and Llama configs, with long-tail response lengths,
micro-batches that cut prompt groups, and rows whose response is one token long.
"""

from __future__ import annotations

import copy
import dataclasses
import functools

import pytest
import torch
from _arch_models import rollout_batch, sharp_model

from npu_rl import actor, core_algos, llama, packing
from npu_rl.compute import REFERENCE_PLAN, ComputeError, build_plan
from npu_rl.device import Accelerator
from npu_rl.token_stats import token_stats

CPU = Accelerator("cpu")
PROMPTS = [[5, 17, 42, 99, 7, 301], [12, 250], [64, 65, 66, 67]]
N = 3
LENGTHS = [11, 1, 5, 11, 2, 1, 3, 9, 2]  # a long tail: most rows far shorter than the longest


@pytest.fixture(scope="module", params=["qwen2", "qwen3", "llama"])
def model(request, tiny_tokenizer):
    return sharp_model(request.param, 512, tiny_tokenizer.pad_token_id)


def make_batch(pad_id: int, lengths: list[int], width: int = 12) -> actor.PolicyBatch:
    gen = torch.Generator().manual_seed(1)
    responses = torch.randint(3, 400, (len(PROMPTS) * N, width), generator=gen)
    lengths_t = torch.tensor(lengths)
    responses[torch.arange(width)[None, :] >= lengths_t[:, None]] = pad_id
    return actor.build_policy_batch(rollout_batch(PROMPTS, responses, lengths_t, N), pad_id)


def run(model, batch, plan):
    model.zero_grad(set_to_none=True)
    logprobs, entropy, sum_pi_squared = actor.forward_logprobs(
        model, batch, 0.7, plan, with_entropy=True, entropy_grad=True, with_sum_pi_squared=True
    )
    mask = batch.response_mask
    ((logprobs * mask).sum() + 0.1 * (entropy * mask).sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}  # frozen: none
    return logprobs.detach(), entropy.detach(), grads, sum_pi_squared


CASES = {  # (lengths, rows): uneven prompts and responses; segments of one length take the no-gather path
    "all": (LENGTHS, slice(0, 9)),
    "cut-groups": (LENGTHS, slice(1, 8)),
    "one-row": (LENGTHS, slice(4, 5)),
    "even-responses": ([12] * 9, slice(0, 9)),
    "one-prompt-even": ([12] * 9, slice(0, 3)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_packed_pass_equals_padded_pass(model, tiny_tokenizer, case):
    lengths, rows = CASES[case]
    batch = make_batch(tiny_tokenizer.pad_token_id, lengths).slice(rows.start, rows.stop)
    plan = build_plan(model, CPU, forward="packed")
    assert plan.forward == "packed" and plan.attention == "segments"
    mask = batch.response_mask.bool()
    padded = run(model, batch, REFERENCE_PLAN)
    packed = run(model, batch, plan)
    # Tolerances from measured errors (fp32 reassociation; the fused padded path shows the same):
    # worst over these cases on AVX-512 and with AVX2 forced (ATEN_CPU_CAPABILITY=avx2
    # MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2), AMD EPYC: log-probs and entropies 3.8e-6,
    # gradients 1.06e-5 x the tensor's largest entry (qwen2, entropy in the loss, temperature 0.7).
    # Bounds: about 4x those.
    torch.testing.assert_close(packed[0][mask], padded[0][mask], atol=1.5e-5, rtol=0)
    torch.testing.assert_close(packed[1][mask], padded[1][mask], atol=1.5e-5, rtol=0)
    # sum pi^2: measured max 1.4e-6 on both kernel sets (bench/tolerances.py, 2026-11-29): >= 10x
    torch.testing.assert_close(packed[3][mask], padded[3][mask], atol=1.5e-5, rtol=0)
    assert (packed[0][~mask] == 0).all() and (packed[1][~mask] == 0).all() and (packed[3][~mask] == 0).all()
    for name, grad in padded[2].items():
        scale = float(grad.abs().max())
        torch.testing.assert_close(packed[2][name], grad, atol=4e-5 * scale, rtol=0, msg=name)


def saved_bytes(model, batch, plan, monkeypatch) -> int:
    """Bytes autograd keeps for backward over one training forward (`run`), outside checkpointed
    regions (their tensors go to torch's own checkpoint hooks and are recomputed). Inside a layer,
    `llama.saved_as_pieces`' hooks come first: what they keep counts, the parts of a concatenated
    weight (the parameters themselves) do not."""
    sizes = []

    def keep(t: torch.Tensor) -> torch.Tensor:
        sizes.append(t.numel() * t.element_size())
        return t

    layer_hooks = llama.saved_as_pieces

    def counted(pieces: llama.Pieces) -> torch.autograd.graph.saved_tensors_hooks:
        hooks = layer_hooks(pieces)
        pack = lambda t: keep(p) if isinstance(p := hooks.pack_hook(t), torch.Tensor) else p  # noqa: E731
        return torch.autograd.graph.saved_tensors_hooks(pack, hooks.unpack_hook)

    with monkeypatch.context() as patch:
        patch.setattr(llama, "saved_as_pieces", counted)
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            run(model, batch, plan)
    return sum(sizes)


def layer_bytes(model, one_layer, batch, plan, monkeypatch) -> int:
    """What one more decoder layer keeps for backward (`saved_bytes` of the model less its one-layer copy's)."""
    return saved_bytes(model, batch, plan, monkeypatch) - saved_bytes(one_layer, batch, plan, monkeypatch)


def kept_for_backward(fn, *inputs, grad):
    """fn's output, its inputs' gradients for `grad` (cut to the output's width) and the bytes autograd
    kept for backward in between, each storage once."""
    sizes = {}

    def keep(t):
        sizes[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    leaves = [t.clone().requires_grad_() for t in inputs]
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        out = fn(*leaves)
    out.backward(grad[..., : out.shape[-1]] if out.dim() > 1 else grad)
    return out, [t.grad for t in leaves], sum(sizes.values())


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_bf16_logits_are_kept_for_the_head_not_their_fp32_copy(temperature):
    """token_stats' log-probs from bf16 logits keep the bf16 logits for backward and recompute the fp32
    copy (half the head's memory); values and gradients are the bits of the fp32-copy formula."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(48, 500, generator=gen).to(torch.bfloat16)
    targets, grad = torch.randint(0, 500, (48,), generator=gen), torch.randn(48, generator=gen)
    kept = functools.partial(kept_for_backward, grad=grad)

    def before(x):
        scaled = x.float() if temperature == 1.0 else x.float() / temperature
        return core_algos.logprobs_from_logits(scaled, targets)

    ref, ref_grads, ref_kept = kept(before, logits)
    for extras in ((False, False, False), (True, False, True)):  # the metrics' entropy and sum pi^2 beside

        def logprobs(x, extras=extras):
            return token_stats(x, targets, temperature, *extras).logprobs

        ours, ours_grads, ours_kept = kept(logprobs, logits)
        assert torch.equal(ours, ref) and torch.equal(ours_grads[0], ref_grads[0])
        assert ref_kept - ours_kept == logits.numel() * (4 - 2) + len(logits) * 4  # fp32 copy and logsumexp
    entropy_loss = kept(lambda x: token_stats(x, targets, temperature, True, True, False).logprobs, logits)
    assert torch.equal(entropy_loss[1][0], ref_grads[0])  # the entropy in the loss: the fp32 path as before


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swiglu_and_rms_norm_keep_less_for_the_same_bits(dtype):
    """The fused layers' SwiGLU keeps gate and up (not silu(gate) too) and the bf16 RMSNorm one fp32 copy
    of its input (it kept two before, transformers' Qwen2RMSNorm keeps one), or with `recompute` only its
    input: values and gradients are the bits of autograd's operators / Qwen2RMSNorm's, and what they
    keep is smaller by exactly those tensors."""
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

    gen = torch.Generator().manual_seed(0)
    gate, up, grad = (torch.randn(64, 96, generator=gen).to(dtype) for _ in range(3))
    kept = functools.partial(kept_for_backward, grad=grad)

    ours, ours_grads, ours_kept = kept(llama.SwiGLU.apply, gate, up)
    ref, ref_grads, ref_kept = kept(lambda g, u: torch.nn.functional.silu(g) * u, gate, up)
    assert torch.equal(ours, ref) and all(torch.equal(a, b) for a, b in zip(ours_grads, ref_grads, strict=True))
    assert ref_kept - ours_kept == gate.numel() * gate.element_size()  # silu(gate)

    norm = Qwen2RMSNorm(96, eps=1e-6).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(96, generator=gen) + 0.5)
    ref, ref_grads, ref_kept = kept(norm, gate)
    for recompute in (False, True):
        ours, ours_grads, ours_kept = kept(functools.partial(llama.rms_norm, weight=norm.weight, eps=1e-6,
                                                             recompute=recompute), gate)  # fmt: skip
        assert torch.equal(ours, ref) and torch.equal(ours_grads[0], ref_grads[0])
        if dtype == torch.float32 or not recompute:  # as Qwen2RMSNorm (in fp32 either way one fused operator)
            assert ours_kept == ref_kept
        else:  # the input alone, not its fp32 copy, the statistics and the normalised values
            assert ref_kept - ours_kept == gate.numel() * (4 + 2 - 2) + gate.shape[0] * 4


def test_concatenated_weights_are_kept_as_their_parts(model, tiny_tokenizer, monkeypatch):
    """Without checkpointing the q/k/v and gate/up matmuls save their concatenated weight for backward,
    a copy of most of the layer's weights per layer (under FSDP2 an unsharded one). `saved_as_pieces`
    keeps the parts (the parameters) and joins them again in backward: the same gradients, bit for bit,
    and exactly those copies less kept."""
    batch = make_batch(tiny_tokenizer.pad_token_id, LENGTHS)
    plan = build_plan(model, CPU, forward="packed")
    expected, kept = run(model, batch, plan), saved_bytes(model, batch, plan, monkeypatch)
    same = lambda pieces: torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t)  # noqa: E731
    monkeypatch.setattr(llama, "saved_as_pieces", same)  # what the layers kept before
    got, copied = run(model, batch, plan), saved_bytes(model, batch, plan, monkeypatch)
    for a, b in zip(expected[:2], got[:2], strict=True):
        assert torch.equal(a, b)
    for name, grad in expected[2].items():
        assert torch.equal(got[2][name], grad), name
    weights = [llama.fused_weights(layer) for layer in model.model.layers]
    copies = sum(w[key].numel() * w[key].element_size() for w in weights for key in ("qkv_w", "gate_up_w"))
    assert copied - kept == copies


@pytest.mark.parametrize("forward", ["packed", "fused"])
def test_gradient_checkpointing_recomputes_each_layer_with_the_same_numbers(
    model, tiny_tokenizer, forward, monkeypatch
):
    """model.gradient_checkpointing on the fused layers (`ComputePlan.checkpoint`): the same log-probs,
    entropies and gradients as without it, while a decoder layer keeps only one [tokens, hidden]
    tensor for backward instead of all its activations."""
    batch = make_batch(tiny_tokenizer.pad_token_id, LENGTHS)
    plain = build_plan(model, CPU, forward=forward)
    checkpointed = build_plan(model, CPU, forward=forward, gradient_checkpointing=True)
    assert checkpointed.checkpoint and not plain.checkpoint and "checkpointed" in checkpointed.describe()
    expected, got = run(model, batch, plain), run(model, batch, checkpointed)
    # measured bit-identical on both kernel sets (the same operations, re-run in backward)
    for a, b in zip(expected[:2], got[:2], strict=True):
        assert torch.equal(a, b)
    assert expected[2].keys() == got[2].keys()
    for name, grad in expected[2].items():
        assert torch.equal(got[2][name], grad), name

    one_layer = copy.deepcopy(model)
    one_layer.model.layers = one_layer.model.layers[:1]
    per_layer = {p: layer_bytes(model, one_layer, batch, p, monkeypatch) for p in (plain, checkpointed)}
    layout = packing.build_layout(
        batch.input_ids, batch.attention_mask, batch.position_ids, batch.response_mask, batch.group
    )
    tokens = len(layout.tokens) if forward == "packed" else batch.input_ids.numel()  # fused: padded rows
    assert per_layer[checkpointed] <= tokens * model.config.hidden_size * 4  # the layer's input, fp32
    assert per_layer[plain] > 10 * per_layer[checkpointed]  # measured 35x (packed, qwen2)


@pytest.mark.parametrize("forward", ["packed", "fused"])
def test_activation_offload_takes_what_checkpointing_keeps_off_the_device_with_the_same_numbers(
    model, tiny_tokenizer, forward, monkeypatch
):
    """model.activation_offload: the one tensor per layer that checkpointing keeps (the layer's input) goes
    through the offload hooks (torch's save_on_cpu: a pinned host copy on an accelerator, the tensor itself
    on the CPU), so no decoder layer keeps anything for backward outside them; the numbers are unchanged."""
    batch = make_batch(tiny_tokenizer.pad_token_id, LENGTHS)
    checkpointed = build_plan(model, CPU, forward=forward, gradient_checkpointing=True)
    offloaded = build_plan(model, CPU, forward=forward, gradient_checkpointing=True, activation_offload=True)
    assert offloaded.offload and "checkpointed offloaded" in offloaded.describe()
    expected, got = run(model, batch, checkpointed), run(model, batch, offloaded)
    for a, b in zip(expected[:2], got[:2], strict=True):  # measured bit-identical (the same operations)
        assert torch.equal(a, b)
    for name, grad in expected[2].items():
        assert torch.equal(got[2][name], grad), name
    one_layer = copy.deepcopy(model)
    one_layer.model.layers = one_layer.model.layers[:1]
    per_layer = {p: layer_bytes(model, one_layer, batch, p, monkeypatch) for p in (checkpointed, offloaded)}
    assert per_layer[checkpointed] > 0 and per_layer[offloaded] == 0


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
def test_chunked_head_gives_the_whole_heads_numbers_without_keeping_the_logits(
    model, tiny_tokenizer, checkpointing, monkeypatch
):
    """actor.head_chunk_tokens (verl's use_fused_kernels): the head's log-probs, entropies and sums of
    squared probabilities 7 tokens at a time, each chunk recomputed in backward, equal the whole head's,
    and autograd keeps no [tokens, vocabulary] tensor for backward."""
    batch = make_batch(tiny_tokenizer.pad_token_id, LENGTHS)
    whole = build_plan(model, CPU, forward="packed", gradient_checkpointing=checkpointing)
    chunked = build_plan(model, CPU, forward="packed", gradient_checkpointing=checkpointing, head_chunk=7)
    assert chunked.head_chunk == 7 and "head_chunk=7" in chunked.describe()
    assert build_plan(model, CPU, forward="fused", head_chunk=7).head_chunk == 0  # packed passes only
    mask = batch.response_mask.bool()
    expected, got = run(model, batch, whole), run(model, batch, chunked)
    # Measured (2026-11-29, Intel Xeon): identical with the default kernels; with AVX2 kernels forced the
    # chunk-sized head matmuls sum differently: values up to 3.8e-6 apart, gradients 9.3e-7 x the largest
    # entry. Bounds: about 4x those (the values' is the packed pass's own, above).
    for a, b in ((expected[0], got[0]), (expected[1], got[1]), (expected[3], got[3])):
        torch.testing.assert_close(b[mask], a[mask], atol=1.5e-5, rtol=0)
        assert (b[~mask] == 0).all()
    assert expected[2].keys() == got[2].keys()
    for name, grad in expected[2].items():
        torch.testing.assert_close(got[2][name], grad, atol=4e-6 * float(grad.abs().max()), rtol=0, msg=name)
    no_grad = actor.compute_logprobs(model, batch, 0.7, 4, chunked).logprobs
    torch.testing.assert_close(no_grad[mask], expected[0][mask], atol=1.5e-5, rtol=0)  # other micro-batches

    targets = sum(LENGTHS)
    logits_bytes = targets * model.config.vocab_size * 4
    kept = saved_bytes(model, batch, whole, monkeypatch) - saved_bytes(model, batch, chunked, monkeypatch)
    assert kept >= logits_bytes  # at least the fp32 logits no longer wait for backward (measured: 7.4x that)


def test_packed_compute_logprobs_in_micro_batches(model, tiny_tokenizer):
    batch = make_batch(tiny_tokenizer.pad_token_id, LENGTHS)
    mask = batch.response_mask.bool()
    plan = build_plan(model, CPU, forward="packed")
    whole = actor.compute_logprobs(model, batch, 1.0, 16, REFERENCE_PLAN).logprobs
    split = actor.compute_logprobs(model, batch, 1.0, 4, plan).logprobs
    torch.testing.assert_close(split[mask], whole[mask], atol=1.5e-5, rtol=0)  # bound as above


def test_layout_holds_only_real_tokens_and_each_prompt_once(tiny_tokenizer):
    batch = make_batch(tiny_tokenizer.pad_token_id, LENGTHS)
    layout = packing.build_layout(
        batch.input_ids, batch.attention_mask, batch.position_ids, batch.response_mask, batch.group
    )
    prompt_tokens = sum(len(p) for p in PROMPTS)
    assert layout.prompt_tokens == prompt_tokens
    assert len(layout.tokens) == prompt_tokens + sum(n - 1 for n in LENGTHS)  # a response's last token predicts nothing
    assert len(layout.targets) == sum(LENGTHS)
    # Positions continue each row's prompt: row 0's response starts at its prompt's length.
    assert layout.positions[:6].tolist() == list(range(6))
    assert layout.positions[prompt_tokens : prompt_tokens + 10].tolist() == list(range(6, 16))
    # Every target is predicted by the token just before it in its own row.
    predicted = layout.tokens[layout.predictors[1:11]]
    assert predicted.tolist() == batch.input_ids[0, -12:-2].tolist()


def test_auto_chooses_packed_and_mistral_cannot(tiny_tokenizer, model):
    assert build_plan(model, CPU).forward == "packed"
    mistral = sharp_model("mistral", 512, tiny_tokenizer.pad_token_id)
    assert build_plan(mistral, CPU).forward == "shared_prefix"
    with pytest.raises(ComputeError, match="packed"):
        build_plan(mistral, CPU, forward="packed")


def _reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal=True):
    """flash_attn_varlen_func's contract in plain torch: per segment, bottom-right causal, GQA."""
    out = torch.zeros_like(q)
    for i in range(len(cu_q) - 1):
        (qs, qe), (ks, ke) = (int(cu_q[i]), int(cu_q[i + 1])), (int(cu_k[i]), int(cu_k[i + 1]))
        if qe == qs:
            continue
        groups = q.shape[1] // k.shape[1]
        qi = q[qs:qe].transpose(0, 1)
        ki, vi = (z[ks:ke].transpose(0, 1).repeat_interleave(groups, 0) for z in (k, v))
        allowed = torch.ones(qe - qs, ke - ks, dtype=torch.bool).tril(diagonal=(ke - ks) - (qe - qs))
        out[qs:qe] = torch.nn.functional.scaled_dot_product_attention(qi, ki, vi, attn_mask=allowed).transpose(0, 1)
    return out


def test_varlen_backend_indexing_matches_the_segments_backend(model, tiny_tokenizer, monkeypatch):
    """The CUDA varlen path's cu_seqlens and key gathering (not the kernel: none here) give the
    segments backend's numbers when the kernel is replaced by its contract written in torch."""
    import sys
    import types

    monkeypatch.setitem(sys.modules, "flash_attn", types.SimpleNamespace(flash_attn_varlen_func=_reference_varlen))
    batch = make_batch(tiny_tokenizer.pad_token_id, LENGTHS).slice(1, 8)
    segments = build_plan(model, CPU, forward="packed")
    varlen = dataclasses.replace(segments, attention="flash_varlen")
    mask = batch.response_mask.bool()
    expected = run(model, batch, segments)
    got = run(model, batch, varlen)
    torch.testing.assert_close(got[0][mask], expected[0][mask], atol=1.5e-5, rtol=0)  # bounds as above
    for name, grad in expected[2].items():
        torch.testing.assert_close(got[2][name], grad, atol=4e-5 * float(grad.abs().max()), rtol=0, msg=name)
