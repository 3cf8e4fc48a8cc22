"""GPU check: a few GRPO steps of a Qwen2.5-1.5B-shaped model on one card, and TRL on the same.

    bash bench/gpu_check.sh                 # on a machine with one H100/H200 (about 6-8 minutes)
    bash bench/gpu_check.sh --dry-run       # CPU, tiny model, seconds: what CI runs so this cannot rot

What it does, in order (each phase prints one line; a failure names its phase):
1. assets: the bench tokenizer and prompt parquet (bench/_assets.py) and a random-init model of
   Qwen2.5-1.5B's shape (hidden 1536, 28 layers, 12 heads / 2 kv heads, MLP 8960; the bench
   tokenizer's ~1000-entry vocabulary instead of 151936, so the head is smaller), saved in bf16;
2. npu_rl: `torchrun --nproc_per_node 1 -m npu_rl.train` (FSDP2 as a world of one, hf rollout),
   16 prompts x 8 samples, responses up to 512 tokens, KL loss against a reference, one update
   per step, a checkpoint at the end; reports tokens/s, perf/mfu/actor, peak memory and the
   step split (gen / old_log_prob / ref / update_actor / update_weights) of the last step;
3. merge: `python -m npu_rl.merge` of that checkpoint, loaded back with transformers;
4. resume: the same run for one more step, resumed from the checkpoint (must start at its step);
5. offload: one step with `actor.fsdp.optimizer_offload=true`, whose loss and gradient norm must
   match the plain run's first step (2 %), with its peak memory;
6. TRL: GRPOTrainer on the same model, data, reward and settings (bf16, no vLLM), its step time
   from its own callbacks; prints npu_rl / TRL step-time ratio (medians, first step excluded);
7. LoRA: one step with rank-64 adapters on every linear (the reference is the base with adapters
   off; the frozen base stays bf16), its peak memory next to the plain run's;
8. recompute: one step with `model.gradient_checkpointing=true` (the Ascend sample's setting: the
   packed pass with each layer recomputed in backward) and `actor.head_chunk_tokens=512` (the head's
   logits recomputed chunk by chunk), matching the plain run's first step like offload, with its
   peak memory;
9. actoffload: the same with `model.activation_offload=true` (the layers' inputs held in pinned host
   memory between forward and backward), matching likewise; its peak memory and update time against
   phase 8's are what activation offload saves and costs. The optional phases come last, so that
   the ones before them have printed if the time limit cuts the run.

No network is needed. torch, transformers, accelerate and npu_rl's own dependencies are expected on
the machine (the lent H200's image has them all); trl and datasets for phase 6 are installed from the
wheels in `bench/wheels/` (`bash bench/gpu_wheels.sh` downloads them, pinned, for the machine's
Python; carry the folder there), and so would anything else missing be (peft for phase 7). Without
trl phase 6 is skipped and says so; without peft phase 7.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

SHAPE_1_5B = dict(
    hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, intermediate_size=8960
)
SHAPE_DRY = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96
)
NEEDED = ("pyarrow", "yaml", "sympy", "safetensors", "tokenizers")


def log(phase: str, message: str) -> None:
    print(f"[gpu_check] {phase:>7}: {message}", flush=True)


def memory_of(row: dict) -> dict[str, float]:
    """The memory metrics of one metrics row (device peak and host RSS), rounded for printing."""
    return {k: round(v, 2) for k, v in row.items() if "memory" in k or "rss" in k}


def install_from_wheels(modules: tuple[str, ...]) -> None:
    """pip-install every wheel in bench/wheels when any of `modules` is missing: no index and no
    dependency resolution (the folder holds exactly the missing packages, pinned by
    bench/gpu_wheels.sh; resolving against the machine's own versions could refuse a usable set)."""
    if all(importlib.util.find_spec(m) is not None for m in modules):
        return
    wheels = sorted((HERE / "wheels").glob("*.whl"))
    if not wheels:
        return
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", *map(str, wheels)]
    subprocess.run(cmd, check=False)
    importlib.invalidate_caches()


def build_model(root: Path, dry: bool) -> tuple[Path, Path]:
    """(model folder, train parquet): the bench assets plus the checked shape, weights in bf16 (fp32 dry)."""
    import _assets
    import torch
    from transformers import AutoModelForCausalLM

    size = "gpucheck-dry" if dry else "gpucheck-1.5b"
    _assets.BENCH_SIZES[size] = SHAPE_DRY if dry else SHAPE_1_5B
    paths = _assets.build_assets(root, [size])
    folder = paths[size]
    if not dry and json.loads((folder / "config.json").read_text()).get("dtype") != "bfloat16":
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
        model.save_pretrained(folder)
    return folder, paths["train"]


def train_args(args: argparse.Namespace, model: Path, data: Path, work: Path, steps: int) -> list[str]:
    reward = HERE / "_reward.py"
    score = "compute_vowel_score" if args.dry_run else "compute_score"  # see _reward.vowel_share
    return [
        f"model.path={model}", f"data.train_files=[{data}]", f"data.max_prompt_length={args.max_prompt}",
        f"data.train_batch_size={args.prompts}", f"actor.ppo_mini_batch_size={args.prompts}",
        f"actor.ppo_micro_batch_size_per_device={args.micro}", f"rollout.n={args.n}",
        f"rollout.max_new_tokens={args.max_new}", f"rollout.micro_batch_size={args.prompts}",
        "actor.use_kl_loss=true", "actor.kl_loss_coef=0.04", "actor.kl_loss_type=low_var_kl", "actor.optim.lr=1e-6",
        "actor.optim.weight_decay=0.0",
        f"reward.custom_function.path={reward}", f"reward.custom_function.name={score}", "reward.num_workers=0",
        f"trainer.device={'cpu' if args.dry_run else 'auto'}", "trainer.logger=[jsonl]",
        f"trainer.total_training_steps={steps}", "trainer.val_before_train=false", "trainer.save_freq=-1",
        f"trainer.log_dir={work / 'logs'}", f"trainer.default_local_dir={work / 'ckpt'}",
    ]  # fmt: skip


def run_npu_rl(args: argparse.Namespace, model: Path, data: Path, work: Path, steps: int, *extra: str) -> list[dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "npu_rl.train"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"}
    overrides = [*train_args(args, model, data, work, steps), *extra]
    proc = subprocess.run([*cmd, *overrides], env=env, text=True, capture_output=True)
    if proc.returncode:
        sys.exit(f"[gpu_check] npu_rl run failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    rows = [json.loads(line) for line in (work / "logs" / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "timing_s/step" in r]


def report_npu_rl(rows: list[dict]) -> float:
    last = rows[-1]
    split = " ".join(
        f"{k.removeprefix('timing_s/')}={last[k]:.2f}s"
        for k in ("timing_s/gen", "timing_s/old_log_prob", "timing_s/ref", "timing_s/update_actor",
                  "timing_s/update_weights", "timing_s/step") if k in last
    )  # fmt: skip
    memory = memory_of(last)
    log("npu_rl", f"{len(rows)} steps; last step: {split}")
    log("npu_rl", f"throughput {last.get('perf/throughput', 0):.0f} tokens/s, mfu/actor "
        f"{last.get('perf/mfu/actor', float('nan')):.3f}, memory {memory}, engine-vs-trainer |log-prob| "
        f"{last.get('rollout/logprob_diff', float('nan')):.2e} per token")  # fmt: skip
    timed = [r["timing_s/step"] for r in rows[1:]] or [rows[0]["timing_s/step"]]
    return statistics.median(timed)


def check_merge(work: Path, step: int) -> None:
    from transformers import AutoModelForCausalLM

    out = work / "merged"
    cmd = [sys.executable, "-m", "npu_rl.merge", "--backend", "fsdp", "--local_dir",
           str(work / "ckpt" / f"global_step_{step}" / "actor"), "--target_dir", str(out), "--overwrite"]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True)
    model = AutoModelForCausalLM.from_pretrained(out)
    log("merge", f"global_step_{step} -> {out} in {time.perf_counter() - start:.1f}s, "
        f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f} B params load back")  # fmt: skip


def run_trl(args: argparse.Namespace, model: Path, data: Path, work: Path) -> float | None:
    install_from_wheels(("trl", "datasets"))
    if importlib.util.find_spec("trl") is None or importlib.util.find_spec("datasets") is None:
        log("trl", "skipped: trl/datasets not installed and no bench/wheels to install them from")
        return None
    import datasets
    import torch
    from _reward import digit_share
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.start)

    def reward(completions, **_):
        return [digit_share(c[0]["content"] if isinstance(c, list) else c) for c in completions]

    timer = StepTimer()
    config = GRPOConfig(
        output_dir=str(work / "trl"), per_device_train_batch_size=args.prompts * args.n, num_generations=args.n,
        max_completion_length=args.max_new, learning_rate=1e-6, beta=0.04, max_steps=args.steps, logging_steps=1,
        save_strategy="no", report_to="none", bf16=not args.dry_run, use_cpu=args.dry_run, disable_tqdm=True,
        model_init_kwargs={"dtype": torch.float32 if args.dry_run else torch.bfloat16},
    )  # fmt: skip
    dataset = datasets.Dataset.from_parquet(str(data))
    trainer = GRPOTrainer(model=str(model), reward_funcs=reward, args=config, train_dataset=dataset, callbacks=[timer])
    trainer.train()
    step = statistics.median(timer.times[1:] or timer.times)
    log("trl", f"{len(timer.times)} steps, median step {step:.2f}s (first excluded)")
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny model, tiny batch (CI)")
    parser.add_argument("--work", default="/tmp/npu_rl_gpu_check", help="assets, logs and checkpoints")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--skip-trl", action="store_true")
    args = parser.parse_args()
    dims = (2, 2, 8, 4, 64) if args.dry_run else (16, 8, 512, 16, 256)
    args.prompts, args.n, args.max_new, args.micro, args.max_prompt = dims
    install_from_wheels(NEEDED)
    work = Path(args.work) / ("dry" if args.dry_run else "1.5b")
    import torch

    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    log("assets", f"torch {torch.__version__}, {card}; work dir {work}")
    from npu_rl.env_report import collect, format_report

    for line in format_report(collect()).splitlines():  # the card's stack as npu-rl-env sees it (a bug report's)
        log("env", line)
    model, data = build_model(Path(args.work) / "assets", args.dry_run)
    for stale in ("logs", "ckpt", "offload", "lora", "recompute", "actoffload"):
        subprocess.run(["rm", "-rf", str(work / stale)], check=True)
    rows = run_npu_rl(args, model, data, work, args.steps)
    npu_step = report_npu_rl(rows)
    check_merge(work, args.steps)
    resumed = run_npu_rl(args, model, data, work, args.steps + 1)
    new = [r for r in resumed if r.get("training/global_step") == args.steps + 1]
    if len(resumed) != args.steps + 1 or not new:
        sys.exit(f"[gpu_check] resume: expected step {args.steps + 1} after the checkpoint, got {len(resumed)} rows")
    log("resume", f"resumed at step {args.steps} and ran step {args.steps + 1}: pg_loss {new[0]['actor/pg_loss']:.4f}")
    check_same_first_step(args, model, data, work, rows[0], "offload", "actor.fsdp.optimizer_offload=true")
    trl_step = None if args.skip_trl else run_trl(args, model, data, work)
    if trl_step:
        log("ratio", f"npu_rl / TRL step time = {npu_step:.2f} / {trl_step:.2f} = {npu_step / trl_step:.3f}")
    check_lora(args, model, data, work, rows[0])
    recompute = ("model.gradient_checkpointing=true", "actor.head_chunk_tokens=512")
    check_same_first_step(args, model, data, work, rows[0], "recompute", *recompute)
    check_same_first_step(args, model, data, work, rows[0], "actoffload", *recompute, "model.activation_offload=true")
    log("done", "all phases passed")


def check_same_first_step(
    args: argparse.Namespace, model: Path, data: Path, work: Path, plain: dict, phase: str, *settings: str
) -> None:
    """One step with `settings`, whose loss and gradient norm must match the plain run's first step
    (2 %: the same arithmetic, other kernels' rounding); prints its memory beside the plain run's."""
    row = run_npu_rl(args, model, data, work / phase, 1, *settings)[0]
    for key in ("actor/pg_loss", "actor/grad_norm"):
        if abs(row[key] - plain[key]) > 0.02 * abs(plain[key]) + 1e-6:
            sys.exit(f"[gpu_check] {phase}: first-step {key} {row[key]} differs from the plain run's {plain[key]}")
    log(phase, f"{' '.join(settings)}: first step matches (grad_norm {row['actor/grad_norm']:.5g} vs "
        f"{plain['actor/grad_norm']:.5g}); memory {memory_of(row)} (plain: {memory_of(plain)}); update_actor "
        f"{row['timing_s/update_actor']:.2f} s (plain: {plain['timing_s/update_actor']:.2f} s)")  # fmt: skip


def check_lora(args: argparse.Namespace, model: Path, data: Path, work: Path, plain: dict) -> None:
    """One LoRA step: it must run to a finite loss and gradient norm, and its memory is printed beside
    the full fine-tuning run's first step."""
    install_from_wheels(("peft",))
    if importlib.util.find_spec("peft") is None:
        log("lora", "skipped: peft is not installed and bench/wheels has no peft wheel")
        return
    rank = 8 if args.dry_run else 64
    lora_args = (f"actor.lora.rank={rank}", f"actor.lora.alpha={2 * rank}", "actor.lora.target_modules=[all-linear]")
    row = run_npu_rl(args, model, data, work / "lora", 1, *lora_args)[0]
    loss, norm = row["actor/pg_loss"], row["actor/grad_norm"]
    if not (math.isfinite(loss) and math.isfinite(norm)):
        sys.exit(f"[gpu_check] lora: non-finite step (pg_loss {loss}, grad_norm {norm})")
    log("lora", f"r={rank} all linears: grad_norm {norm:.5g}; memory {memory_of(row)} (full: {memory_of(plain)})")


if __name__ == "__main__":
    main()
