"""Assets of the npu_rl-vs-TRL benchmark, built offline with the project's own builders (npu_rl.tools).

Both trainers read exactly these files: one tokenizer (byte-level BPE, ~1000 entries, ChatML
template), two random-init Qwen2 models ("tiny" and "small", the issue's reference sizes) and a
parquet of 256 synthetic arithmetic prompts in verl's row schema. Everything is seeded, so a
rerun rebuilds the same bytes; existing folders are reused.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

from npu_rl.tools import make_synthetic_math, make_tiny_model
from npu_rl.tools._tiny_tokenizer import train_tokenizer

# The reference architectures (Qwen2 from config, random init, fp32).
BENCH_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=384
    ),
    "small": dict(
        hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, intermediate_size=1536
    ),
}
# Long-tail variants: a base size whose EOS row of the (tied) LM head is scaled up, so sampling at
# T=1 stops at random: with 4x, responses of 256 tokens at most ranged 2-256 (median 91, a quarter
# reaching the limit) on 32 samples of "small". Both trainers then see the same length distribution.
LONG_TAIL: dict[str, tuple[str, float]] = {"small-longtail": ("small", 4.0)}
VOCAB_SIZE = 1000
NUM_PROMPTS = 256


def _filler_texts(seed: int = 0, n: int = 3000) -> list[str]:
    """Made-up words with a Zipf-like frequency, so BPE finds ~1000 merges.

    The arithmetic problems alone saturate at ~520 tokens; the reference setup's tokenizer has ~1000
    entries, and the vocabulary size sets the cost of every lm-head and log-softmax.
    """
    rng = random.Random(seed)
    syllables = [c + v for c in "bcdfghklmnprstvwz" for v in "aeiou"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(n)]
    weights = [1 / (i + 1) for i in range(n)]
    return [" ".join(rng.choices(words, weights=weights, k=40)) for _ in range(n)]


def build_assets(root: str | Path, sizes: list[str]) -> dict[str, Path]:
    """Model folders by size name plus `"train"`: the prompt parquet. Built once under `root`."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    root = Path(root)
    paths: dict[str, Path] = {}
    train = root / "data" / "train.parquet"
    if not train.exists():
        make_synthetic_math.write_splits(root / "data", n_train=NUM_PROMPTS, n_test=16, seed=0)
    paths["train"] = train
    tokenizer = None
    for size in sizes:
        out = root / f"model-{size}"
        paths[size] = out
        if (out / "config.json").exists():
            continue
        if size in LONG_TAIL:
            base, scale = LONG_TAIL[size]
            base_dir = build_assets(root, [base])[base]
            model = Qwen2ForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
            with torch.no_grad():
                model.lm_head.weight[model.config.eos_token_id] *= scale
            shutil.copytree(base_dir, out)  # tokenizer and generation config as the base's
            model.save_pretrained(out)
            continue
        if tokenizer is None:
            corpus = make_synthetic_math.tokenizer_corpus(0, 2000) + _filler_texts()
            tokenizer = train_tokenizer(corpus, vocab_size=VOCAB_SIZE)
        base = make_tiny_model.qwen2_config(tokenizer, size="test").to_dict()
        for key in ("head_dim", "layer_types"):  # derived from the sizes below
            base.pop(key, None)
        config = Qwen2Config(**{**base, **BENCH_SIZES[size]})
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config).to(torch.float32)
        make_tiny_model.save_model_dir(model, tokenizer, out)
    return paths
