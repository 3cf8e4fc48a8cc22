"""A reward function with a per-call cost (a judge model, a remote verifier), graded per item in the
worker pool (npu_rl's default, each item bounded on its own) and batched (`batched: true`, one call per
step, as TRL calls reward functions), in one run on this machine.

    python bench/reward_batched.py [--responses 256] [--call-ms 50] [--item-ms 0.2] [--workers 2]

The function sleeps `call_ms` per call (the fixed cost: a request, a model forward's launch) plus
`item_ms` per response; both modes grade the same responses and must agree on every score.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import textwrap
import time
from pathlib import Path

from _machine import cpu_model

from npu_rl.config import RewardConfig, WeightedReward
from npu_rl.reward_manager import RewardItem, RewardManager

JUDGE = """
    import os, time

    def judge(prompts, completions, ground_truth, **kwargs):
        time.sleep(float(os.environ["JUDGE_CALL_S"]) + float(os.environ["JUDGE_ITEM_S"]) * len(completions))
        return [float(c.strip().endswith(t)) for c, t in zip(completions, ground_truth)]
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--responses", type=int, default=256)
    parser.add_argument("--call-ms", type=float, default=50.0)
    parser.add_argument("--item-ms", type=float, default=0.2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    os.environ["JUDGE_CALL_S"], os.environ["JUDGE_ITEM_S"] = str(args.call_ms / 1e3), str(args.item_ms / 1e3)
    items = [RewardItem("judge", f"the answer is {i % 7}", str(i % 5), prompt="q") for i in range(args.responses)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "judge.py"
        path.write_text(textwrap.dedent(JUDGE))
        seconds, scores = {}, {}
        for mode, batched, workers in (("per item (pool)", False, args.workers), ("batched", True, 0)):
            cfg = RewardConfig(
                functions=[WeightedReward(name="judge", path=str(path), batched=batched)],
                num_workers=workers,
                timeout_s=5.0,
            )
            with RewardManager(cfg) as manager:
                manager.score(items[:2])  # warm: workers started, the file imported
                start = time.perf_counter()
                scores[mode] = manager.score(items).scores
                seconds[mode] = time.perf_counter() - start
    assert scores["per item (pool)"] == scores["batched"], "the two modes must grade alike"
    print(f"[reward_batched] {args.responses} responses, {args.call_ms} ms per call + {args.item_ms} ms per "
          f"response, {os.cpu_count()} cores of {cpu_model()}")  # fmt: skip
    for mode, value in seconds.items():
        print(f"{mode:16s} {value:8.3f} s")
    print(f"ratio (per item / batched): {seconds['per item (pool)'] / seconds['batched']:.1f}x")


if __name__ == "__main__":
    main()
