"""oneDNN vs torch's sgemm for the CPU linears, at the bench models' shapes (forward + backward,
and a pre-packed forward as decoding uses), as ratios of best-of-N times, interleaved.

    python bench/linear_kernels.py
    ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 python bench/linear_kernels.py

A ratio below 1 means oneDNN is faster. npu_rl decides per weight shape at start-up the same way
(npu_rl/kernels/onednn.py `faster_shapes`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from npu_rl.kernels import onednn

# (rows, in, out): the small model's gate/up, down, q/k/v and the tiny model's q/k/v at a training
# micro-batch's token count; then decode-sized rows against gate/up and the head.
SHAPES = [(1100, 512, 3072), (1100, 1536, 512), (1100, 512, 768), (1100, 128, 768), (16, 512, 3072), (16, 512, 1000)]


def best(fn, repeats: int = 20) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(rows: int, k: int, n: int) -> tuple[float, float, float]:
    """(lowest and highest fwd+bwd ratio over 3 rounds, packed forward ratio): oneDNN over sgemm."""
    x, w, g = torch.randn(rows, k, requires_grad=True), torch.randn(n, k, requires_grad=True), torch.randn(rows, n)
    ratios = [
        best(lambda: onednn.linear(x, w).backward(g)) / best(lambda: F.linear(x, w).backward(g)) for _ in range(3)
    ]
    packed = onednn.pack(w.detach(), rows)
    with torch.no_grad():
        decode = best(lambda: onednn.packed_linear(x, packed, w, None)) / best(lambda: F.linear(x, w))
    return min(ratios), max(ratios), decode


def main() -> None:
    torch.set_num_threads(2)
    isa = torch.backends.cpu.get_cpu_capability()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, ISA {isa}")
    print(f"{'rows x in -> out':>20} {'fwd+bwd oneDNN/sgemm':>21} {'packed fwd oneDNN/sgemm':>24}")
    for rows, k, n in SHAPES:
        low, high, decode = measure(rows, k, n)
        print(f"{f'{rows} x {k} -> {n}':>20} {low:>10.2f} - {high:<8.2f} {decode:>24.2f}")


if __name__ == "__main__":
    main()
