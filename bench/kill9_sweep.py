"""Kill -9 sweep: does a run killed at any moment resume to exactly the uninterrupted result?

    python bench/kill9_sweep.py --n 20 --seed 0 --steps 6 --workdir /tmp/npu_rl_kill9

It builds the tests' tiny model and synthetic data (tools/), runs `python -m npu_rl.train` once
uninterrupted (a checkpoint every step, validation every 2 steps), then N times: starts the same run
in a fresh directory, SIGKILLs it after a seeded random delay between the moment the reference run
took its directory lock (imports done) and its exit, and runs the same command again to the end.
A trial passes when the final weights are bitwise equal to the reference's, metrics.jsonl holds the
same rows (steps 0..S once each, every metric equal except time and memory ones), and the checkpoint
folder holds no debris. The kill points fall anywhere: model loading, rollout, update, logging, the
save and its renames.

Time-based kill points make the sweep's figure meaningful on a quiet machine only; on a loaded one
the runs slow down unevenly. The run configuration is tests/_train_proc.py's.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "tests"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from _train_proc import final_weights, metrics, stable, start, train, train_args  # noqa: E402

from npu_rl.tools import make_synthetic_math, make_tiny_model  # noqa: E402

ALLOWED_IN_CKPT = {"latest_checkpointed_iteration.txt", ".npu_rl.lock"}


def build_assets(workdir: Path) -> tuple[Path, dict]:
    """The tests' tiny model (seed 0) and synthetic splits (48 / 16 rows), built once under workdir."""
    model_dir = workdir / "assets" / "model"
    if not (model_dir / "config.json").exists():
        tokenizer = make_tiny_model.build_tokenizer(seed=0)
        model = make_tiny_model.random_model(tokenizer, size="test", seed=0)
        make_tiny_model.save_model_dir(model, tokenizer, model_dir)
    data = {
        "train": workdir / "assets" / "data" / "train.parquet",
        "test": workdir / "assets" / "data" / "test.parquet",
    }
    if not data["train"].exists():
        data = make_synthetic_math.write_splits(workdir / "assets" / "data", n_train=48, n_test=16, seed=0)
    return model_dir, data


def debris(run_dir: Path) -> list[str]:
    return [
        p.name
        for p in (run_dir / "ckpt").iterdir()
        if p.name not in ALLOWED_IN_CKPT and not p.name.startswith("global_step_")
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20, help="number of kill points")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill delays")
    parser.add_argument("--steps", type=int, default=6, help="training steps per run (a checkpoint each)")
    parser.add_argument("--workdir", default="/tmp/npu_rl_kill9", help="scratch folder (runs are deleted when passed)")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir, data = build_assets(workdir)

    reference = workdir / "reference"
    shutil.rmtree(reference, ignore_errors=True)
    began = time.monotonic()
    proc = start(train_args(reference, model_dir, data, steps=args.steps), workdir / "reference.log")
    opened = None  # when the run took its lock: imports are done, the run's own work begins
    while proc.poll() is None:
        if opened is None and (reference / "logs" / ".npu_rl.lock").exists():
            opened = time.monotonic() - began
        time.sleep(0.02)
    wall = time.monotonic() - began
    if proc.returncode != 0 or opened is None:
        print((workdir / "reference.log").read_text()[-4000:], file=sys.stderr)
        return 1
    ref_rows, ref_weights = stable(metrics(reference)), final_weights(reference, args.steps)
    print(
        f"reference: {args.steps} steps, lock taken at {opened:.1f} s, exit at {wall:.1f} s; "
        f"killing {args.n} runs at uniform random times in between"
    )

    rng = random.Random(args.seed)
    # logged: last step in metrics.jsonl at the kill; marker: latest checkpoint step at the kill
    print(f"{'trial':>5} {'kill at s':>9} {'logged':>6} {'marker':>6}  {'metrics':>8} {'weights':>8} {'debris':>6}")
    passed = killed = 0
    for trial in range(args.n):
        run_dir = workdir / f"trial_{trial:02d}"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_args = train_args(run_dir, model_dir, data, steps=args.steps)
        delay = rng.uniform(opened, wall)
        proc = start(run_args, run_dir / "killed.log")
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        was_killed = proc.wait() == -signal.SIGKILL
        killed += was_killed
        logged = max((r["step"] for r in metrics(run_dir)), default=-1)
        marker = run_dir / "ckpt" / "latest_checkpointed_iteration.txt"
        marked = marker.read_text().strip() if marker.exists() else "-"
        resumed = train(run_args, timeout=3600)
        if resumed.returncode != 0:
            print(f"{trial:>5} {delay:>9.2f} resume failed:\n{resumed.stderr[-2000:]}")
            continue
        same_rows = stable(metrics(run_dir)) == ref_rows
        weights = final_weights(run_dir, args.steps)
        same_weights = weights.keys() == ref_weights.keys() and all(
            ref_weights[k].equal(weights[k]) for k in ref_weights
        )
        left = debris(run_dir)
        ok = same_rows and same_weights and not left
        passed += ok and was_killed
        where = f"{logged:>6} {marked:>6}" if was_killed else f"exited {proc.returncode}"
        row = f"{trial:>5} {delay:>9.2f} {where:>13}  {'same' if same_rows else 'DIFFER':>8} "
        print(row + f"{'equal' if same_weights else 'DIFFER':>8} {len(left):>6}", flush=True)
        if ok:
            shutil.rmtree(run_dir)
    print(
        f"{passed} of {killed} killed runs resumed with identical metrics.jsonl and bitwise-equal final weights "
        f"({args.n - killed} of {args.n} runs ended before their kill time and are not counted)"
    )
    return 0 if killed and passed == killed else 1


if __name__ == "__main__":
    sys.exit(main())
