"""One side of the benchmark (npu_rl or TRL) as a long-lived process driven one step at a time.

`compare_trl.py` starts one worker per trainer and alternates them step by step: a worker runs a
step when it reads `step` on stdin and answers with one JSON line on stdout, then waits (idle, no
CPU) while the other side runs. So both trainers see the same machine noise, each process has
its own peak RSS, and neither pays for the other's memory. Library chatter goes to stderr.

Usage (by compare_trl.py): python bench/_worker.py {npu_rl|trl} MODEL_DIR TRAIN_PARQUET WORK_DIR
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _reward import digit_share

# The per-step workload, shared by both sides.
PROMPTS_PER_STEP = 2
GENERATIONS = 8
MAX_PROMPT = 128
MAX_NEW = int(os.environ.get("NPU_RL_BENCH_MAX_NEW", "64"))  # compare_trl.py --max-new-tokens
TEMPERATURE = 1.0
LR = 1e-5
KL_COEF = 0.04
THREADS = int(os.environ.get("BENCH_THREADS", "2"))  # the setting; override only to profile
SEED = 1
LENGTH_KEYS = [f"{name}/{stat}" for name in ("prompt_length", "response_length") for stat in ("mean", "max")]


def cpu_s() -> float:
    """CPU seconds used so far by all threads of this process (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class Channel:
    """The step protocol: block until the driver says `step`, answer with a JSON line."""

    def __init__(self) -> None:
        self.out = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)  # anything printed by the libraries goes to stderr
        sys.stdout = sys.stderr

    def wait(self) -> bool:
        line = sys.stdin.readline().strip()
        return line == "step"

    def send(self, report: dict[str, Any]) -> None:
        self.out.write(json.dumps(report) + "\n")


def npu_rl_trainer(model_dir: str, train: str, work: Path) -> Any:
    """npu_rl's GRPOTrainer with the benchmark's settings and reward."""
    from npu_rl.config import load_config
    from npu_rl.reward_manager import RewardBatch
    from npu_rl.trainer import GRPOTrainer

    class BenchReward:
        def score(self, items: list[Any]) -> RewardBatch:
            scores = [digit_share(i.solution_str) for i in items]
            return RewardBatch(scores=scores, acc=[s > 0.5 for s in scores])

    cfg = load_config(
        None,
        [
            f"model.path={model_dir}",
            "model.dtype=float32",
            f"data.train_files=[{train}]",
            f"data.max_prompt_length={MAX_PROMPT}",
            f"data.train_batch_size={PROMPTS_PER_STEP}",
            f"actor.ppo_mini_batch_size={PROMPTS_PER_STEP}",
            f"actor.ppo_micro_batch_size_per_device={PROMPTS_PER_STEP * GENERATIONS}",
            f"actor.optim.lr={LR}",
            "actor.optim.weight_decay=0.0",
            "actor.use_kl_loss=true",
            f"actor.kl_loss_coef={KL_COEF}",
            "actor.kl_loss_type=low_var_kl",
            f"ref.log_prob_micro_batch_size_per_device={PROMPTS_PER_STEP * GENERATIONS}",
            f"rollout.n={GENERATIONS}",
            f"rollout.max_new_tokens={MAX_NEW}",
            f"rollout.temperature={TEMPERATURE}",
            f"trainer.num_threads={THREADS}",
            f"trainer.seed={SEED}",
            "trainer.device=cpu",
            "trainer.logger=[]",
            f"trainer.log_dir={work / 'log'}",
            f"trainer.default_local_dir={work / 'ckpt'}",
            "trainer.resume_mode=disable",
            "trainer.val_before_train=false",
            "reward.num_workers=0",
        ],
    )
    trainer = GRPOTrainer(cfg)
    trainer.step_rollouts.reward = BenchReward()  # grades the step's rollouts (npu_rl.step_rollouts)
    return trainer


def run_npu_rl(model_dir: str, train: str, work: Path, chan: Channel) -> None:
    """GRPOTrainer driven like `fit()` does, minus validation and checkpoints (neither side has them)."""
    trainer = npu_rl_trainer(model_dir, train, work)
    start_weights = _checksum(trainer.model)
    while chan.wait():
        records = trainer.sampler.next_batch()
        start, cpu_start = time.perf_counter(), cpu_s()
        metrics = trainer.train_step(records)
        elapsed, cpu = time.perf_counter() - start, cpu_s() - cpu_start
        trainer.global_step += 1
        chan.send(
            {
                "threads": torch.get_num_threads(),
                "step_s": elapsed,
                "cpu_s": cpu,
                "completion_tokens": int(metrics["response_length/mean"] * PROMPTS_PER_STEP * GENERATIONS),
                "lengths": {k: metrics[k] for k in LENGTH_KEYS},
                "grad_norm": metrics["actor/grad_norm"],
                "adv_nonzero": metrics["critic/advantages/max"] - metrics["critic/advantages/min"] > 0,
                "split": {k: v for k, v in metrics.items() if k.startswith("timing_s/")},
                "weights_moved": _checksum(trainer.model) != start_weights,
                "peak_rss_mb": peak_rss_mb(),
            }
        )


def run_trl(model_dir: str, train: str, work: Path, chan: Channel) -> None:
    """TRL's GRPOTrainer.train(), paused between optimizer steps by callbacks."""
    import datasets
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    def reward_digits(completions: list[Any], **_: Any) -> list[float]:
        return [digit_share(c[0]["content"] if isinstance(c, list) else c) for c in completions]

    dataset = datasets.Dataset.from_parquet(train)
    args = GRPOConfig(
        output_dir=str(work / "trl"),
        per_device_train_batch_size=PROMPTS_PER_STEP * GENERATIONS,
        gradient_accumulation_steps=1,
        num_generations=GENERATIONS,
        max_completion_length=MAX_NEW,
        temperature=TEMPERATURE,
        learning_rate=LR,
        lr_scheduler_type="constant",
        beta=KL_COEF,
        num_iterations=1,
        max_steps=10_000,  # stopped by the driver
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        disable_tqdm=True,
        seed=SEED,
        dataloader_num_workers=0,
        model_init_kwargs={"dtype": torch.float32},
    )
    torch.set_num_threads(THREADS)
    trainer = GRPOTrainer(model=model_dir, reward_funcs=reward_digits, args=args, train_dataset=dataset)
    torch.set_num_threads(THREADS)
    split: dict[str, float] = {}
    trainer._generate_single_turn = _timed(trainer._generate_single_turn, split, "gen")
    trainer._get_per_token_logps_and_entropies = _timed(
        trainer._get_per_token_logps_and_entropies,
        split,
        "ref",
        when=lambda model, *a, **k: model is trainer.ref_model,
    )
    start_weights = _checksum(trainer.model)
    state: dict[str, Any] = {}

    class Pace(TrainerCallback):
        def on_train_begin(self, *_: Any, **__: Any) -> Any:
            if not chan.wait():
                raise SystemExit(0)

        def on_step_begin(self, *_: Any, **__: Any) -> Any:
            split.clear()
            state["threads"] = torch.get_num_threads()
            state["start"], state["cpu"] = time.perf_counter(), cpu_s()

        def on_step_end(self, *_: Any, **__: Any) -> Any:
            state["elapsed"], state["cpu"] = time.perf_counter() - state["start"], cpu_s() - state["cpu"]

        def on_log(
            self, _args: Any, _state: Any, _control: Any, logs: dict[str, float] | None = None, **__: Any
        ) -> Any:
            logs = logs or {}
            if "grad_norm" not in logs:
                return
            chan.send(
                {
                    "threads": state["threads"],
                    "step_s": state["elapsed"],
                    "cpu_s": state["cpu"],
                    "completion_tokens": int(logs["completions/mean_length"] * PROMPTS_PER_STEP * GENERATIONS),
                    "grad_norm": float(logs["grad_norm"]),
                    "adv_nonzero": logs["frac_reward_zero_std"] < 1.0,
                    "split": {f"timing_s/{k}": v for k, v in split.items()},
                    "weights_moved": _checksum(trainer.model) != start_weights,
                    "peak_rss_mb": peak_rss_mb(),
                }
            )
            if not chan.wait():
                raise SystemExit(0)

    trainer.add_callback(Pace())
    trainer.train()


def _timed(fn: Callable[..., Any], into: dict[str, float], name: str, when: Callable[..., bool] | None = None) -> Any:
    """`fn` that adds its wall time to `into[name]` (only for calls where `when` holds)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if when is not None and not when(*args, **kwargs):
            return fn(*args, **kwargs)
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            into[name] = into.get(name, 0.0) + time.perf_counter() - start

    return wrapper


def _checksum(model: torch.nn.Module) -> float:
    with torch.no_grad():
        return float(sum(p.double().abs().sum() for p in model.parameters()))


def main() -> None:
    side, model_dir, train, work = sys.argv[1:5]
    torch.set_num_threads(THREADS)
    chan = Channel()
    Path(work).mkdir(parents=True, exist_ok=True)
    (run_npu_rl if side == "npu_rl" else run_trl)(model_dir, train, Path(work), chan)


if __name__ == "__main__":
    main()
