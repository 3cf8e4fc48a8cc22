"""W&B offline runs and SwanLab local runs, read back with each tool's own file format / database."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest

from npu_rl.tracking import Tracking

METRICS = [
    {"actor/pg_loss": -0.1, "critic/score/mean": 0.25, "val-core/math/acc/mean@1": 0.5},
    {"actor/pg_loss": 0.05, "critic/score/mean": 0.5, "val-core/math/acc/mean@1": 0.75},
]
SAMPLES = [{"prompt": "1+1?", "response": "\\boxed{2}", "ground_truth": "2", "score": 1.0}]


def _config():
    from npu_rl.config import Config

    cfg = Config()
    cfg.trainer.project_name, cfg.trainer.experiment_name = "proj", "exp1"
    return cfg


# -- wandb -----------------------------------------------------------------------------------


@pytest.fixture
def wandb_env(monkeypatch, tmp_path):
    pytest.importorskip("wandb")
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc login of the machine
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "home" / ".config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "home" / ".cache"))
    monkeypatch.chdir(tmp_path)


def read_wandb_run(run_file: Path) -> list:
    """Every record of a .wandb transaction log, decoded with W&B's own protobuf schema.

    The file is a LevelDB-style log (what `wandb sync` replays): a 7-byte header, then 32 KiB blocks of
    records, each `crc32 (4) | length (2) | type (1) | payload`, a payload split FIRST/MIDDLE/LAST
    across blocks when it does not fit. Only the records written completely so far are returned.
    """
    from wandb.proto import wandb_internal_pb2

    data, block, pos, pending, records = run_file.read_bytes(), 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            pos += left  # zero padding at the end of a block
            continue
        if pos + 7 + length > len(data):
            break  # a record the service is still writing (seen on a loaded machine): read again later
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_offline_run_without_network_reads_back(tmp_path, wandb_env):
    tracking = Tracking(["wandb"], str(tmp_path / "logs"), total_steps=2, config=_config())
    tracker = tracking.trackers[0]
    assert tracker.mode == "offline"
    for step, metrics in enumerate(METRICS, start=1):
        tracking.log({**metrics, "perf/mfu/actor": float("nan")}, step)
    tracking.log_samples(SAMPLES, step=2)
    tracking.close()

    (run_file,) = (tmp_path / "logs" / "wandb").glob("offline-run-*/run-*.wandb")
    records = read_wandb_run(run_file)
    deadline = time.monotonic() + 30
    while "exit" not in {r.WhichOneof("record_type") for r in records} and time.monotonic() < deadline:
        time.sleep(0.5)  # wandb's service process may still be writing the log on a loaded machine
        records = read_wandb_run(run_file)
    kinds = [r.WhichOneof("record_type") for r in records]
    run = next((r.run for r in records if r.WhichOneof("record_type") == "run"), None)
    assert run is not None, f"no run record in {run_file} ({run_file.stat().st_size} bytes): {kinds}"
    assert (run.project, run.display_name) == ("proj", "exp1")
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["trainer"]["experiment_name"] == "exp1"
    history = [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    for step, metrics in enumerate(METRICS, start=1):
        row = next(h for h in history if h["_step"] == step)
        for key, value in metrics.items():
            assert row[key] == pytest.approx(value), key
    (row,) = [h for h in history if h["_step"] == 2]
    assert row["val/generations/_type"] == "table-file"
    table = json.loads((run_file.parent / "files" / row["val/generations/path"]).read_text())
    assert table["columns"] == ["step", "prompt", "response", "ground_truth", "score"]
    assert table["data"] == [[2, "1+1?", "\\boxed{2}", "2", 1.0]]


def test_wandb_mode_choice(monkeypatch, tmp_path):
    from npu_rl.trackers.wandb_tracker import choose_mode

    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    assert choose_mode() == "offline"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert choose_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert choose_mode() == "disabled"


def test_wandb_missing_package_names_the_install(tmp_path, monkeypatch):
    import sys

    from npu_rl.tracking import TrackerUnavailable

    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(TrackerUnavailable, match=r"pip install 'npu_rl\[wandb\]'"):
        Tracking(["wandb"], str(tmp_path), total_steps=1)


# -- swanlab local (watchable) ---------------------------------------------------------------


def test_swanlab_default_is_a_local_run_its_dashboard_reads_with_charts_by_prefix(tmp_path, monkeypatch):
    pytest.importorskip("swanlab")
    pytest.importorskip("swanboard")
    for var in ("SWANLAB_MODE", "SWANLAB_API_KEY", "SWANLAB_LOG_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SWANLAB_ROOT", str(tmp_path / "swanlab_home"))
    monkeypatch.chdir(tmp_path)
    tracking = Tracking(["swanlab"], str(tmp_path / "logs"), total_steps=2, config=_config())
    assert tracking.trackers[0].mode == "local"
    for step, metrics in enumerate(METRICS, start=1):
        tracking.log(metrics, step)
    tracking.close()

    # What `swanlab watch logs/swanlog` serves: swanboard's database and its metric files.
    from swanboard.db import connect
    from swanboard.db.models import Chart, Display, Experiment, Namespace, Tag

    log_dir = tmp_path / "logs" / "swanlog"
    connect(path=str(log_dir), autocreate=False)
    (exp,) = Experiment.select()
    assert exp.name == "exp1"
    tags = {t.name: t.folder for t in Tag.filter(Tag.experiment_id == exp.id)}
    assert set(tags) == set(METRICS[0])
    (run_dir,) = log_dir.glob("run-*")
    for key, folder in tags.items():
        lines = [json.loads(x) for f in sorted((run_dir / "logs" / folder).glob("*.log")) for x in f.open()]
        assert [(row["index"], row["data"]) for row in lines] == [
            (s, pytest.approx(m[key])) for s, m in enumerate(METRICS, start=1)
        ]
    sections = {}
    for chart in Chart.filter(Chart.experiment_id == exp.id):
        (display,) = Display.filter(Display.chart_id == chart.id)
        sections[chart.name] = Namespace.get_by_id(display.namespace_id).name
    assert sections == {"actor/pg_loss": "actor", "critic/score/mean": "critic", "val-core/math/acc/mean@1": "val-core"}
