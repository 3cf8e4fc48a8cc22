"""Build the offline demo's base model: a small Qwen2 model pre-trained to have headroom for GRPO.

Why two stages (see ../shared/notes/tiny-demo.md): a model pre-trained only on worked solutions
makes arithmetic slips that GRPO cannot fix in minutes, so RL has nothing to sharpen. What RL does
quickly is move probability toward behaviour the model already produces sometimes and that earns
reward. Stage 1 teaches worked step-by-step solutions; stage 2, a short mid-training on a mix that is
mostly bare shortcut answers, makes greedy decoding prefer the (usually wrong) shortcut while
sampling still writes worked solutions. Such a base has pass@k well above greedy accuracy.

Deterministic: fixed seeds, fixed step counts (never time budgets), fp32, fixed thread count.

Usage: python tools/make_tiny_model.py --out-dir assets/models/tiny-base
"""

from __future__ import annotations

from pathlib import Path

import torch
from _tiny_tokenizer import save_tokenizer, train_tokenizer
from make_synthetic_math import tokenizer_corpus
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

# Architecture sizes. "test" keeps unit tests fast; "demo" is the measured 3.3M-parameter base.
SIZES: dict[str, dict[str, int]] = {
    "test": dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128
    ),
    "demo": dict(
        hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=768
    ),
}


def build_tokenizer(seed: int = 0, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """The tokenizer every tiny model uses, trained on the synthetic problems' text."""
    return train_tokenizer(tokenizer_corpus(seed, 2000), vocab_size=vocab_size)


def qwen2_config(tokenizer: PreTrainedTokenizerFast, size: str = "demo") -> Qwen2Config:
    """Qwen2 config sized by `SIZES[size]`, its vocabulary padded to a multiple of 64 as Qwen's is."""
    vocab = -(-len(tokenizer) // 64) * 64
    return Qwen2Config(
        vocab_size=vocab,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
        **SIZES[size],
    )


def random_model(tokenizer: PreTrainedTokenizerFast, size: str = "demo", seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(qwen2_config(tokenizer, size)).to(torch.float32)


def save_model_dir(model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerFast, out_dir: str | Path) -> Path:
    """One Hugging Face folder: config, safetensors weights, tokenizer, generation config.

    Generation stops at `<|im_end|>` or `<|endoftext|>`, as Qwen2 chat models do.
    """
    out_dir = Path(out_dir)
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model.save_pretrained(out_dir)
    save_tokenizer(tokenizer, out_dir)
    return out_dir
