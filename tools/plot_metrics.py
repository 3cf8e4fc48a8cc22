"""Plot a run's health curves from its metrics.jsonl into one PNG.

    python tools/plot_metrics.py outputs/<project>/<experiment> [--output curves.png --width 1500 --height 900]

Panels: reward and validation accuracy, policy entropy, KL (kl_loss and ppo_kl), clip fraction,
response length, gradient norm. Read together they show the usual failure modes: entropy falling
to ~0 with flat reward (collapse), reward rising while validation accuracy does not and length
exploding or shrinking (reward hacking), KL or clip fraction growing without bound (too large a step).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

from npu_rl.cli import UserError, entry_point

# (title, [(regex over metric names, line style)])
PANELS: list[tuple[str, list[tuple[str, str]]]] = [
    (
        "reward / accuracy",
        [(r"critic/score/mean", "-"), (r"reward/acc/mean", "--"), (r"val-core/.+/acc/mean@\d+", "o-")],
    ),
    ("entropy", [(r"actor/entropy", "-")]),
    ("KL", [(r"actor/kl_loss", "-"), (r"actor/ppo_kl", "--")]),
    ("clip fraction", [(r"actor/pg_clipfrac", "-"), (r"actor/pg_clipfrac_lower", "--")]),
    ("response length", [(r"response_length/mean", "-"), (r"response_length/max", ":")]),
    ("grad norm", [(r"actor/grad_norm", "-")]),
]


def load_series(path: Path) -> dict[str, list[tuple[int, float]]]:
    """{metric: [(step, value)]} from metrics.jsonl; nulls (NaN) and non-numbers are left out."""
    series: dict[str, list[tuple[int, float]]] = {}
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: line {line_no} is not JSON ({err})") from err
        step = row.get("step")
        if not isinstance(step, int):
            raise UserError(f"{path}: line {line_no} has no integer 'step'")
        for key, value in row.items():
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if key != "step" and numeric and math.isfinite(value):
                series.setdefault(key, []).append((step, float(value)))
    return series


def plot(series: dict[str, list[tuple[int, float]]], output: Path, width: int, height: int, title: str) -> Path:
    import matplotlib  # optional (the dev extra); imported here so a missing one is reported, not a traceback

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    dpi = 100
    fig, axes = plt.subplots(2, 3, figsize=(width / dpi, height / dpi), dpi=dpi)
    for ax, (name, patterns) in zip(axes.flat, PANELS, strict=True):
        drawn = 0
        for pattern, style in patterns:
            for key in sorted(k for k in series if re.fullmatch(pattern, k)):
                steps, values = zip(*series[key], strict=True)
                ax.plot(steps, values, style, label=key, markersize=3)
                drawn += 1
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
    fig.suptitle(title)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=dpi)
    plt.close(fig)
    return output


@entry_point("plot_metrics")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run's log dir (trainer.log_dir) or its metrics.jsonl")
    p.add_argument("--output", default=None, help="PNG path (default: <log dir>/metrics.png)")
    p.add_argument("--width", type=int, default=1500, help="pixels")
    p.add_argument("--height", type=int, default=900, help="pixels")
    args = p.parse_args(argv)
    path = Path(args.run)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{path} not found: train with trainer.logger including jsonl, then pass its log dir")
    series = load_series(path)
    output = Path(args.output) if args.output else path.parent / "metrics.png"
    plot(series, output, args.width, args.height, title=str(path.parent))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
