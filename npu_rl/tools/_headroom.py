"""The demo's held-out measurement, identical for the base model and the GRPO-trained model.

GRPO can only sharpen what the base already does sometimes, so the demo prints, besides greedy
accuracy, what sampling finds: sampled accuracy at T=1, pass@k, mean response length, and the share
of responses that show their work. All numbers come from `npu_rl.eval` (same grader, same seeds,
same decoding settings every time); this module only picks the settings and formats the result.

    python -m npu_rl.tools._headroom MODEL --data test.parquet --out-dir DIR --tag after \\
        [--before DIR/before.headroom.json]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from npu_rl.cli import entry_point
from npu_rl.config import RewardConfig
from npu_rl.eval import Evaluator
from npu_rl.tools.make_synthetic_math import is_worked

K = 8
MAX_NEW_TOKENS = 96  # a worked solution is ~30 tokens; the cap only stops babbling


def _worked_share(generations_file: str) -> float:
    with open(generations_file, encoding="utf-8") as fh:
        responses = [text for line in fh for text in json.loads(line)["responses"]]
    return sum(map(is_worked, responses)) / max(1, len(responses))


def measure(model: str | Path, data: str | Path, out_dir: str | Path, tag: str, num_threads: int = 2) -> dict[str, Any]:
    """Greedy and T=1 (n=K) evaluation of `model` on `data`; writes `<out_dir>/<tag>.headroom.json`."""
    out_dir = Path(out_dir)
    with Evaluator(model, num_threads=num_threads, batch_size=256, reward=RewardConfig(num_workers=0)) as ev:
        greedy = ev.evaluate(data, max_new_tokens=MAX_NEW_TOKENS, output_dir=out_dir, tag=f"{tag}.greedy")
        sampled = ev.evaluate(
            data, n=K, temperature=1.0, k=[1, K], max_new_tokens=MAX_NEW_TOKENS, output_dir=out_dir, tag=f"{tag}.t1"
        )
    result = {
        "model": str(model),
        "greedy_acc": greedy["accuracy"],
        "greedy_len": greedy["metrics"]["response_length/mean"],
        "greedy_worked": _worked_share(greedy["files"]["generations"]),
        "sampled_acc": sampled["accuracy"],
        f"pass@{K}": sampled["metrics"][f"pass@{K}"],
        "sampled_len": sampled["metrics"]["response_length/mean"],
        "sampled_worked": _worked_share(sampled["files"]["generations"]),
        "num_prompts": greedy["num_prompts"],
        "generations": [greedy["files"]["generations"], sampled["files"]["generations"]],
    }
    (out_dir / f"{tag}.headroom.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def format_result(r: dict[str, Any], label: str) -> str:
    return (
        f"[{label}] {r['model']} on {r['num_prompts']} held-out prompts\n"
        f"  greedy:  acc {r['greedy_acc']:.1%}  mean length {r['greedy_len']:.1f} tokens  "
        f"worked-style {r['greedy_worked']:.0%}\n"
        f"  T=1 x{K}: acc {r['sampled_acc']:.1%}  pass@{K} {r[f'pass@{K}']:.1%}  "
        f"mean length {r['sampled_len']:.1f} tokens  worked-style {r['sampled_worked']:.0%}"
    )


def format_change(before: dict[str, Any], after: dict[str, Any]) -> str:
    gain = after["greedy_acc"] - before["greedy_acc"]
    return (
        f"held-out greedy accuracy: {before['greedy_acc']:.1%} -> {after['greedy_acc']:.1%} "
        f"({gain * 100:+.1f} points)\n"
        f"greedy mean response length: {before['greedy_len']:.1f} -> {after['greedy_len']:.1f} tokens\n"
        f"sampled accuracy (T=1): {before['sampled_acc']:.1%} -> {after['sampled_acc']:.1%}, "
        f"pass@{K}: {before[f'pass@{K}']:.1%} -> {after[f'pass@{K}']:.1%}"
    )


def before_after_cli(
    argv: list[str] | None,
    doc: str,
    measure: Callable[[str, str, str, str, int], dict[str, Any]],
    format_result: Callable[[dict[str, Any], str], str],
    format_change: Callable[[dict[str, Any], dict[str, Any]], str],
    suffix: str,
) -> int:
    """The demo evaluators' command line: measure a model, print it, and the change from `--before`
    (an earlier result file ending in `suffix`, read first so a wrong path fails before the work)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("model", help="HF folder or npu_rl checkpoint (root or global_step_N)")
    parser.add_argument("--data", required=True, help="held-out parquet")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--tag", required=True, help="e.g. before / after")
    parser.add_argument("--before", help=f"an earlier {suffix} to compare against")
    parser.add_argument("--num-threads", type=int, default=2)
    args = parser.parse_args(argv)
    before = json.loads(Path(args.before).read_text(encoding="utf-8")) if args.before else None  # fail early
    result = measure(args.model, args.data, args.out_dir, args.tag, args.num_threads)
    if before is not None:
        print(format_result(before, "before"))
    print(format_result(result, args.tag))
    if before is not None:
        print(format_change(before, result))
    return 0


@entry_point("npu_rl.tools._headroom")
def main(argv: list[str] | None = None) -> int:
    return before_after_cli(argv, __doc__, measure, format_result, format_change, ".headroom.json")


if __name__ == "__main__":
    raise SystemExit(main())
