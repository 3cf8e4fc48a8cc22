"""Evaluate a model on held-out parquet with the same reward package as training, graded leniently.

    python -m npu_rl.eval --model <HF folder | checkpoint dir> --data test.parquet \\
        [--n 8 --temperature 1.0 --k 1,4,8 --rollout hf|vllm --max-new-tokens 1024 --output-dir DIR]

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
from npu_rl.config import Config, DataConfig, RewardConfig
from npu_rl.data import load_prompts
from npu_rl.distributed import DistInfo
from npu_rl.eval_metrics import PromptResult, default_ks, format_table, summarize
from npu_rl.merge import merge_checkpoint
from npu_rl.model import load_model, load_tokenizer
from npu_rl.reward_manager import RewardItem, RewardManager
from npu_rl.rollout import SamplingParams, build_rollout
from npu_rl.trainer import prompt_seed
from reward.extract import extract_answer
from reward.grader import route
from reward.normalize import normalize_answer


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


def check_sampling(n: int, temperature: float, ks: Sequence[int]) -> None:
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    if temperature <= 0 and n > 1:
        raise ValueError("greedy decoding (--temperature 0) gives n identical samples; use --temperature > 0")
    bad = [k for k in ks if not 1 <= k <= n]
    if bad:
        raise ValueError(f"--k values must be between 1 and --n ({n}); got {bad}")


class Evaluator:
    """Loads the model, tokenizer, rollout engine and lenient grader once; evaluates any number of times."""

    def __init__(
        self,
        model: str | Path,
        *,
        rollout: str = "hf",
        device_name: str = "auto",
        dtype: str = "auto",
        batch_size: int = 64,
        max_prompt_length: int = 1024,
        reward: RewardConfig | None = None,
        num_threads: int = 0,
    ) -> None:
        self.model_arg = str(model)
        self.model_dir, self._tmp = resolve_model_dir(model)
        self.acc = device.select(device_name)
        if self.acc.type == "cpu" and num_threads > 0:
            torch.set_num_threads(num_threads)
        cfg = Config()
        cfg.model.path, cfg.model.dtype = str(self.model_dir), dtype
        cfg.rollout.name, cfg.rollout.micro_batch_size = rollout, batch_size
        self.cfg = cfg
        self.batch_size = batch_size
        self.data_cfg = DataConfig(max_prompt_length=max_prompt_length)
        self.tokenizer = load_tokenizer(cfg.model)
        net = None
        if rollout == "hf":
            net = load_model(cfg.model, self.acc, trainable=False).to(self.acc.torch_device())
        self.engine = build_rollout(cfg, net, self.tokenizer, self.acc, DistInfo())
        self.grader = RewardManager(reward or RewardConfig(), strict=False)

    def evaluate(
        self,
        data_files: str | Path | Sequence[str | Path],
        *,
        n: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = -1,
        max_new_tokens: int = 512,
        k: Sequence[int] | None = None,
        seed: int = 0,
        max_samples: int = -1,
        output_dir: str | Path | None = None,
        tag: str | None = None,
        verbose: bool = False,
    ) -> dict[str, Any]:
        """Generate, grade and summarize; returns the summary dict (also written when `output_dir` is set)."""
        ks = sorted(set(k)) if k else default_ks(n)
        check_sampling(n, temperature, ks)
        files = [data_files] if isinstance(data_files, (str, Path)) else list(data_files)
        dataset = load_prompts(files, self.tokenizer, self.data_cfg, max_samples=max_samples)
        params = SamplingParams(n, temperature, top_p, top_k, max_new_tokens)
        start = time.perf_counter()
        results: list[PromptResult] = []
        generations: list[dict[str, Any]] = []
        for batch in dataset.batches(self.batch_size):
            seeds = [prompt_seed(seed, 0, r.index, validation=True) for r in batch]
            out = self.engine.generate([r.prompt_ids for r in batch], params, seeds=seeds)
            lengths, texts = out.lengths.tolist(), out.decode(self.tokenizer)
            for i, rec in enumerate(batch):
                rows = range(i * n, (i + 1) * n)
                result, line = self._grade(rec, [texts[j] for j in rows], [lengths[j] for j in rows],
                                           [out.finish_reasons[j] for j in rows])  # fmt: skip
                results.append(result)
                generations.append(line)
            if verbose:
                print(f"[npu_rl.eval] {len(results)}/{len(dataset)} prompts", file=sys.stderr, flush=True)

        summary = {
            "model": self.model_arg,
            "data": [str(f) for f in files],
            "rollout": self.cfg.rollout.name,
            "sampling": {**asdict(params), "seed": seed, "k": ks},
            "num_prompts": len(results),
            "num_filtered_overlong": dataset.num_filtered,
            **summarize(results, n, ks),
            "time_s": time.perf_counter() - start,
        }
        summary["accuracy"] = summary["metrics"].get(f"mean@{n}", 0.0)
        if output_dir is not None:
            summary["files"] = write_outputs(Path(output_dir), tag or f"n{n}_t{temperature:g}", generations, summary)
        return summary

    def _grade(
        self, rec: Any, texts: list[str], lengths: list[int], finish: list[str]
    ) -> tuple[PromptResult, dict[str, Any]]:
        """Grade one prompt's samples and extract their answers for the vote."""
        truncated = [f == "length" for f in finish]
        items = [
            RewardItem(rec.data_source, text, rec.ground_truth, rec.extra_info, cut)
            for text, cut in zip(texts, truncated, strict=True)
        ]
        graded = self.grader.score(items)
        form = route(rec.data_source, rec.extra_info)[1]
        answers: list[str | None] = []
        for text, cut in zip(texts, truncated, strict=True):
            found = None if cut else extract_answer(text, requested=form, strict=False)
            answers.append(normalize_answer(found.answer).replace(" ", "") if found else None)
        result = PromptResult(rec.data_source, rec.extra_info, list(graded.acc), answers, lengths, truncated)
        line = {
            "index": rec.index,
            "data_source": rec.data_source,
            "prompt": rec.prompt_text,
            "ground_truth": rec.ground_truth,
            "extra_info": rec.extra_info,
            "responses": texts,
            "answers": answers,
            "acc": list(graded.acc),
            "scores": list(graded.scores),
            "lengths": lengths,
            "finish_reasons": finish,
        }
        return result, line

    def close(self) -> None:
        self.grader.close()
        closer = getattr(self.engine, "close", None)
        if closer is not None:
            closer()
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
    init_keys = ("rollout", "device_name", "dtype", "batch_size", "max_prompt_length", "reward", "num_threads")
    init = {key: kwargs.pop(key) for key in init_keys if key in kwargs}
    with Evaluator(model, **init) as ev:
        return ev.evaluate(data_files, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m npu_rl.eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="HF folder, global_step_N checkpoint dir, or checkpoint root")
    p.add_argument("--data", required=True, nargs="+", help="parquet file(s) in verl's row schema")
    p.add_argument("--n", type=int, default=1, help="samples per prompt (default 1)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=-1)
    p.add_argument("--k", default=None, help="comma-separated k for pass@k (default 1,2,4,..,n)")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--max-prompt-length", type=int, default=1024)
    p.add_argument("--max-samples", type=int, default=-1, help="evaluate only the first N prompts")
    p.add_argument("--batch-size", type=int, default=64, help="prompts per generate call")
    p.add_argument("--rollout", choices=["hf", "vllm"], default="hf")
    p.add_argument("--device", default="auto", choices=["auto", "npu", "cuda", "cpu"])
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--reward-workers", type=int, default=2, help="grading processes (0 = in-process)")
    p.add_argument("--output-dir", default=None, help="default: outputs/eval/<model folder name>")
    p.add_argument("--tag", default=None, help="file name prefix (default n<N>_t<T>)")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Evaluate and return the summary; `cli` is the same with input mistakes reported as one message."""
    args = build_parser().parse_args(argv)
    try:
        ks = [int(x) for x in args.k.split(",") if x.strip()] if args.k else None
    except ValueError as err:
        raise UserError(f"--k {args.k}: expected comma-separated integers such as 1,4,8") from err
    try:
        check_sampling(args.n, args.temperature, ks or [])
    except ValueError as err:
        raise UserError(str(err)) from err
    output_dir = args.output_dir or str(Path("outputs") / "eval" / Path(args.model).resolve().name)
    with Evaluator(
        args.model,
        rollout=args.rollout,
        device_name=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        max_prompt_length=args.max_prompt_length,
        reward=RewardConfig(num_workers=args.reward_workers),
        num_threads=args.num_threads,
    ) as ev:
        summary = ev.evaluate(
            args.data,
            n=args.n,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            max_new_tokens=args.max_new_tokens,
            k=ks,
            seed=args.seed,
            max_samples=args.max_samples,
            output_dir=output_dir,
            tag=args.tag,
            verbose=True,
        )
    print(format_table(summary, args.n, summary["sampling"]["k"]))
    print(f"generations: {summary['files']['generations']}\nsummary:     {summary['files']['summary']}")
    return summary


# The command line (and console script): input mistakes end as one message and exit code 2.
cli = entry_point("npu_rl.eval")(main)

if __name__ == "__main__":
    sys.exit(cli())
