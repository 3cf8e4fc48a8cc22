"""Evaluate a model on held-out parquet with the same reward package as training, graded leniently.

    python -m npu_rl.eval --model <HF folder | checkpoint dir> --data test.parquet \\
        [--n 8 --temperature 1.0 --k 1,4,8 --rollout hf|vllm --max-new-tokens 1024 --output-dir DIR]
        [--grader builtin|math_verify]

Reports accuracy (mean@N) per data_source, and per level / subject when extra_info has them, the
unbiased pass@k, maj@N and the mean response length; writes every generation to
`<output-dir>/<tag>.generations.jsonl` and the numbers to `<output-dir>/<tag>.summary.json`.

Python API, e.g. the demo's before/after numbers from one loaded model:

    with Evaluator("assets/tiny-base") as ev:
        greedy = ev.evaluate(["test.parquet"])                                  # n=1, T=0
        sampled = ev.evaluate(["test.parquet"], n=8, temperature=1.0)
    greedy["accuracy"], sampled["metrics"]["pass@8"], sampled["metrics"]["response_length/mean"]

`--model` takes a Hugging Face folder, a `global_step_N` checkpoint directory (merged on the fly
into a temporary folder), or a checkpoint root (its latest complete step is used).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from npu_rl import device
from npu_rl.checkpoint import CheckpointManager, is_complete
from npu_rl.cli import UserError, entry_point
from npu_rl.compute import build_plan
from npu_rl.config import Config, DataConfig, RewardConfig, WeightedReward
from npu_rl.data import load_prompts
from npu_rl.distributed import DistInfo
from npu_rl.eval_metrics import default_ks, format_table, summarize
from npu_rl.evaluation import EvalConfig, evaluate_records
from npu_rl.merge import merge_checkpoint
from npu_rl.model import load_model, load_tokenizer
from npu_rl.reward_manager import RewardManager
from npu_rl.rollout import build_rollout, tool_schemas
from reward.math_verify_adapter import INSTALL_HINT as MATH_VERIFY_HINT
from reward.math_verify_adapter import available as math_verify_available


def resolve_model_dir(path: str | Path) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """A loadable HF folder for `path`, merging a sharded checkpoint into a temporary folder if needed.

    The temporary folder (second item) must stay alive while the model is in use (vLLM reads it).
    """
    p = Path(path)
    if (p / "config.json").is_file() and [*p.glob("*.safetensors"), *p.glob("*.bin")]:
        return p, None
    if p.name == "actor":
        p = p.parent
    if not is_complete(p):  # perhaps a checkpoint root: take its newest complete step
        p = CheckpointManager(p).latest() or p
    if not is_complete(p):
        raise FileNotFoundError(
            f"--model {path}: neither a Hugging Face model folder (config.json + weights) nor a complete "
            "npu_rl checkpoint (<root>/global_step_N with actor/model/.metadata and actor/metadata.json)"
        )
    tmp = tempfile.TemporaryDirectory(prefix="npu_rl_eval_")
    target = Path(tmp.name) / "model"
    merge_checkpoint(p / "actor", target)
    return target, tmp


class Evaluator:
    """Loads the model, tokenizer, rollout engine and lenient grader once; evaluates any number of times.

    `max_prompt_length` and `max_new_tokens` size the rollout engine (vLLM's `max_model_len`): an
    evaluation may not ask for more new tokens than the engine was built for.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        rollout: str = "hf",
        device_name: str = "auto",
        dtype: str = "auto",
        batch_size: int = 64,
        max_prompt_length: int = 1024,
        max_new_tokens: int = 1024,
        reward: RewardConfig | None = None,
        num_threads: int = 0,
        tools: str | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        fp32_lm_head: bool = False,
    ) -> None:
        self.model_arg = str(model)
        self.model_dir, self._tmp = resolve_model_dir(model)
        self.acc = device.select(device_name)
        if self.acc.type == "cpu":
            torch.set_num_threads(device.cpu_threads(num_threads))
        cfg = Config()
        cfg.model.path, cfg.model.dtype, cfg.model.fp32_lm_head = str(self.model_dir), dtype, fp32_lm_head
        cfg.rollout.name, cfg.rollout.micro_batch_size = rollout, batch_size
        cfg.data.max_prompt_length, cfg.rollout.max_new_tokens = max_prompt_length, max_new_tokens
        cfg.data.apply_chat_template_kwargs = dict(chat_template_kwargs or {})  # e.g. Qwen3's enable_thinking
        if tools:  # multi-turn: prompts rendered with the tools' schemas, calls executed (docs/multi_turn.md)
            cfg.rollout.multi_turn.enable, cfg.rollout.multi_turn.tool_config_path = True, tools
            cfg.rollout.multi_turn.check("rollout.multi_turn")
        self.cfg = cfg
        self.tools = tool_schemas(cfg)
        self.batch_size = batch_size
        self.data_cfg = DataConfig(
            max_prompt_length=max_prompt_length, apply_chat_template_kwargs=cfg.data.apply_chat_template_kwargs
        )
        self.tokenizer = load_tokenizer(cfg.model)
        net, plan = None, None
        if rollout == "hf":
            net = load_model(cfg.model, self.acc, trainable=False).to(self.acc.torch_device())
            plan = build_plan(net, self.acc, decoder=cfg.rollout.decoder)
        self.engine = build_rollout(cfg, net, self.tokenizer, self.acc, DistInfo(), plan)
        self.grader = RewardManager(reward or RewardConfig(), strict=False)

    def evaluate(
        self,
        data_files: str | Path | Sequence[str | Path],
        *,
        n: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = -1,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        max_new_tokens: int | None = None,
        k: Sequence[int] | None = None,
        seed: int = 0,
        max_samples: int = -1,
        output_dir: str | Path | None = None,
        tag: str | None = None,
        verbose: bool = False,
    ) -> dict[str, Any]:
        """Generate, grade and summarize; returns the summary dict (also written when `output_dir` is set).

        `max_new_tokens` defaults to (and may not exceed) what the evaluator was built with.
        """
        limit = self.cfg.rollout.max_new_tokens
        if max_new_tokens is not None and max_new_tokens > limit:
            raise ValueError(f"max_new_tokens {max_new_tokens} exceeds the {limit} this evaluator was built for")
        ecfg = EvalConfig(
            n, temperature, top_p, top_k, max_new_tokens or limit, self.batch_size, seed, min_p, repetition_penalty
        )
        ks = sorted(set(k)) if k else default_ks(n)
        ecfg.validate(ks)
        files = [data_files] if isinstance(data_files, (str, Path)) else list(data_files)
        dataset = load_prompts(files, self.tokenizer, self.data_cfg, max_samples=max_samples, tools=self.tools)
        start = time.perf_counter()
        graded = evaluate_records(self.engine, dataset.records, self.tokenizer, self.grader, ecfg, progress=verbose)
        summary = {
            "model": self.model_arg,
            "data": [str(f) for f in files],
            "rollout": self.cfg.rollout.name,
            "sampling": {**asdict(ecfg.sampling), "seed": seed, "k": ks},
            "num_prompts": len(graded),
            "num_filtered_overlong": dataset.num_filtered,
            **summarize([g.result() for g in graded], n, ks),
            "time_s": time.perf_counter() - start,
        }
        summary["accuracy"] = summary["metrics"].get(f"mean@{n}", 0.0)
        if self.tools:
            calls = [c for g in graded for c in g.tool_calls or []]
            summary["metrics"]["tool/call_rate"] = sum(c > 0 for c in calls) / max(1, len(calls))
            summary["metrics"]["tool/calls/mean"] = sum(calls) / max(1, len(calls))
        if output_dir is not None:
            lines = [g.line() for g in graded]
            summary["files"] = write_outputs(Path(output_dir), tag or f"n{n}_t{temperature:g}", lines, summary)
        return summary

    def close(self) -> None:
        self.grader.close()
        self.engine.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_outputs(out: Path, tag: str, generations: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    gen_path, sum_path = out / f"{tag}.generations.jsonl", out / f"{tag}.summary.json"
    with open(gen_path, "w", encoding="utf-8") as fh:
        for line in generations:
            fh.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
    files = {"generations": str(gen_path), "summary": str(sum_path)}
    sum_path.write_text(json.dumps({**summary, "files": files}, indent=2, default=str) + "\n", encoding="utf-8")
    return files


def evaluate(model: str | Path, data_files: str | Path | Sequence[str | Path], **kwargs: Any) -> dict[str, Any]:
    """One-shot `Evaluator(model, ...).evaluate(data_files, ...)`; constructor keywords are split off."""
    init_keys = (
        "rollout", "device_name", "dtype", "batch_size", "max_prompt_length", "reward", "num_threads", "tools",
        "chat_template_kwargs", "fp32_lm_head",
    )  # fmt: skip
    init = {key: kwargs.pop(key) for key in init_keys if key in kwargs}
    if kwargs.get("max_new_tokens") is not None:  # it sizes the engine as well as the evaluation
        init["max_new_tokens"] = kwargs["max_new_tokens"]
    with Evaluator(model, **init) as ev:
        return ev.evaluate(data_files, **kwargs)


def json_object(text: str) -> dict[str, Any]:
    """argparse type: a JSON object (a bad value is argparse's usage error, exit code 2)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON ({err.msg}): {text!r}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object such as '{{\"enable_thinking\": false}}', got {text!r}"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m npu_rl.eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="HF folder, global_step_N checkpoint dir, or checkpoint root")
    p.add_argument("--data", nargs="+", help="parquet file(s) in verl's row schema")
    p.add_argument("--suite", nargs="+", help="benchmarks evaluated one by one into one table (npu_rl.eval_suite)")
    p.add_argument("--n", type=int, default=1, help="samples per prompt (default 1)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=-1)
    p.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min-p x the top probability (0: off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="as vLLM's and transformers' (1: off)")
    p.add_argument("--k", default=None, help="comma-separated k for pass@k (default 1,2,4,..,n)")
    p.add_argument("--max-new-tokens", type=int, default=1024, help="1024, as the Ascend sample's OpenCompass run")
    p.add_argument(
        "--grader",
        choices=["builtin", "math_verify"],
        default="builtin",
        help="builtin: our lenient grader (default); math_verify: correctness by math-verify (pip install "
        "math-verify), to put a number next to harnesses that use it",
    )
    p.add_argument("--max-prompt-length", type=int, default=1024)
    p.add_argument(
        "--chat-template-kwargs",
        type=json_object,
        default=None,
        help="JSON keywords for the chat template, e.g. '{\"enable_thinking\": false}' for Qwen3",
    )
    p.add_argument("--max-samples", type=int, default=-1, help="evaluate only the first N prompts")
    p.add_argument("--batch-size", type=int, default=64, help="prompts per generate call")
    p.add_argument("--rollout", choices=["hf", "vllm"], default="hf")
    p.add_argument(
        "--tools",
        default=None,
        help="tool config YAML or packaged name (e.g. tools_calculator): multi-turn evaluation with tool calls",
    )
    p.add_argument("--device", default="auto", choices=["auto", "npu", "cuda", "cpu"])
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument(
        "--fp32-lm-head",
        action="store_true",
        help="the LM head's product in fp32 (hf and vLLM), as training with model.fp32_lm_head=true decodes",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-threads", type=int, default=0, help="torch CPU threads (0 = the cores this process may use)")
    p.add_argument("--reward-workers", type=int, default=2, help="grading processes (0 = in-process)")
    p.add_argument("--output-dir", default=None, help="default: outputs/eval/<model folder name>")
    p.add_argument("--tag", default=None, help="file name prefix (default n<N>_t<T>)")
    return p


def evaluator_from_args(args: argparse.Namespace) -> Evaluator:
    """The evaluator the command line describes; its engine is sized by --max-prompt-length and
    --max-new-tokens (vLLM's max_model_len is their sum, within the model's positions)."""
    return Evaluator(
        args.model,
        rollout=args.rollout,
        device_name=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        max_prompt_length=args.max_prompt_length,
        max_new_tokens=args.max_new_tokens,
        reward=grader_config(args.grader, args.reward_workers),
        num_threads=args.num_threads,
        tools=args.tools,
        chat_template_kwargs=args.chat_template_kwargs,
        fp32_lm_head=args.fp32_lm_head,
    )


def grader_config(grader: str, workers: int) -> RewardConfig:
    """The lenient built-in grader, or math-verify's verdict alone (`--grader math_verify`)."""
    reward = RewardConfig(num_workers=workers)
    if grader == "math_verify":
        reward.functions = [WeightedReward(name="math_verify")]
    return reward


def sampling_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """`Evaluator.evaluate` keywords from the command line, other than n, k and the output folder."""
    return {
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "min_p": args.min_p,
        "repetition_penalty": args.repetition_penalty,
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
        "max_samples": args.max_samples,
        "tag": args.tag,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Evaluate and return the summary; `cli` is the same with input mistakes reported as one message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.data) == bool(args.suite):
        parser.error("give either --data or --suite")
    if args.grader == "math_verify" and not math_verify_available():
        raise UserError(f"--grader math_verify needs math-verify: {MATH_VERIFY_HINT}")
    if args.suite:
        from npu_rl.eval_suite import main as suite_main  # several benchmarks, one table

        return suite_main(args)
    try:
        ks = [int(x) for x in args.k.split(",") if x.strip()] if args.k else None
    except ValueError as err:
        raise UserError(f"--k {args.k}: expected comma-separated integers such as 1,4,8") from err
    try:
        EvalConfig(args.n, args.temperature, max_new_tokens=args.max_new_tokens).validate(ks or [])
    except ValueError as err:
        raise UserError(str(err)) from err
    output_dir = args.output_dir or str(Path("outputs") / "eval" / Path(args.model).resolve().name)
    with evaluator_from_args(args) as ev:
        summary = ev.evaluate(
            args.data, n=args.n, k=ks, output_dir=output_dir, verbose=True, **sampling_from_args(args)
        )
    print(format_table(summary, args.n, summary["sampling"]["k"]))
    print(f"generations: {summary['files']['generations']}\nsummary:     {summary['files']['summary']}")
    return summary


# The command line (and console script): input mistakes end as one message and exit code 2.
cli = entry_point("npu_rl.eval")(main)

if __name__ == "__main__":
    sys.exit(cli())
