"""GRPO step time of npu_rl against TRL's GRPOTrainer on the same models, data and settings.

    python bench/compare_trl.py                  # both sizes, 3 warm-up + 20 timed steps each
    python bench/compare_trl.py --sizes tiny --steps 10
    python bench/compare_trl.py --long-tail      # "small" made to stop at random: 2-256 new tokens

Setup (once): TRL lives in its own venv so it never touches the project's. torch comes first from
the local CPU wheel, and the TRL install is dry-run first so pip cannot pull a CUDA torch:

    python3 -m venv .venv-trl
    .venv-trl/bin/pip install torch==2.13.0
    .venv-trl/bin/pip install --dry-run trl transformers==5.19.0 -e .   # check: no torch in "Would install"
    .venv-trl/bin/pip install trl transformers==5.19.0 -e .

(`--setup` runs these steps and refuses to go on if the dry run would replace torch.) Both
sides then use the same torch and transformers versions.

What is compared, per model size ("tiny": hidden 128, 2 layers; "small": hidden 512, 4 layers;
both random-init Qwen2 with a ~1000-token BPE tokenizer, see bench/_assets.py): one optimizer
step = 2 prompts x 8 samples, <= 64 new tokens at temperature 1, a frozen reference model with KL
coefficient 0.04 (k3 estimator, in the loss), lr 1e-5, one update per rollout, fp32, 2 torch
threads, no vLLM. Both get the same reward (share of digits in the text, bench/_reward.py): it
varies between samples, so advantages are non-zero and both really train.

`--long-tail` runs the same comparison on the long-tail workload: "small" with its EOS logit scaled
(bench/_assets.py LONG_TAIL), so sampled responses stop anywhere from a few tokens to the limit,
256 new tokens (median ~90, about a quarter reaching it): the padded work TRL does on such a batch
is what npu_rl's packed passes remove.

How: each trainer runs in its own process (bench/_worker.py), and the two are stepped
alternately, ABBA, one step at a time: they share the machine's noise, and each reports its own
peak RSS. A TRL step is timed from its `on_step_begin` to its `on_step_end` callback (generation,
reference pass, loss, backward, optimizer); an npu_rl step is one `GRPOTrainer.train_step`
(the same work plus reward and metrics). Medians over the timed steps are reported.

The machine is shared. With OpenMP's default (spinning) wait policy, a 2-thread operator whose
second thread is descheduled by someone else's process waits a whole scheduler slice, and steps
that take 0.1 s alone take seconds under load, for both trainers alike. Both workers therefore
run with OMP_WAIT_POLICY=passive by default, which keeps the figures close to a quiet machine's;
`--omp-wait-policy default` measures with the environment's policy instead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

SIDES = ("trl", "npu_rl")


def work_ratio(lengths: dict[str, float]) -> float:
    """npu_rl's linear-layer work on one step's batch over a padded trainer's on the same batch.

    Work is counted in token positions times passes (forward-equivalents): the prefill, one decode
    step per generated token, the reference forward and the training forward + backward (3x a
    forward) over prompt and response. A padded trainer (TRL) runs every row's prompt, padded to
    the batch's longest, and every row to the longest response (generate keeps finished rows in
    the batch); npu_rl runs each distinct prompt once and no padding. Where both sides are bound
    by the same matmul kernels (a slow CPU), this is the lowest step-time ratio reachable without
    doing less work; attention's quadratic term and the vocabulary head are left out.
    """
    from _worker import GENERATIONS, PROMPTS_PER_STEP

    rows, prompts = PROMPTS_PER_STEP * GENERATIONS, PROMPTS_PER_STEP
    p_max, r_max = lengths["prompt_length/max"], lengths["response_length/max"]
    p_mean, r_mean = lengths["prompt_length/mean"], lengths["response_length/mean"]
    padded = rows * p_max + rows * r_max + 4 * rows * (p_max + r_max)
    packed = prompts * p_mean + rows * r_mean + 4 * (prompts * p_mean + rows * r_mean)
    return packed / padded


class Worker:
    """A `_worker.py` process of one side, stepped over a pipe."""

    def __init__(
        self, side: str, python: str, model: Path, train: Path, work: Path, log: Path, env: dict[str, str]
    ) -> None:
        self.side = side
        self.log = open(log, "w")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [python, str(HERE / "_worker.py"), side, str(model), str(train), str(work / side)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            bufsize=1,
        )

    def step(self) -> dict[str, Any]:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.side} worker died; see {self.log.name}")
        return json.loads(line)

    def close(self) -> None:
        try:
            self.proc.stdin.write("stop\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        self.proc.wait(timeout=60)
        self.log.close()


def run_size(
    size: str, paths: dict[str, Path], args: argparse.Namespace, work: Path, logs: Path
) -> dict[str, list[dict]]:
    pythons = {"trl": args.trl_python, "npu_rl": args.python}
    env = dict(os.environ, NPU_RL_BENCH_MAX_NEW=str(args.max_new_tokens))
    if args.omp_wait_policy != "default":
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    workers = {
        side: Worker(side, pythons[side], paths[size], paths["train"], work / size, logs / f"{size}-{side}.log", env)
        for side in SIDES
    }
    reports: dict[str, list[dict]] = {side: [] for side in SIDES}
    try:
        for i in range(args.warmup + args.steps):
            order = SIDES if i % 4 in (0, 3) else SIDES[::-1]  # ABBA: neither side always goes first
            for side in order:
                report = workers[side].step()
                if i >= args.warmup:
                    reports[side].append(report)
            print(
                f"  [{size}] step {i + 1}/{args.warmup + args.steps}"
                + "".join(f"  {s} {reports[s][-1]['step_s']:.3f}s" for s in SIDES if i >= args.warmup),
                file=sys.stderr,
                flush=True,
            )
    finally:
        for w in workers.values():
            w.close()
    return reports


def trained(reports: list[dict]) -> str:
    """Did the side really train: grad norm > 0 on every step with non-zero advantages, weights changed."""
    steps = [r for r in reports if r["adv_nonzero"]]
    good = sum(r["grad_norm"] > 0 for r in steps)
    moved = reports[-1]["weights_moved"]
    ok = steps and good == len(steps) and moved
    weights = "changed" if moved else "UNCHANGED"
    verdict = "yes" if ok else "NO"
    return f"{verdict} ({good}/{len(steps)} steps with non-zero advantages had grad_norm > 0; weights {weights})"


def summarize(size: str, reports: dict[str, list[dict]]) -> float:
    med = {s: statistics.median(r["step_s"] for r in reports[s]) for s in SIDES}
    ratio = med["npu_rl"] / med["trl"]
    print(f"\n== {size} ==")
    print(f"{'':8}{'s/step (median)':>17}{'completion tok/s':>18}{'peak RSS MB':>13}{'CPU s/step':>12}")
    for s in SIDES:
        tps = statistics.median(r["completion_tokens"] / r["step_s"] for r in reports[s])
        cpu = statistics.median(r["cpu_s"] for r in reports[s])
        print(f"{s:8}{med[s]:>17.3f}{tps:>18.0f}{reports[s][-1]['peak_rss_mb']:>13.0f}{cpu:>12.3f}")
    print(f"ratio npu_rl/TRL: {ratio:.3f}  ({'meets' if ratio <= 0.4 else 'misses'} the <= 0.4 goal)")
    floor = statistics.median(work_ratio(r["lengths"]) for r in reports["npu_rl"])
    print(f"work ratio npu_rl/padded on npu_rl's batches: {floor:.3f}  (the ratio if both were matmul-bound)")
    for s in SIDES:
        names = sorted({k for r in reports[s] for k in r["split"]})
        split = "  ".join(
            f"{k.removeprefix('timing_s/')} {statistics.median(r['split'].get(k, 0.0) for r in reports[s]):.3f}"
            for k in names
        )
        print(f"{s} split (median s): {split}")
    for s in SIDES:
        print(f"{s} trained: {trained(reports[s])}")
    threads = {s: sorted({r["threads"] for r in reports[s]}) for s in SIDES}
    print("torch threads at step start: " + ", ".join(f"{s} {t}" for s, t in threads.items()))
    return ratio


def setup_venv(venv: Path) -> None:
    """Create the TRL venv as the module docstring says, refusing any install that replaces torch."""
    pip = [str(venv / "bin" / "pip"), "install"]
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    wanted = ["trl", "transformers==5.19.0", "-e", str(ROOT)]
    plan = subprocess.run([*pip, "--dry-run", *wanted], check=True, capture_output=True, text=True).stdout
    would = next((line for line in plan.splitlines() if line.startswith("Would install")), "")
    if " torch-" in would or "nvidia" in would:
        raise SystemExit(f"refusing: the TRL install would replace torch ({would})")
    subprocess.run([*pip, *wanted], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=None, help="default tiny,small (with --long-tail: small-longtail)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 64 (with --long-tail: 256)")
    parser.add_argument("--long-tail", action="store_true", help="the long-tail workload (see the docstring)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--assets", default=str(ROOT / "assets" / "bench"), help="built here once, then reused")
    parser.add_argument("--python", default=sys.executable, help="interpreter of the npu_rl side")
    parser.add_argument("--trl-python", default=str(ROOT / ".venv-trl" / "bin" / "python"))
    parser.add_argument(
        "--omp-wait-policy",
        default="passive",
        help="OMP_WAIT_POLICY of both workers (see the docstring); 'default' leaves the environment's",
    )
    parser.add_argument("--setup", action="store_true", help="create the TRL venv first (see the docstring)")
    args = parser.parse_args()
    if args.setup:
        setup_venv(Path(args.trl_python).parent.parent)
    if not Path(args.trl_python).exists():
        raise SystemExit(f"{args.trl_python} not found: create the TRL venv first (--setup, or see --help)")

    from _assets import build_assets

    args.sizes = args.sizes or ("small-longtail" if args.long_tail else "tiny,small")
    args.max_new_tokens = args.max_new_tokens or (256 if args.long_tail else 64)
    sizes = args.sizes.split(",")
    paths = build_assets(args.assets, sizes)
    with open("/proc/loadavg") as fh:
        load = fh.read().split()[:3]
    print(f"load average at start: {' '.join(load)} (2 cores; other work on the machine slows both sides)")
    print(f"both workers: OMP_WAIT_POLICY={args.omp_wait_policy}, 2 torch threads, <= {args.max_new_tokens} new tokens")
    ratios = {}
    with tempfile.TemporaryDirectory(prefix="compare_trl_") as tmp:
        for size in sizes:
            start = time.perf_counter()
            reports = run_size(size, paths, args, Path(tmp), Path(args.assets))
            ratios[size] = summarize(size, reports)
            print(f"({time.perf_counter() - start:.0f} s for {size})")
    print("\nratios: " + ", ".join(f"{s} {r:.3f}" for s, r in ratios.items()))


if __name__ == "__main__":
    main()
