"""SwanLab: a run `swanlab watch` can open by default, the SwanLab cloud when the user has an API key.

Mode: `SWANLAB_MODE` when set (offline | local | cloud | disabled); otherwise `cloud` if an API key
is known (`SWANLAB_API_KEY`, or a saved `swanlab login`); else `local` when SwanLab's dashboard is
installed (`pip install 'npu_rl[swanlab]'` brings `swanlab[dashboard]`), so `swanlab watch <dir>`
shows the run while it trains; else `offline`, with a note saying how to watch or upload it. Local
and offline both write under `SWANLAB_LOG_DIR`, or `<log_dir>/swanlog` by default; `swanlab sync
<run dir>` uploads an offline run later.

Charts are grouped by metric prefix (`actor/`, `critic/`, `val-core/`, ...): the cloud and offline
modes do that themselves; SwanLab's local dashboard (0.10) files every chart under "default", so
at the end of a local run its charts are moved into one section per prefix.
The tracker never prompts: a training job must not wait for keyboard input.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from npu_rl.tracking import RunInfo, TrackerUnavailable, samples_markdown, scalar_items

SAMPLES_KEY = "val/generations"
INSTALL_HINT = "pip install 'npu_rl[swanlab]' (or pip install swanlab)"


def swanlab_log_dir(log_dir: str) -> Path:
    return Path(os.environ.get("SWANLAB_LOG_DIR") or Path(log_dir) / "swanlog")


def dashboard_installed() -> bool:
    """SwanLab's local dashboard (swanboard), which local mode writes for and `swanlab watch` serves."""
    return importlib.util.find_spec("swanboard") is not None


def choose_mode(has_api_key: bool) -> str:
    """An explicit SWANLAB_MODE wins; a known key means the user wants the cloud; else a watchable local run."""
    explicit = os.environ.get("SWANLAB_MODE", "").strip()
    if explicit:
        return explicit
    if has_api_key:
        return "cloud"
    return "local" if dashboard_installed() else "offline"


def group_local_charts(log_dir: Path, run_dir_name: str) -> int:
    """Move a finished local run's dashboard charts into one section per metric prefix; returns how many."""
    from swanboard.db import connect
    from swanboard.db.models import Chart, Display, Experiment, Namespace

    connect(path=str(log_dir), autocreate=False)
    exp = Experiment.get_or_none(Experiment.run_id == run_dir_name)
    if exp is None:
        return 0
    moved = 0
    sections: dict[str, Any] = {}
    for chart in Chart.filter(Chart.experiment_id == exp.id).order_by(Chart.id):
        prefix = chart.name.split("/", 1)[0] if "/" in chart.name else "default"
        if prefix not in sections:
            found = Namespace.get_or_none((Namespace.experiment_id == exp.id) & (Namespace.name == prefix))
            sections[prefix] = found or Namespace.create(prefix, experiment_id=exp.id)
        moved += Display.update(namespace_id=sections[prefix].id).where(Display.chart_id == chart.id).execute()
    used = {ns.id for ns in sections.values()}
    for ns in Namespace.filter(Namespace.experiment_id == exp.id):
        if ns.id not in used and not Display.filter(Display.namespace_id == ns.id).exists():
            ns.delete_instance()  # the emptied "default" section
    return moved


class SwanLabTracker:
    def __init__(self, run: RunInfo) -> None:
        try:
            import swanlab
        except ImportError as err:
            raise TrackerUnavailable(
                f"trainer.logger 'swanlab' needs the swanlab package ({err}): {INSTALL_HINT}"
            ) from err
        self._swanlab = swanlab
        try:
            has_key = bool(swanlab.Settings().api_key)
        except Exception:  # a malformed ~/.swanlab or .env must not hide the real start error below
            has_key = False
        self.mode = choose_mode(has_key)
        if self.mode == "offline" and not os.environ.get("SWANLAB_MODE"):
            print(
                "[npu_rl] swanlab: offline run (no API key, no dashboard); `pip install 'swanlab[dashboard]'` makes "
                "runs watchable with `swanlab watch`, `swanlab sync <run dir>` uploads this one",
                file=sys.stderr,
            )
        self.log_dir = swanlab_log_dir(run.log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.run = swanlab.init(
                project=run.project,
                experiment_name=run.experiment,
                config=run.config or None,
                log_dir=str(self.log_dir),
                mode=self.mode,
                reinit=True,
                settings=swanlab.Settings(interactive=False),
            )
        except Exception as err:
            hint = (
                "set SWANLAB_API_KEY or run `swanlab login`, or use SWANLAB_MODE=offline"
                if self.mode in ("cloud", "online")
                else "check SWANLAB_MODE (offline | local | cloud | disabled) and SWANLAB_LOG_DIR"
            )
            raise TrackerUnavailable(f"swanlab could not start in {self.mode!r} mode ({err}); {hint}") from err

    @property
    def run_dir(self) -> Path | None:
        """This run's folder (None in disabled mode), e.g. for `swanlab sync`."""
        path = getattr(self.run, "dir", None)
        return Path(path) if path else None

    def log(self, metrics: dict[str, float], step: int) -> None:
        scalars = dict(scalar_items(metrics))
        if scalars:
            self.run.log(scalars, step=step)

    def log_samples(self, samples: list[dict[str, Any]], step: int) -> None:
        if samples:
            texts = [self._swanlab.Text(samples_markdown([s]), caption=f"score {s.get('score')}") for s in samples]
            self.run.log({SAMPLES_KEY: texts}, step=step)

    def close(self) -> None:
        run_dir = self.run_dir
        self.run.finish()
        if self.mode == "local" and run_dir is not None:
            try:
                group_local_charts(run_dir.parent, run_dir.name)
            except Exception as err:  # grouping is cosmetic: never fail a finished run over it
                print(f"[npu_rl] swanlab: charts left ungrouped ({type(err).__name__}: {err})", file=sys.stderr)
