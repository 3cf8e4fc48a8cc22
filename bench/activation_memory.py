"""What one packed training forward keeps for backward, measured on Qwen2.5-1.5B's layer shapes.

    python bench/activation_memory.py                 # 1.5B layer shapes, 2 layers, bf16, ~1k tokens
    python bench/activation_memory.py --tokens 2048 --threads 2

Builds Qwen2.5-1.5B's config (hidden 1536, FFN 8960, 12 heads, 2 KV heads, vocabulary 151936) with
2 decoder layers, random init, bf16, and runs npu_rl's packed training forward (GRPO rows: 2 prompts
x 4 responses) with saved-tensor hooks that add up every tensor autograd keeps for backward, once
per storage; parameters are not counted (they stay on the card anyway). From runs with 1 and 2
layers and two response lengths it separates: bytes per token per decoder layer, bytes per layer
that do not grow with tokens, bytes per token outside the layers, and the head's bytes per
predicted token. Four settings: without / with gradient checkpointing, each with the concatenated
q/k/v and gate/up weights kept for backward as before 2026-11-29 ("concat kept") and as their parts
(`llama.saved_as_pieces`, now). bench/README.md "Activation memory" has the figures before and after
`llama.SwiGLU` and the single-cast `llama.rms_norm` too (those are not switched here). The last
column projects the figures to 28 layers (1.5B) at a 4096-token micro-batch.

The attention is the CPU's (`segments`: padded per-segment SDPA); on a card flash / npu_fusion
attention keeps q, k, v, the output and a log-sum-exp per head instead, so the per-token figure
there differs by that part. The weight term and the checkpointed figure do not depend on it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model

from npu_rl import llama, packing
from npu_rl.token_stats import token_stats

QWEN2_5_1_5B = dict(
    hidden_size=1536, intermediate_size=8960, num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
    rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=32768, tie_word_embeddings=True,
)  # fmt: skip
LAYERS_1_5B = 28
PROMPTS, RESPONSES, PROMPT_LEN = 2, 4, 128


def kept_bytes(run: callable, concat_kept: bool) -> int:
    """Bytes autograd keeps over `run()`, each storage once, parameters excluded; inside a layer the
    layer's own hooks (`llama.saved_as_pieces`) decide first, or none with `concat_kept`."""
    storages: dict[int, int] = {}

    def keep(t: torch.Tensor) -> torch.Tensor:
        if not (t.is_leaf and t.requires_grad):
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    original = llama.saved_as_pieces

    def counted(pieces: llama.Pieces) -> torch.autograd.graph.saved_tensors_hooks:
        hooks = torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t) if concat_kept else original(pieces)
        pack = lambda t: keep(p) if isinstance(p := hooks.pack_hook(t), torch.Tensor) else p  # noqa: E731
        return torch.autograd.graph.saved_tensors_hooks(pack, hooks.unpack_hook)

    llama.saved_as_pieces = counted
    try:
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            run()
    finally:
        llama.saved_as_pieces = original
    return sum(storages.values())


def measure(layers: int, response_len: int, checkpoint: bool, concat_kept: bool) -> tuple[int, int, int, int]:
    """(packed tokens, predicted tokens, bytes kept by the decoder stack, bytes kept by the head)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**QWEN2_5_1_5B, num_hidden_layers=layers)).to(torch.bfloat16)
    rows, vocab = PROMPTS * RESPONSES, QWEN2_5_1_5B["vocab_size"]
    ids = torch.randint(0, vocab, (rows, PROMPT_LEN + response_len))
    ids[:, :PROMPT_LEN] = ids[::RESPONSES, :PROMPT_LEN].repeat_interleave(RESPONSES, 0)
    mask, pos = torch.ones_like(ids), torch.arange(PROMPT_LEN + response_len).expand(rows, -1)
    group = torch.arange(PROMPTS).repeat_interleave(RESPONSES)
    layout = packing.build_layout(ids, mask, pos, torch.ones(rows, response_len), group)
    forward = lambda head=None: packing.packed_logits(model, layout, "segments", F.linear, checkpoint, head)  # noqa: E731
    stack = kept_bytes(lambda: forward(lambda h: h), concat_kept)
    whole = kept_bytes(lambda: token_stats(forward(), layout.targets, 1.0, False, False, False), concat_kept)
    return len(layout.tokens), len(layout.targets), stack, whole - stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1024, help="about this many packed tokens in the longer run")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    long_len = max(8, (args.tokens - PROMPTS * PROMPT_LEN) // (PROMPTS * RESPONSES))
    lengths = (long_len // 2, long_len)
    print(f"CPU: {cpu_model()}, torch {torch.__version__}, {args.threads} threads; Qwen2.5-1.5B layer shapes, bf16")
    print(f"{'setting':<28}{'B/token/layer':>15}{'MB/layer':>10}{'B/token other':>15}{'head B/pred token':>19}"
          f"{'28 layers x 4096 tokens':>25}")  # fmt: skip
    for checkpoint in (False, True):
        for concat_kept in (True, False):
            runs = {(n, r): measure(n, r, checkpoint, concat_kept) for n in (1, 2) for r in lengths}
            (s1, m1, a1, h1), (s2, m2, a2, h2) = runs[1, lengths[0]], runs[1, lengths[1]]
            layer1, layer2 = runs[2, lengths[0]][2] - a1, runs[2, lengths[1]][2] - a2
            per_token = (layer2 - layer1) / (s2 - s1)
            per_layer = layer1 - per_token * s1
            other = ((a2 - layer2) - (a1 - layer1)) / (s2 - s1)
            head = (h2 - h1) / (m2 - m1)
            tokens = 4096
            total = LAYERS_1_5B * (per_token * tokens + per_layer) + other * tokens + head * tokens
            name = ("checkpointed" if checkpoint else "no checkpointing") + (", concat kept" if concat_kept else "")
            print(f"{name:<28}{per_token:>15.0f}{per_layer / 2**20:>10.1f}{other:>15.0f}{head:>19.0f}"
                  f"{total / 2**30:>22.2f} GB")  # fmt: skip


if __name__ == "__main__":
    main()
