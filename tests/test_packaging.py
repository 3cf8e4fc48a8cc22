"""The wheel is a working product: configs and data/plot tools inside, console scripts that run.

Built from a copy of the sources, installed with `--no-deps` into a fresh venv whose dependencies come
from the test interpreter's site-packages through a .pth file (the `--system-site-packages` idea, for
a venv base): offline, no torch download, no CUDA build pulled, about a minute.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])


def _run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"NPU_RL_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for item in ("npu_rl", "reward"):
        shutil.copytree(ROOT / item, src / item, ignore=shutil.ignore_patterns("__pycache__"))
    for item in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / item, src / item)
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(dist)], src)
    return next(dist.glob("npu_rl-*.whl"))


def test_every_tool_module_has_a_console_script():
    """A tool added to npu_rl/tools without a script would be unreachable from an installed wheel."""
    targets = {
        target.split(":")[0]
        for target in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"].values()
    }
    tools = {f"npu_rl.tools.{p.stem}" for p in (ROOT / "npu_rl" / "tools").glob("[!_]*.py")}
    assert tools <= targets, sorted(tools - targets)
    assert len(SCRIPTS) >= 11


def test_wheel_carries_configs_and_tools(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    packaged = ["npu_rl/configs/tiny_grpo.yaml", "npu_rl/configs/qwen2_5_1_5b_grpo.yaml", "reward/__init__.py"]
    for expected in [*packaged, "npu_rl/tools/preprocess_math.py", "npu_rl/tools/plot_metrics.py"]:
        assert expected in names, expected
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert all(f"{script} =" in text for script in SCRIPTS), text


@pytest.mark.slow
def test_installed_wheel_runs_its_console_scripts_and_trains(wheel, tmp_path, tiny_model_dir):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    site = Path(
        _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).stdout.strip()
    )
    (site / "_npu_rl_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch & co., appended last
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], tmp_path)
    where = _run([str(python), "-c", "import npu_rl, reward; print(npu_rl.__file__, reward.__file__)"], tmp_path).stdout
    assert all(path.startswith(str(site)) for path in where.split()), where  # the installed copy, not a checkout

    for script in SCRIPTS:
        assert "usage:" in _run([str(venv / "bin" / script), "--help"], tmp_path).stdout, script
    assert "ok: the stack's requirements are met" in _run([str(venv / "bin" / "npu-rl-env")], tmp_path).stdout

    work = tmp_path / "work"
    work.mkdir()
    _run(
        [str(venv / "bin" / "npu-rl-make-synthetic-math"), "--out-dir", "data", "--n-train", "8", "--n-test", "4"], work
    )
    _run(
        [str(venv / "bin" / "npu-rl-train"), "--config", "tiny_grpo", f"model.path={tiny_model_dir}",
         "data.train_batch_size=2", "actor.ppo_mini_batch_size=2", "rollout.n=2", "rollout.max_new_tokens=8",
         "trainer.total_training_steps=2", "trainer.test_freq=-1", "trainer.logger=[jsonl]", "trainer.num_threads=1",
         "trainer.log_dir=logs", "trainer.default_local_dir=ckpt", "data.train_files=[data/train.parquet]",
         "data.val_files=[data/test.parquet]"],
        work,
    )  # fmt: skip
    rows = [json.loads(line) for line in (work / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "actor/pg_loss" in r] == [1, 2]
    assert (work / "ckpt" / "global_step_2").is_dir()
