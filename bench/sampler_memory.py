"""Peak memory of the hf rollout's sampler per decode step, against the estimate the rollout plans with.

    python bench/sampler_memory.py                 # 256 rows x Qwen2.5's 151936-token vocabulary, ~20 s

`npu_rl.rollout.hf.sample_next` turns a [rows, vocab] block of logits into one token per row; the fp32
tensors it keeps alive at once (the float logits, the tempered ones, log-probs, probabilities, their
CDF, and for top-k / top-p a sorted copy with its int64 order) are what the hf rollout's memory plan
(`npu_rl.rollout.kv_budget.sampler_copies`) counts beside the KV cache. Each case runs in a fresh
process that measures its peak resident memory before and after one call (large blocks are mapped and
unmapped by the allocator, so the peak growth is the most that was alive), in units of one fp32
[rows, vocab] tensor. The plan counts whole [rows, vocab] tensors: it must not be below the measurement
by more than SLACK (top-k's [rows, k] values and indices, and such, are left to the rollout's headroom).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model

from npu_rl.rollout.base import SamplingParams
from npu_rl.rollout.kv_budget import sampler_copies

SLACK = 0.05  # of one [rows, vocab] fp32 tensor

CASES = {
    "greedy (T=0)": dict(temperature=0.0),
    "T=1, no filter (verl's default)": dict(temperature=1.0),
    "T=0.7": dict(temperature=0.7),
    "top_k=50": dict(temperature=1.0, top_k=50),
    "top_p=0.9": dict(temperature=1.0, top_p=0.9),
    "min_p=0.05": dict(temperature=1.0, min_p=0.05),
    "repetition_penalty=1.1": dict(temperature=1.0, repetition_penalty=1.1),
    "T=0.7 top_p top_k min_p penalty": dict(temperature=0.7, top_p=0.9, top_k=50, min_p=0.05, repetition_penalty=1.1),
}


def measure(case: str, rows: int, vocab: int) -> float:
    """Peak resident growth of one `sample_next` call, in fp32 [rows, vocab] tensors (this process)."""
    import torch

    from npu_rl.rollout.hf import sample_next

    params = SamplingParams(**CASES[case])
    logits = torch.randn(rows, vocab, dtype=torch.bfloat16)
    seen = torch.rand(rows, vocab) < 0.01 if params.repetition_penalty != 1.0 else None
    uniforms = torch.rand(rows)
    sample_next(logits[:1], params, uniforms[:1], None if seen is None else seen[:1])  # lazy init outside the peak
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sample_next(logits, params, uniforms, seen)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (after - before) * 1024 / (rows * vocab * 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES), metavar="CASE")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(f"{measure(args.child, args.rows, args.vocab):.2f}")
        return
    print(f"sampler peak per call, {args.rows} rows x {args.vocab} vocabulary, in fp32 [rows, vocab] copies")
    print(f"CPU: {cpu_model()}")
    print(f"{'sampling':34} {'measured':>9} {'planned':>8}")
    for case in args.cases:
        cmd = [sys.executable, __file__, "--child", case, "--rows", str(args.rows), "--vocab", str(args.vocab)]
        measured = float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()[-1])
        planned = sampler_copies(SamplingParams(**CASES[case]))
        flag = "" if planned + SLACK >= measured else "  <- plan below the measurement"
        print(f"{case:34} {measured:9.2f} {planned:8d}{flag}")


if __name__ == "__main__":
    main()
