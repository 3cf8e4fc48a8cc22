"""The tool demo's held-out measurement, identical for the SFT model and the GRPO-trained model.

Multi-turn evaluation through `npu_rl.eval` with the demo's tools (`Evaluator(tools=...)`: prompts
rendered with the tools' schemas, calls executed by the real calculator, the same rollout code the
trainer uses): greedy accuracy and tool-call rate (responses with at least one executed call), the
accuracy of responses with and without a call, and the same at T=1 (what GRPO samples from).

    python -m npu_rl.tools._tool_eval MODEL --data test.parquet --out-dir DIR --tag after \\
        [--before DIR/before.tool_eval.json]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from npu_rl.cli import entry_point
from npu_rl.config import RewardConfig
from npu_rl.eval import Evaluator
from npu_rl.tools._headroom import before_after_cli
from npu_rl.tools.make_tool_demo import TOOL_CONFIG

K = 4  # samples per prompt at T=1
MAX_NEW_TOKENS = 160  # a call, the tool's answer and the boxed answer take ~110 tokens


def _split_by_tool_use(generations_file: str) -> dict[str, float]:
    """Accuracy of the responses that called a tool and of those that did not, and the call rate."""
    with_call, without = [], []
    with open(generations_file, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            for acc, calls in zip(row["acc"], row["tool_calls"], strict=True):
                (with_call if calls else without).append(bool(acc))
    total = len(with_call) + len(without)
    return {
        "tool_call_rate": len(with_call) / max(1, total),
        "acc_with_call": sum(with_call) / max(1, len(with_call)),
        "acc_without_call": sum(without) / max(1, len(without)),
    }


def measure(model: str | Path, data: str | Path, out_dir: str | Path, tag: str, num_threads: int = 2) -> dict[str, Any]:
    """Greedy and T=1 (n=K) multi-turn evaluation; writes `<out_dir>/<tag>.tool_eval.json`."""
    out_dir = Path(out_dir)
    with Evaluator(
        model,
        num_threads=num_threads,
        batch_size=256,
        max_new_tokens=MAX_NEW_TOKENS,
        reward=RewardConfig(num_workers=0),
        tools=TOOL_CONFIG,
    ) as ev:
        greedy = ev.evaluate(data, output_dir=out_dir, tag=f"{tag}.greedy")
        sampled = ev.evaluate(data, n=K, temperature=1.0, k=[1, K], output_dir=out_dir, tag=f"{tag}.t1")
    result = {"model": str(model), "num_prompts": greedy["num_prompts"]}
    for name, summary in (("greedy", greedy), ("sampled", sampled)):
        result[name] = {
            "acc": summary["accuracy"],
            "length": summary["metrics"]["response_length/mean"],
            **_split_by_tool_use(summary["files"]["generations"]),
        }
    result["sampled"][f"pass@{K}"] = sampled["metrics"][f"pass@{K}"]
    (out_dir / f"{tag}.tool_eval.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def format_result(r: dict[str, Any], label: str) -> str:
    lines = [f"[{label}] {r['model']} on {r['num_prompts']} held-out prompts"]
    for name, title in (("greedy", "greedy: "), ("sampled", f"T=1 x{K}:")):
        m = r[name]
        lines.append(
            f"  {title} acc {m['acc']:.1%}  tool-call rate {m['tool_call_rate']:.1%}  "
            f"(acc with a call {m['acc_with_call']:.1%}, without {m['acc_without_call']:.1%})  "
            f"mean length {m['length']:.1f} tokens"
        )
    return "\n".join(lines)


def format_change(before: dict[str, Any], after: dict[str, Any]) -> str:
    b, a = before["greedy"], after["greedy"]
    return (
        f"held-out greedy accuracy: {b['acc']:.1%} -> {a['acc']:.1%} ({(a['acc'] - b['acc']) * 100:+.1f} points)\n"
        f"tool-call rate: {b['tool_call_rate']:.1%} -> {a['tool_call_rate']:.1%} (greedy), "
        f"{before['sampled']['tool_call_rate']:.1%} -> {after['sampled']['tool_call_rate']:.1%} (T=1)\n"
        f"sampled accuracy (T=1): {before['sampled']['acc']:.1%} -> {after['sampled']['acc']:.1%}"
    )


@entry_point("npu_rl.tools._tool_eval")
def main(argv: list[str] | None = None) -> int:
    return before_after_cli(argv, __doc__, measure, format_result, format_change, ".tool_eval.json")


if __name__ == "__main__":
    raise SystemExit(main())
