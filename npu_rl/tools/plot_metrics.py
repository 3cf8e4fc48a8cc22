"""Plot the health curves of one or several runs from their metrics.jsonl into one PNG.

    npu-rl-plot RUN [RUN ...] [--labels a,b] [--smooth 0.9] [--output curves.png]

RUN is a run's log dir (trainer.log_dir) or its metrics.jsonl; several runs are overlaid, one colour
each. Panels: reward and validation accuracy, policy entropy, KL (kl_loss and ppo_kl), clip fraction,
response length, gradient norm. Read together they show the usual failure modes: entropy falling
to ~0 with flat reward (collapse), reward rising while validation accuracy does not and length
exploding or shrinking (reward hacking), KL or clip fraction growing without bound (too large a step).

`--smooth A` draws an exponential moving average (weight A on the past, debiased as TensorBoard does)
over the faint raw curve; validation points are never smoothed. A curve that is zero by construction
under the run's config (<log dir>/config.yaml) is not drawn: its panel says why instead (no KL term;
one update per rollout, so the probability ratio is 1 and nothing is clipped).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from npu_rl.cli import UserError, entry_point
from npu_rl.progress import Progress

Series = dict[str, list[tuple[int, float]]]

# (title, [(regex over metric names, line style)]); "o" styles mark sparse validation points.
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


def _get(cfg: dict[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def one_update_per_rollout(cfg: dict[str, Any]) -> bool:
    """ppo_epochs 1 and one mini-batch: the policy that sampled is the policy updated, ratio exactly 1."""
    epochs = _get(cfg, "actor.ppo_epochs", 1)
    mini, batch = _get(cfg, "actor.ppo_mini_batch_size"), _get(cfg, "data.train_batch_size")
    return epochs == 1 and mini is not None and batch is not None and mini >= batch


# Metrics that are zero by construction under some configs: (regex, condition on the config, why).
FLAT_BY_CONSTRUCTION: list[tuple[str, Any, str]] = [
    (
        r"actor/kl_loss",
        lambda c: not _get(c, "actor.use_kl_loss", False),
        "no KL term (actor.use_kl_loss=false)",
    ),
    (
        r"actor/(ppo_kl|pg_clipfrac|pg_clipfrac_lower)",
        one_update_per_rollout,
        "one update per rollout (ppo_epochs=1, one mini-batch): the probability ratio is exactly 1",
    ),
]


@dataclass
class Run:
    label: str
    series: Series
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class Panel:
    title: str
    lines: list[tuple[str, str, int, list[tuple[int, float]]]] = field(default_factory=list)  # label, style, run
    notes: list[str] = field(default_factory=list)


def load_series(path: Path) -> Series:
    """{metric: [(step, value)]} from metrics.jsonl; nulls (NaN) and non-numbers are left out."""
    series: Series = {}
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


def load_run(arg: str, label: str | None = None) -> Run:
    """A run from its log dir or metrics.jsonl, with the resolved config.yaml beside it when there is one."""
    path = Path(arg)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{path} not found: train with trainer.logger including jsonl, then pass its log dir")
    config_file = path.parent / "config.yaml"
    config = yaml.safe_load(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    return Run(label or path.parent.name, load_series(path), config if isinstance(config, dict) else {})


def ema(values: list[float], weight: float) -> list[float]:
    """Debiased exponential moving average (TensorBoard's smoothing): weight on the past in [0, 1)."""
    out, acc = [], 0.0
    for i, value in enumerate(values, start=1):
        acc = weight * acc + (1 - weight) * value
        out.append(acc / (1 - weight**i))
    return out


def build_panels(runs: list[Run]) -> list[Panel]:
    """What each panel draws, and why a curve that is zero by construction is left out."""
    panels = []
    for title, patterns in PANELS:
        panel = Panel(title)
        flat: dict[tuple[str, str], list[str]] = {}  # (run label, reason) -> metrics left out
        for pattern, style in patterns:
            for index, run in enumerate(runs):
                for key in sorted(k for k in run.series if re.fullmatch(pattern, k)):
                    points = run.series[key]
                    reason = next(
                        (why for rx, cond, why in FLAT_BY_CONSTRUCTION if re.fullmatch(rx, key) and cond(run.config)),
                        None,
                    )
                    if reason and all(v == 0 for _, v in points):
                        flat.setdefault((run.label, reason), []).append(key.split("/")[-1])
                        continue
                    label = key if len(runs) == 1 else f"{run.label}: {key}"
                    panel.lines.append((label, style, index, points))
        for (label, reason), names in flat.items():
            who = "" if len(runs) == 1 else f"{label}: "
            panel.notes.append(f"{who}{', '.join(names)} = 0 by construction: {reason}")
        panels.append(panel)
    return panels


def plot(runs: list[Run], output: Path, width: int, height: int, title: str, smooth: float = 0.0) -> Path:
    import matplotlib  # optional (the dev extra); imported here so a missing one is reported, not a traceback

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    dpi = 100
    with Progress(f"plotting {output.name}", total=len(PANELS) + 1, unit="parts") as bar:  # + 1: writing the file
        fig, axes = plt.subplots(2, 3, figsize=(width / dpi, height / dpi), dpi=dpi)
        for ax, panel in zip(axes.flat, build_panels(runs), strict=True):
            _draw_panel(ax, panel, smooth)
            bar.update()
        fig.suptitle(title)
        fig.tight_layout()
        output.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(output, dpi=dpi)
        plt.close(fig)
        bar.update()
    return output


def _draw_panel(ax: Any, panel: Panel, smooth: float) -> None:
    for label, style, run_index, points in panel.lines:
        steps, values = zip(*points, strict=True)
        color = f"C{run_index % 10}"
        if smooth > 0 and "o" not in style and len(values) > 2:
            ax.plot(steps, values, style, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(steps, ema(list(values), smooth), style, color=color, label=label)
        else:
            ax.plot(steps, values, style, color=color, label=label, markersize=3)
    ax.set_title(panel.title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if panel.lines:
        ax.legend(fontsize=7)
    notes = [textwrap.fill(note, 48) for note in panel.notes] or ([] if panel.lines else ["not logged"])
    if notes:
        y, va = (0.5, "center") if not panel.lines else (0.02, "bottom")
        box = {"facecolor": "white", "alpha": 0.8, "edgecolor": "none"}
        note = ax.text(0.5, y, "\n".join(notes), ha="center", va=va, transform=ax.transAxes, color="gray",
                       fontsize=7, bbox=box)  # fmt: skip
        note.set_in_layout(False)  # the panels keep their size whatever the note's length


@entry_point("npu-rl-plot")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="log dir(s) (trainer.log_dir) or metrics.jsonl file(s); several overlay")
    p.add_argument("--labels", default=None, help="comma-separated legend names, one per run (default: folder names)")
    p.add_argument("--smooth", type=float, default=0.0, help="EMA weight on the past in [0, 1), e.g. 0.9 (0 = raw)")
    p.add_argument("--output", default=None, help="PNG path (default: <first log dir>/metrics.png)")
    p.add_argument("--width", type=int, default=1500, help="pixels")
    p.add_argument("--height", type=int, default=900, help="pixels")
    args = p.parse_args(argv)
    if not 0 <= args.smooth < 1:
        raise UserError(f"--smooth {args.smooth}: use a weight in [0, 1), e.g. 0.9")
    labels = args.labels.split(",") if args.labels else [None] * len(args.runs)
    if len(labels) != len(args.runs):
        raise UserError(f"--labels has {len(labels)} names for {len(args.runs)} runs")
    runs = [load_run(run, label) for run, label in zip(args.runs, labels, strict=True)]
    first = Path(args.runs[0])
    first_dir = first if first.is_dir() else first.parent
    output = Path(args.output) if args.output else first_dir / "metrics.png"
    title = str(first_dir) if len(runs) == 1 else " vs ".join(r.label for r in runs)
    plot(runs, output, args.width, args.height, title=title, smooth=args.smooth)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
