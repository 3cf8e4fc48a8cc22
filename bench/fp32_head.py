"""Engine vs trainer log-probs of a bf16 model with the LM head in bf16 or fp32 (`model.fp32_lm_head`).

    .venv/bin/python bench/fp32_head.py [--model assets/models/tiny-base] [--engines hf,vllm]

For each rollout engine and each pairing of heads (trainer / engine: bf16 / bf16, fp32 / fp32, and for
vLLM the two one-sided pairings), a GRPOTrainer is built on the model in bf16 (`model.dtype=bfloat16`),
its engine samples one batch (the same prompts and seeds every time, temperature 1) and the trainer
recomputes the log-probs of the sampled tokens with its own pass (the old-log-prob pass of a step).
Printed per pairing: |engine - trainer| over the response tokens (mean, 99th percentile, max) and the
share of tokens whose ratio exp(trainer - engine) is off by more than 1%: the importance ratio that the
loss and the rollout corrections see for a token whose policy has not moved.

The model defaults to the tiny demo's pre-trained base (`bash run/tiny_grpo.sh` builds it): a trained
model has the peaked distributions and large logits of a real one, where a random model's logits are
near zero and lose almost nothing to bf16. The hf engine shares the trainer's module, so its pairings
are the two symmetric ones; the one-sided vLLM pairings set vLLM's `head_dtype` through
rollout.engine_kwargs.hf_overrides, or the trainer's head after the build. CPU figures only: a card's
bf16 kernels differ, and so do its mismatches (run it there to see yours).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
from _machine import cpu_model

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROMPTS, SAMPLES, MAX_NEW = 32, 4, 96
# (label, trainer fp32 head, engine fp32 head)
PAIRINGS = [("bf16 / bf16", False, False), ("fp32 / fp32", True, True)]
ONE_SIDED = [("fp32 / bf16", True, False), ("bf16 / fp32", False, True)]


def overrides(model: Path, data: Path, engine: str, work: Path, trainer_fp32: bool, engine_fp32: bool) -> list[str]:
    both = trainer_fp32 and engine_fp32
    args = [
        f"model.path={model}",
        "model.dtype=bfloat16",
        f"model.fp32_lm_head={str(both).lower()}",
        f"data.train_files=[{data}]",
        "data.max_prompt_length=128",
        f"data.train_batch_size={PROMPTS}",
        "data.shuffle=false",
        f"actor.ppo_mini_batch_size={PROMPTS}",
        f"rollout.name={engine}",
        f"rollout.n={SAMPLES}",
        "rollout.temperature=1.0",
        f"rollout.max_new_tokens={MAX_NEW}",
        f"rollout.max_num_seqs={PROMPTS * SAMPLES}",
        "trainer.device=cpu",
        "trainer.resume_mode=disable",
        "trainer.val_before_train=false",
        "trainer.logger=[]",
        f"trainer.log_dir={work / 'logs'}",
        f"trainer.default_local_dir={work / 'ckpt'}",
    ]
    if engine_fp32 and not trainer_fp32:
        args.append("rollout.engine_kwargs={hf_overrides: {head_dtype: float32}}")
    return args


def mismatch(model: Path, data: Path, engine: str, work: Path, trainer_fp32: bool, engine_fp32: bool) -> dict:
    from npu_rl import actor, head
    from npu_rl.config import load_config
    from npu_rl.rollout import RolloutBatch, SamplingParams
    from npu_rl.trainer import GRPOTrainer

    cfg = load_config(None, overrides(model, data, engine, work, trainer_fp32, engine_fp32))
    trainer = GRPOTrainer(cfg)
    try:
        if trainer_fp32 and not engine_fp32:
            head.use_fp32_head(trainer.model)  # after the engine took its bf16 head
        assert head.is_fp32_head(trainer.model) == trainer_fp32
        records = trainer.train_data.records[:PROMPTS]
        out = trainer.rollout.generate(
            [r.prompt_ids for r in records], SamplingParams(SAMPLES, 1.0, 1.0, -1, MAX_NEW), seeds=list(range(PROMPTS))
        )
        batch = actor.build_policy_batch(RolloutBatch.bind(records, out), trainer.pad_token_id)
        with torch.no_grad():
            mine = actor.compute_logprobs(trainer.model, batch, 1.0, 16, trainer.plan).logprobs
    finally:
        getattr(trainer.rollout, "close", lambda: None)()
        trainer.close()
    mask = batch.response_mask.bool()
    diff = (mine - out.logprobs)[mask].double()
    return {
        "tokens": int(mask.sum()),
        "mean": float(diff.abs().mean()),
        "p99": float(diff.abs().quantile(0.99)),
        "max": float(diff.abs().max()),
        "off": float((diff.exp() - 1).abs().gt(0.01).double().mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "assets" / "models" / "tiny-base"))
    parser.add_argument("--data", default=str(ROOT / "assets" / "data" / "synthetic" / "train.parquet"))
    parser.add_argument("--engines", default="hf,vllm", help="comma-separated: hf, vllm (skipped if not installed)")
    args = parser.parse_args()
    model, data = Path(args.model), Path(args.data)
    if not (model / "config.json").is_file() or not data.is_file():
        raise SystemExit(f"{model} or {data} is missing: run `bash run/tiny_grpo.sh` first (it builds both)")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    print(f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} | model {model} in bf16")
    print(f"{PROMPTS} prompts x {SAMPLES} samples, <= {MAX_NEW} new tokens, T=1")
    print(f"{'engine':>6} {'trainer / engine head':>22} {'tokens':>7} {'mean':>9} {'p99':>9} {'max':>9} {'> 1%':>8}")
    for engine in args.engines.split(","):
        if engine == "vllm":
            try:
                import vllm  # noqa: F401
            except ImportError:
                print("vllm: not installed, skipped")
                continue
        for label, trainer_fp32, engine_fp32 in PAIRINGS + (ONE_SIDED if engine == "vllm" else []):
            with tempfile.TemporaryDirectory(prefix="bench_fp32_head_") as tmp:
                r = mismatch(model, data, engine, Path(tmp), trainer_fp32, engine_fp32)
            print(
                f"{engine:>6} {label:>22} {r['tokens']:>7d} {r['mean']:>9.2e} {r['p99']:>9.2e} {r['max']:>9.2e} "
                f"{r['off']:>8.2%}",
                flush=True,
            )
    print("> 1%: share of tokens whose ratio exp(trainer - engine) differs from 1 by more than 0.01")


if __name__ == "__main__":
    sys.exit(main())
