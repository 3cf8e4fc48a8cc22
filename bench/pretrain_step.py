"""The tiny demo's pre-training step (npu_rl/tools/make_tiny_model.py) per kernel choice and head.

    python bench/pretrain_step.py
    ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 python bench/pretrain_step.py

Variants, run interleaved on the same 8 stage-1 batches (batch 64, the demo's 2-layer model), median
seconds per step over 4 rounds after a warm-up round:
- linears: `sgemm` (torch's, what the trainer's training passes use by default) or `onednn` (every
  linear through npu_rl.kernels.onednn, what pre-training uses);
- head: `answer` (make_tiny_model.answer_loss: the vocabulary head only where a label is, what
  pre-training uses) or `all` (transformers' own loss: the head at every position).
The ratio column is each variant's time over `onednn / answer`, the pre-training default.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from npu_rl.config import OptimConfig
from npu_rl.kernels import onednn
from npu_rl.optim import build_optimizer
from npu_rl.tools import make_tiny_model as mtm
from npu_rl.tools.make_synthetic_math import iter_problems


def main() -> None:
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    tokenizer = mtm.build_tokenizer(0)
    model = mtm.random_model(tokenizer, "demo", 0)
    problems = iter_problems(1)
    stage = mtm.STAGES[0]
    batches = [
        mtm.collate(
            [mtm.encode(tokenizer, p, p.worked()) for p in (next(problems) for _ in range(stage.batch_size))],
            tokenizer.pad_token_id,
        )
        for _ in range(8)
    ]
    optimizer = build_optimizer(model, OptimConfig(lr=stage.lr, weight_decay=0.01))
    model.train()

    def step(inputs: dict[str, torch.Tensor], linears: str, head: str) -> None:
        with onednn.linear_mode(enabled=linears == "onednn"):
            loss = mtm.answer_loss(model, inputs) if head == "answer" else model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    variants = [(lin, head) for lin in ("onednn", "sgemm") for head in ("answer", "all")]
    times: dict[tuple[str, str], list[float]] = {v: [] for v in variants}
    for round_ in range(5):
        for variant in variants:
            start = time.perf_counter()
            for inputs in batches:
                step(inputs, *variant)
            if round_:
                times[variant].append((time.perf_counter() - start) / len(batches))
    real = sum(int(b["attention_mask"].sum()) for b in batches) / sum(b["attention_mask"].numel() for b in batches)
    print(f"{torch.get_num_threads()} threads, {real:.1%} of positions real, {stage.batch_size} examples per step")
    default = statistics.median(times[("onednn", "answer")])
    print(f"{'linears':<8} {'head':<7} {'s/step':>7} {'ratio':>6}")
    for (linears, head), samples in times.items():
        median = statistics.median(samples)
        print(f"{linears:<8} {head:<7} {median:7.3f} {median / default:6.2f}")


if __name__ == "__main__":
    main()
