"""How the offline demo's gain depends on the base's pre-training: one recipe variant end to end.

    python bench/tiny_base_recipe.py                                                 # the demo's recipe, 40 GRPO steps
    python bench/tiny_base_recipe.py --layers 4 --stage1-steps 500 --grpo-steps 40   # the former 4-layer base
    python bench/tiny_base_recipe.py --stage1-steps 420 --grpo-steps 60 --threads 1  # run two variants side by side
    python bench/tiny_base_recipe.py --stage1-min-lr-ratio 0.1 --stage1-only --seed 2  # stage 1's ceiling alone

Builds the demo's base (npu_rl/tools/make_tiny_model.py build_base: tokenizer, seeds, stages) with
`--layers` layers and stage 1 shortened or lengthened to `--stage1-steps`, on the demo's synthetic
data (assets/data/synthetic, made if absent), and
prints: the greedy accuracy of the worked solutions after stage 1 (the ceiling GRPO can reach),
the base's headroom (greedy, T=1, pass@8), and after `--grpo-steps` steps of the demo's GRPO config
the held-out greedy accuracy and the gain, each phase with its wall time. Everything goes under
--out-dir. The decisions in make_tiny_model.py (2 layers, 450 stage-1 steps, stage 1's lr) cite its figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from npu_rl.config import RewardConfig  # noqa: E402
from npu_rl.eval import Evaluator  # noqa: E402
from npu_rl.tools import make_synthetic_math  # noqa: E402
from npu_rl.tools import make_tiny_model as mtm  # noqa: E402
from npu_rl.tools._headroom import format_result, measure  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=mtm.SIZES["demo"]["num_hidden_layers"])
    parser.add_argument("--stage1-steps", type=int, default=mtm.STAGES[0].steps)
    parser.add_argument("--stage1-lr", type=float, default=mtm.STAGES[0].lr, help="stage 1's peak lr")
    parser.add_argument(
        "--stage1-min-lr-ratio", type=float, default=mtm.STAGES[0].min_lr_ratio, help="stage 1's final lr / peak"
    )
    parser.add_argument("--stage1-only", action="store_true", help="stop after stage 1's worked-solution accuracy")
    parser.add_argument("--grpo-steps", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0, help="base seed (the trainer keeps the config's)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--data-dir", default=str(ROOT / "assets" / "data" / "synthetic"))
    parser.add_argument("--out-dir", default=str(ROOT / "outputs" / "tiny_base_recipe"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    name = f"L{args.layers}-s{args.stage1_steps}-lr{args.stage1_lr:g}-min{args.stage1_min_lr_ratio:g}-seed{args.seed}"
    data, out = Path(args.data_dir), Path(args.out_dir) / name
    if not (data / "test.parquet").is_file():
        make_synthetic_math.main(["--out-dir", str(data)])
    mtm.SIZES["recipe"] = {**mtm.SIZES["demo"], "num_hidden_layers": args.layers}
    stage1 = dataclasses.replace(
        mtm.STAGES[0], steps=args.stage1_steps, lr=args.stage1_lr, min_lr_ratio=args.stage1_min_lr_ratio
    )
    stages = (stage1,) if args.stage1_only else (stage1, *mtm.STAGES[1:])
    result: dict[str, object] = {
        "layers": args.layers,
        "stage1_steps": args.stage1_steps,
        "stage1_lr": args.stage1_lr,
        "stage1_min_lr_ratio": args.stage1_min_lr_ratio,
        "seed": args.seed,
    }
    clock = [time.perf_counter()]

    def stage1_greedy(model_dir: Path) -> float:
        """The worked solutions' accuracy after stage 1: the ceiling GRPO can reach."""
        with Evaluator(model_dir, num_threads=args.threads, batch_size=256, reward=RewardConfig(num_workers=0)) as ev:
            summary = ev.evaluate(data / "test.parquet", max_new_tokens=96, output_dir=out / "eval", tag="stage1")
        return summary["accuracy"]

    def after_stage(stage: mtm.Stage, model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerFast) -> None:
        result[f"{stage.name}_s"] = round(time.perf_counter() - clock[0], 1)
        if stage is stages[0] and not args.stage1_only:  # with --stage1-only the base is that model
            result["stage1_greedy"] = stage1_greedy(mtm.save_model_dir(model, tokenizer, out / "stage1"))
        clock[0] = time.perf_counter()

    base = mtm.build_base(out / "base", data / "test.parquet", args.seed, stages, "recipe", after_stage)
    if args.stage1_only:
        result["stage1_greedy"] = stage1_greedy(base)
        print(json.dumps(result))
        return
    before = measure(base, data / "test.parquet", out / "eval", "before", args.threads)
    print(format_result(before, "base"), flush=True)
    result["base_greedy"], result["base_pass@8"] = before["greedy_acc"], before["pass@8"]

    start = time.perf_counter()
    overrides = [
        f"model.path={base}",
        f"data.train_files=[{data / 'train.parquet'}]",
        f"data.val_files=[{data / 'test.parquet'}]",
        f"trainer.total_training_steps={args.grpo_steps}",
        "trainer.test_freq=-1",
        f"trainer.num_threads={args.threads}",
        f"trainer.default_local_dir={out / 'ckpt'}",
        f"trainer.log_dir={out / 'logs'}",
        "trainer.logger=[jsonl]",
        "trainer.resume_mode=disable",
    ]
    with open(out / "grpo.log", "w", encoding="utf-8") as log:
        cmd = [sys.executable, "-m", "npu_rl.train", "--config", "tiny_grpo", *overrides]
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    result["grpo_s"] = round(time.perf_counter() - start, 1)
    with Evaluator(out / "ckpt", num_threads=args.threads, batch_size=256, reward=RewardConfig(num_workers=0)) as ev:
        after = ev.evaluate(data / "test.parquet", max_new_tokens=96, output_dir=out / "eval", tag="after.greedy")
    result["after_greedy"] = after["accuracy"]
    result["gain_points"] = round(100 * (after["accuracy"] - before["greedy_acc"]), 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
