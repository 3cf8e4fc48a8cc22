"""Evaluate one model on several benchmarks at once and print one table, as SimpleRL-reason reports.

    python -m npu_rl.tools.preprocess_benchmarks --output-dir data/benchmarks --input math500=... aime24=...
    python -m npu_rl.eval --model <model> --suite data/benchmarks --n 8 --temperature 0.6 --k 1,8

`--suite` takes folders (each `*.parquet` inside is one benchmark, named by its file stem), parquet
files (named by stem), or `NAME=FILE` pairs. The model, tokenizer, rollout engine and grader are
loaded once (`npu_rl.eval.Evaluator`); each benchmark is evaluated with the same sampling and
seed, its generations and summary written to `<output-dir>/<benchmark>/`, and the suite's table to
`<output-dir>/suite.summary.json`. Rows: one per benchmark with mean@N, pass@k and maj@N (n > 1),
then `average`, the unweighted mean over benchmarks (SimpleRL-reason's "Avg." column), so a
30-problem AIME counts as much as the 1,319 GSM8K problems.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from npu_rl.eval import Evaluator, evaluator_from_args, sampling_from_args
from npu_rl.eval_metrics import default_ks
from npu_rl.evaluation import EvalConfig
from npu_rl.progress import Progress


class SuiteError(ValueError):
    """A --suite item that is not a benchmark file or folder."""


def resolve_suite(items: Sequence[str | Path]) -> dict[str, Path]:
    """{benchmark name: parquet file} from folders, files and NAME=FILE items, in the given order."""
    suite: dict[str, Path] = {}
    for item in map(str, items):
        name, sep, path_text = item.partition("=")
        path = Path(path_text if sep else item).expanduser()
        if path.is_dir():
            files = sorted(path.glob("*.parquet"))
            if not files:
                raise SuiteError(
                    f"--suite {item}: no *.parquet files in this folder (see npu_rl/tools/preprocess_benchmarks.py)"
                )
            found = {f.stem: f for f in files}
        elif path.is_file() and path.suffix == ".parquet":
            found = {name if sep else path.stem: path}
        else:
            raise SuiteError(f"--suite {item}: expected a folder of parquet files, a .parquet file, or NAME=FILE")
        for bench, file in found.items():
            if bench in suite and suite[bench] != file:
                raise SuiteError(f"--suite: benchmark name {bench!r} given twice ({suite[bench]} and {file})")
            suite[bench] = file
    if not suite:
        raise SuiteError("--suite: no benchmarks given")
    return suite


def _rows(path: Path, max_samples: int) -> int:
    rows = pq.ParquetFile(path).metadata.num_rows
    return rows if max_samples < 0 else min(rows, max_samples)


def run_suite(
    ev: Evaluator,
    suite: dict[str, Path],
    *,
    n: int = 1,
    k: Sequence[int] | None = None,
    output_dir: str | Path | None = None,
    max_samples: int = -1,
    progress: bool = True,
    **sampling: Any,
) -> dict[str, Any]:
    """Evaluate every benchmark with the same settings; {"benchmarks": {name: summary}, "average": ...}.

    `sampling` is passed to `Evaluator.evaluate` (temperature, top_p, max_new_tokens, seed, ...).
    Progress counts prompts over the whole suite, so its ETA covers every remaining benchmark.
    """
    ks = sorted(set(k)) if k else default_ks(n)
    EvalConfig(n, sampling.get("temperature", 0.0)).validate(ks)
    sizes = {name: _rows(path, max_samples) for name, path in suite.items()}
    summaries: dict[str, dict[str, Any]] = {}
    with Progress("eval suite", total=sum(sizes.values()), unit="prompts", enabled=progress) as bar:
        for name, path in suite.items():
            out = None if output_dir is None else Path(output_dir) / name
            summaries[name] = ev.evaluate(
                path, n=n, k=ks, max_samples=max_samples, output_dir=out, verbose=progress, **sampling
            )
            bar.update(sizes[name])
            if progress and not bar.tty:
                print(f"[npu_rl] eval suite: {name} done; {bar.line()}", file=sys.stderr, flush=True)
    result = {"n": n, "k": ks, "benchmarks": summaries, "average": _average(summaries, n, ks)}
    if output_dir is not None:
        path = Path(output_dir) / "suite.summary.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
        result["file"] = str(path)
    return result


def _columns(n: int, ks: Sequence[int]) -> list[str]:
    return [f"mean@{n}", *[f"pass@{k}" for k in ks if k != 1 or n != 1], *([f"maj@{n}"] if n > 1 else [])]


def _average(summaries: dict[str, dict[str, Any]], n: int, ks: Sequence[int]) -> dict[str, float]:
    """Unweighted mean over benchmarks of each metric (and of the mean response length)."""
    keys = [*_columns(n, ks), "response_length/mean"]
    metrics = [s["metrics"] for s in summaries.values() if s["metrics"].get("count")]
    return {
        key: sum(m[key] for m in metrics) / len(metrics) for key in keys if metrics and all(key in m for m in metrics)
    }


def format_suite_table(result: dict[str, Any]) -> str:
    """One row per benchmark and an `average` row; metrics in percent as papers report them."""
    n, ks = result["n"], result["k"]
    cols = _columns(n, ks)
    header = f"{'benchmark':<16} {'count':>6} " + " ".join(f"{c:>8}" for c in cols) + f" {'resp_len':>9}"
    lines = [header, "-" * len(header)]

    def row(label: str, count: str, m: dict[str, Any]) -> str:
        values = " ".join(f"{100 * m[c]:>8.1f}" if c in m else f"{'-':>8}" for c in cols)
        length = m.get("response_length/mean")
        return f"{label[:16]:<16} {count:>6} {values} {'-' if length is None else f'{length:.1f}':>9}"

    for name, summary in result["benchmarks"].items():
        lines.append(row(name, str(summary["num_prompts"]), summary["metrics"]))
    lines.append("-" * len(header))
    lines.append(row("average", "", result["average"]))
    return "\n".join(lines)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """`python -m npu_rl.eval --suite ...` (the arguments are npu_rl.eval's)."""
    ks = [int(x) for x in args.k.split(",") if x.strip()] if args.k else None
    try:
        suite = resolve_suite(args.suite)
        EvalConfig(args.n, args.temperature, max_new_tokens=args.max_new_tokens).validate(ks or [])
    except ValueError as err:
        print(f"npu_rl.eval: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    output_dir = args.output_dir or str(Path("outputs") / "eval" / Path(args.model).resolve().name / "suite")
    with evaluator_from_args(args) as ev:
        result = run_suite(ev, suite, n=args.n, k=ks, output_dir=output_dir, **sampling_from_args(args))
    print(format_suite_table(result))
    print(f"suite summary: {result['file']}")
    return result
