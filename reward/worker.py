"""Grading worker process: `python -m reward.worker`, driven by reward.pool over stdin/stdout.

Protocol, one JSON object per line. Parent -> worker: first `{"spec": ScorerSpec}`, then
`{"id": n, "args": [data_source, solution_str, ground_truth, extra_info, prompt]}`. Worker -> parent:
`{"ready": true}` once the reward is built and warm (or `{"fatal": message}`), then
`{"id": n, "result": {...}}` or `{"id": n, "error": traceback}` per item.

The protocol uses a private copy of stdout; file descriptor 1 is pointed at stderr so that a
user's reward function that prints cannot corrupt the channel. The worker exits when its stdin
closes or its parent disappears.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback

from reward.grader import compute_score
from reward.scoring import Scorer, ScorerSpec


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(3)  # orphaned (the trainer died): nobody will read our results


def main() -> None:
    channel = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()

    def send(message: dict) -> None:
        channel.write(json.dumps(message) + "\n")

    first = sys.stdin.readline()
    if not first:
        return
    try:
        scorer = Scorer(ScorerSpec.from_json(json.loads(first)["spec"]), bound_user_code=False)
        compute_score("warmup", "so \\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}")  # import mpmath now
    except Exception as err:
        send({"fatal": f"{type(err).__name__}: {err}"})
        return
    send({"ready": True})
    for line in sys.stdin:
        message = json.loads(line)
        try:
            send({"id": message["id"], "result": scorer(*message["args"])})
        except Exception:
            send({"id": message["id"], "error": traceback.format_exc(limit=8)})


if __name__ == "__main__":
    main()
