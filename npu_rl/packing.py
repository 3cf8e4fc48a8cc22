"""Padding-free (packed) logprob and training passes: the `packed` forward of npu_rl.compute.

A micro-batch of [prompt | response] rows is padded to its longest prompt and longest response;
with a long tail of response lengths most of those columns are padding, and every projection,
MLP and the vocabulary-sized head still computes them. Here the real tokens alone are packed
into one sequence: each distinct prompt once (GRPO's shared-prompt saving, as in npu_rl.prefix),
then each row's response tokens, with each token's own position id. Attention is the only place
that sees segments: a prompt token attends causally within its prompt, a response token to its
prompt and causally to its own response, never across rows. The head runs only on the tokens
that predict a response token, and the log-probs are scattered back to the batch's [N, T] grid.

Attention backends (chosen once by npu_rl.compute.attention_backend, `PackedLayout.attend_fn`):
- `segments` (CPU, any device): queries and keys are gathered into a padded [segments, length]
  layout for SDPA with an additive mask and scattered back; exact, tested against the padded path.
- `flash_varlen` (CUDA with the `flash_attn` package): `flash_attn_varlen_func` over cu_seqlens;
  each response's keys are its prompt's followed by its own (bottom-right causal). The indexing is
  tested against a torch version of the kernel's contract; the kernel is untested here.
- `npu_fusion` (Ascend, torch_npu): `npu_fusion_attention` in TND layout with the same cu_seqlens
  and sparse_mode=3 (bottom-right causal). Untested here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from npu_rl import llama
from npu_rl.head import head_logits
from npu_rl.prefix import group_starts

ATTENTION_BACKENDS = ("segments", "flash_varlen", "npu_fusion")


def _offsets(lengths: torch.Tensor) -> torch.Tensor:
    """cu_seqlens: [0, l0, l0 + l1, ...] (int64)."""
    return torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])


def _padded_index(starts: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[segments, longest] indices into the packed tokens and their validity; padding points at
    token 0, is masked as a key and its query's output is dropped."""
    width = int(lengths.max()) if len(lengths) else 0
    cols = torch.arange(width, device=lengths.device)
    valid = cols[None, :] < lengths[:, None]
    index = torch.where(valid, starts[:, None] + cols[None, :], 0)
    return index, valid


@dataclass
class PackedLayout:
    """Where the real tokens of one micro-batch sit in the packed sequence.

    Order: the G distinct prompts' tokens, then each row's response tokens except its last (which
    predicts nothing). `predictors[m]` is the packed position whose output predicts target
    `targets[m]`, the response token at (`rows[m]`, `cols[m]`) of the [N, T] grid.
    """

    tokens: torch.Tensor  # [S]
    positions: torch.Tensor  # [S]
    prompt_lens: torch.Tensor  # [G]
    tail_lens: torch.Tensor  # [N]
    group: torch.Tensor  # [N], index into the G prompts
    targets: torch.Tensor  # [M]
    predictors: torch.Tensor  # [M]
    rows: torch.Tensor  # [M]
    cols: torch.Tensor  # [M]

    @property
    def prompt_tokens(self) -> int:
        return int(self.prompt_lens.sum())

    def attend_fn(self, backend: str, num_heads: int, dtype: torch.dtype) -> llama.Attend:
        """The `attend(q, k, v)` of llama.decoder_stack for this layout (masks built once)."""
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"packed attention {backend!r} is not one of {ATTENTION_BACKENDS}")
        if backend == "flash_varlen":
            return self._flash_varlen()
        if backend == "npu_fusion":
            return self._npu_fusion(num_heads)
        return self._segments(num_heads, dtype)

    def _segments(self, num_heads: int, dtype: torch.dtype) -> llama.Attend:
        split, device = self.prompt_tokens, self.tokens.device
        pidx, pvalid = _padded_index(_offsets(self.prompt_lens)[:-1], self.prompt_lens)
        tidx, tvalid = _padded_index(split + _offsets(self.tail_lens)[:-1], self.tail_lens)
        (g, p), (n, t) = pidx.shape, tidx.shape
        # Segments of one length need no gather: the packed tokens already are the padded layout.
        p_even, t_even = bool(pvalid.all()), bool(tvalid.all())
        causal_p = torch.ones(p, p, dtype=torch.bool, device=device).tril()
        pmask = causal_p & pvalid[:, None, :]  # every prompt is non-empty: no query row is all masked
        causal_t = torch.ones(t, t, dtype=torch.bool, device=device).tril()
        tmask = torch.cat([pvalid[self.group][:, None, :].expand(n, t, p), causal_t & tvalid[:, None, :]], -1)
        biases: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # built at the first layer, reused by the rest

        def padded(z: torch.Tensor, even: bool, lo: int, shape: tuple[int, int], index: torch.Tensor) -> torch.Tensor:
            part = z[lo : lo + shape[0] * shape[1]].view(*shape, *z.shape[1:]) if even else z[index]
            return part.transpose(1, 2)  # [segments, heads, length, d]

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            groups = q.shape[1] // k.shape[1]
            if groups not in biases:
                biases[groups] = (llama.group_mask(pmask, groups, dtype), llama.group_mask(tmask, groups, dtype))
            pbias, tbias = biases[groups]
            qp, kp, vp = (padded(z, p_even, 0, (g, p), pidx) for z in (q, k, v))
            out_p = llama.grouped_attention(qp, kp, vp, pbias).transpose(1, 2)  # [G, P, heads, d]
            outs = [out_p.reshape(g * p, -1) if p_even else out_p[pvalid].flatten(1)]
            if t:
                qt, kt, vt = (padded(z, t_even, split, (n, t), tidx) for z in (q, k, v))
                keys, values = torch.cat([kp[self.group], kt], 2), torch.cat([vp[self.group], vt], 2)
                out_t = llama.grouped_attention(qt, keys, values, tbias).transpose(1, 2)
                outs.append(out_t.reshape(n * t, -1) if t_even else out_t[tvalid].flatten(1))
            return torch.cat(outs)  # prompts then tails, each in order: the packed order

        return attend

    def _varlen_index(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """cu_seqlens of prompts, of tails, of each tail's keys (its prompt then itself), and the
        packed index of those keys."""
        split = self.prompt_tokens
        cu_p, cu_t = _offsets(self.prompt_lens), _offsets(self.tail_lens)
        key_lens = self.prompt_lens[self.group] + self.tail_lens
        cu_k = _offsets(key_lens)
        position = torch.arange(int(cu_k[-1]), device=key_lens.device)
        row = torch.searchsorted(cu_k[1:], position, right=True)  # which row's keys each position holds
        offset = position - cu_k[:-1][row]
        plen = self.prompt_lens[self.group][row]
        index = torch.where(offset < plen, cu_p[:-1][self.group][row] + offset, split + cu_t[:-1][row] + offset - plen)
        return cu_p, cu_t, cu_k, index

    def _flash_varlen(self) -> llama.Attend:
        from flash_attn import flash_attn_varlen_func

        split = self.prompt_tokens
        cu_p, cu_t, cu_k, index = self._varlen_index()
        cu_p, cu_t, cu_k = cu_p.int(), cu_t.int(), cu_k.int()
        max_p, max_t, max_k = (int((c[1:] - c[:-1]).max()) for c in (cu_p, cu_t, cu_k))  # >= 1 segment each

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            out_p = flash_attn_varlen_func(q[:split], k[:split], v[:split], cu_p, cu_p, max_p, max_p, causal=True)
            out_t = flash_attn_varlen_func(q[split:], k[index], v[index], cu_t, cu_k, max_t, max_k, causal=True)
            return torch.cat([out_p, out_t]).flatten(1)

        return attend

    def _npu_fusion(self, num_heads: int) -> llama.Attend:  # pragma: no cover - needs Ascend and torch_npu
        import torch_npu

        split = self.prompt_tokens
        cu_p, cu_t, cu_k, index = self._varlen_index()
        causal = torch.ones(2048, 2048, dtype=torch.bool, device=self.tokens.device).triu(1)

        def fusion(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_kv: torch.Tensor):
            return torch_npu.npu_fusion_attention(
                q, k, v, num_heads, "TND", atten_mask=causal, scale=1.0 / math.sqrt(q.shape[-1]),
                sparse_mode=3, actual_seq_qlen=cu_q[1:].tolist(), actual_seq_kvlen=cu_kv[1:].tolist(),
            )[0]  # fmt: skip

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            out_p = fusion(q[:split], k[:split], v[:split], cu_p, cu_p)
            out_t = fusion(q[split:], k[index], v[index], cu_t, cu_k)
            return torch.cat([out_p, out_t]).flatten(1)

        return attend


def build_layout(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
    response_mask: torch.Tensor, group: torch.Tensor,
) -> PackedLayout | None:  # fmt: skip
    """The packed layout of rows laid out as in `actor.PolicyBatch` (left-padded prompt, then a
    left-aligned response of width T); None when some row has no prompt token (nothing to predict
    its first response token from: the padded path handles that)."""
    width = response_mask.shape[1]
    prompt_width = input_ids.shape[1] - width
    starts, inverse = group_starts(group)
    pmask = attention_mask[starts, :prompt_width].bool()
    prompt_lens = pmask.sum(1)
    if prompt_width <= 0 or bool((prompt_lens == 0).any()):
        return None
    resp_ids, resp_pos = input_ids[:, prompt_width:], position_ids[:, prompt_width:]
    # Every attended response token is packed (multi-turn tool answers too: later tokens attend to
    # them); `response_mask` (0 at tool answers) only weighs the loss, which the caller applies.
    rmask = attention_mask[:, prompt_width:].bool()
    lengths = rmask.sum(1)
    tmask = torch.arange(width, device=rmask.device)[None, :] < (lengths - 1).clamp(min=0)[:, None]
    tail_lens = tmask.sum(1)
    rows, cols = rmask.nonzero(as_tuple=True)
    split = int(prompt_lens.sum())
    prompt_last = _offsets(prompt_lens)[1:] - 1
    tail_start = split + _offsets(tail_lens)[:-1]
    predictors = torch.where(cols == 0, prompt_last[inverse][rows], tail_start[rows] + cols - 1)
    return PackedLayout(
        tokens=torch.cat([input_ids[starts, :prompt_width][pmask], resp_ids[tmask]]),
        positions=torch.cat([position_ids[starts, :prompt_width][pmask], resp_pos[tmask]]),
        prompt_lens=prompt_lens,
        tail_lens=tail_lens,
        group=inverse,
        targets=resp_ids[rows, cols],
        predictors=predictors,
        rows=rows,
        cols=cols,
    )


def packed_logits(
    model: nn.Module,
    layout: PackedLayout,
    backend: str,
    linear: Callable[..., torch.Tensor],
    checkpoint: bool = False,
    head: Callable[[torch.Tensor], torch.Tensor] | None = None,
    offload: bool = False,
) -> torch.Tensor:
    """Logits [M, V] predicting each response token of the layout (only those tokens reach the head);
    run as the model's forward (llama.through), so FSDP2-sharded models work too. `checkpoint`:
    gradient checkpointing of the decoder layers, `offload`: their inputs held in host memory
    (llama.decoder_stack). `head` maps those tokens'
    final hidden states to the output instead of the LM head (the critic's value head: the value of
    the state each response token was chosen in)."""

    def forward(tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        h, cos, sin = llama.embed(model, tokens, positions)
        attend = layout.attend_fn(backend, model.config.num_attention_heads, h.dtype)
        h = llama.decoder_stack(model, h, cos, sin, attend, linear, checkpoint, offload)[layout.predictors]
        return head_logits(model, h, linear) if head is None else head(h)

    return llama.through(model, forward, layout.tokens, layout.positions)


def scatter_rows(values: torch.Tensor, layout: PackedLayout, shape: tuple[int, int]) -> torch.Tensor:
    """Per-token values [M] back to the [N, T] grid (0 at padding), differentiably."""
    return values.new_zeros(shape).index_put((layout.rows, layout.cols), values)
