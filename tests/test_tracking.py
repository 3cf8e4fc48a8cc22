"""Trackers write what they claim: TensorBoard event files and SwanLab runs are read back with those
projects' own readers; the console's progress numbers are checked against a controlled clock."""

from __future__ import annotations

import io
import json
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from npu_rl import tracking
from npu_rl.registry import Registry, UnknownName
from npu_rl.trackers.console import ConsoleTracker, format_duration
from npu_rl.tracking import JsonlTracker, TrackerUnavailable, Tracking

METRICS = [
    {"critic/score/mean": 0.25, "actor/pg_loss": -0.1, "actor/entropy": 1.5, "response_length/mean": 10.0},
    {"critic/score/mean": 0.5, "actor/pg_loss": 0.2, "actor/entropy": 1.25, "response_length/mean": 12.0},
    {"critic/score/mean": 0.75, "actor/pg_loss": 0.05, "actor/entropy": 1.0, "response_length/mean": 15.0},
]
SAMPLES = [{"prompt": "What is 2+3?", "response": "2+3=5 so \\boxed{5}", "ground_truth": "5", "score": 1.0}]


def with_trackers(monkeypatch, **factories) -> None:
    """Swap in a tracker registry holding the built-ins plus (or replaced by) `factories`, for one test."""
    registry = Registry("tracker")
    for name in tracking.REGISTRY:
        registry.add(name, factories.get(name, tracking.REGISTRY[name]))
    for name, factory in factories.items():
        if name not in registry:
            registry.add(name, factory)
    monkeypatch.setattr(tracking, "REGISTRY", registry)


def read_tensorboard(log_dir: Path):
    """Scalars {tag: [(step, value)]} and text tags, through TensorBoard's own EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    texts = {  # add_text stores a tensor under "<tag>/text_summary"
        tag.removesuffix("/text_summary"): [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(tag)]
        for tag in acc.Tags()["tensors"]
    }
    return scalars, texts


def read_swanlab_run(log_dir: Path) -> tuple[dict, dict, dict]:
    """(scalars {key: [(step, value)]}, media {key: [step]}, start record fields) of the one run under log_dir.

    Uses SwanLab's own record reader and protobuf schema, the same ones `swanlab sync` replays.
    """
    from swanlab.proto.swanlab.record.v1.record_pb2 import Record
    from swanlab.sdk.internal.core_python.store import DataStoreReader

    (run_file,) = log_dir.glob("run-*/run-*.swanlab")
    reader = DataStoreReader()
    reader.open(run_file)
    scalars: dict[str, list] = defaultdict(list)
    media: dict[str, list] = defaultdict(list)
    start: dict = {}
    try:
        for blob in reader:
            record = Record()
            record.ParseFromString(blob)
            kind = record.WhichOneof("record_type")
            if kind == "scalar":
                scalars[record.scalar.key].append((record.scalar.step, record.scalar.value.number))
            elif kind == "media":
                media[record.media.key].append(record.media.step)
            elif kind == "start":
                start = {"project": record.start.project, "name": record.start.name}
    finally:
        reader.close()
    return dict(scalars), dict(media), start


# -- console ---------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_console_plain_lines_show_progress_reward_speed_and_eta():
    stream, clock = io.StringIO(), FakeClock()
    console = ConsoleTracker(total_steps=5, stream=stream, clock=clock)
    val = {"val-core/synthetic/acc/mean@1": 0.125, "val-core/synthetic/acc/best@1/std": 0.5}  # a spread: not shown
    console.log(val, step=0)  # validation before training
    for step, metrics in enumerate(METRICS, start=1):
        clock.now += 10.0  # 10 s per step of wall clock
        console.log({**metrics, "timing_s/step": 8.0}, step)
    console.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4 and "\r" not in stream.getvalue() and "\x1b" not in stream.getvalue()
    assert lines[0].startswith("step 0/5 (0%)") and "val-core/synthetic/acc/mean@1=0.125" in lines[0]
    assert "/std" not in lines[0]
    # first training step: no wall-clock interval yet, so the trainer's own timing (8 s) is used
    assert "1/5 (20%)" in lines[1] and "reward 0.250" in lines[1] and "8.00 s/step" in lines[1]
    assert "ETA 32s" in lines[1]
    # then the measured wall clock: 10 s/step, 2 steps left after step 3
    assert "3/5 (60%)" in lines[3] and "reward 0.750" in lines[3] and "10.00 s/step" in lines[3]
    assert "ETA 20s" in lines[3] and "actor/entropy=1" in lines[3]


def test_console_on_a_tty_redraws_one_bar_and_ends_below_it():
    stream = io.StringIO()
    console = ConsoleTracker(total_steps=4, stream=stream, tty=True, clock=FakeClock())
    console.log(METRICS[0], step=1)
    console.log(METRICS[1], step=2)
    console.close()
    out = stream.getvalue()
    assert out.count("\r\x1b[K") == 2, "each step clears the previous bar"
    assert "[" + "#" * 12 + "-" * 12 + "] 2/4 (50%)" in out
    assert out.endswith("\n")
    assert "[step 2] critic/score/mean=0.5" in out


def test_console_detects_a_non_tty_stream():
    assert ConsoleTracker(3, stream=io.StringIO()).tty is False


@pytest.mark.parametrize("seconds,text", [(0, "0s"), (59.6, "1m00s"), (281, "4m41s"), (11100, "3h05m")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


# -- jsonl -----------------------------------------------------------------------------------


def test_jsonl_writes_strict_json_with_nan_as_null(tmp_path):
    tracker = JsonlTracker(tmp_path)
    tracker.log({"a": float("nan"), "b": 1.5}, step=3)
    tracker.log_samples(SAMPLES, step=3)
    tracker.close()
    (row,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert row == {"step": 3, "a": None, "b": 1.5}
    (sample,) = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert sample["step"] == 3 and sample["response"] == SAMPLES[0]["response"]


# -- tensorboard -----------------------------------------------------------------------------


def test_tensorboard_event_files_hold_every_scalar_and_the_samples(tmp_path, monkeypatch):
    monkeypatch.delenv("TENSORBOARD_DIR", raising=False)
    tracking = Tracking(["tensorboard"], str(tmp_path), total_steps=3)
    for step, metrics in enumerate(METRICS, start=1):
        tracking.log({**metrics, "flag": True, "note": "text is not a scalar"}, step)
    tracking.log_samples(SAMPLES, step=3)
    tracking.close()

    scalars, texts = read_tensorboard(tmp_path / "tensorboard")
    assert set(scalars) == set(METRICS[0])
    for key in METRICS[0]:
        assert scalars[key] == [(s, pytest.approx(m[key])) for s, m in enumerate(METRICS, start=1)]
    (step, text), *_ = texts["val/generations"]
    assert step == 3 and "\\boxed{5}" in text and "ground truth `5`" in text


def test_tensorboard_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORBOARD_DIR", str(tmp_path / "elsewhere"))
    tracking = Tracking(["tensorboard"], str(tmp_path / "logs"), total_steps=1)
    tracking.log(METRICS[0], 1)
    tracking.close()
    scalars, _ = read_tensorboard(tmp_path / "elsewhere")
    assert scalars["actor/pg_loss"] == [(1, pytest.approx(-0.1))]


# -- swanlab ---------------------------------------------------------------------------------


@pytest.fixture
def swanlab_env(monkeypatch, tmp_path):
    """No key, no mode: the tracker must pick a local (offline) run without asking anything."""
    pytest.importorskip("swanlab")
    for var in ("SWANLAB_MODE", "SWANLAB_API_KEY", "SWANLAB_LOG_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SWANLAB_ROOT", str(tmp_path / "swanlab_home"))  # no saved login from the machine
    monkeypatch.chdir(tmp_path)  # no .env / .swanlab of the repository


def test_swanlab_offline_run_reads_back_with_names_steps_and_config(tmp_path, swanlab_env, monkeypatch):
    from npu_rl.config import Config

    monkeypatch.setattr("npu_rl.trackers.swanlab_tracker.dashboard_installed", lambda: False)

    cfg = Config()
    cfg.trainer.project_name, cfg.trainer.experiment_name = "proj", "exp1"
    tracking = Tracking(["swanlab"], str(tmp_path / "logs"), total_steps=3, config=cfg)
    assert tracking.trackers[0].mode == "offline"
    for step, metrics in enumerate(METRICS, start=1):
        tracking.log({**metrics, "perf/mfu/actor": float("nan")}, step)
    tracking.log_samples(SAMPLES, step=3)
    tracking.close()

    scalars, media, start = read_swanlab_run(tmp_path / "logs" / "swanlog")
    assert start == {"project": "proj", "name": "exp1"}
    assert set(scalars) == {*METRICS[0], "perf/mfu/actor"}
    for key in METRICS[0]:
        assert scalars[key] == [(s, pytest.approx(m[key])) for s, m in enumerate(METRICS, start=1)]
    assert media == {"val/generations": [3]}
    (config_file,) = (tmp_path / "logs" / "swanlog").glob("run-*/files/config.yaml")
    assert "exp1" in config_file.read_text()


def test_swanlab_log_dir_from_the_environment(tmp_path, swanlab_env, monkeypatch):
    monkeypatch.setenv("SWANLAB_LOG_DIR", str(tmp_path / "swan"))
    tracking = Tracking(["swanlab"], str(tmp_path / "logs"), total_steps=1)
    tracking.log(METRICS[0], 1)
    tracking.close()
    scalars, _, _ = read_swanlab_run(tmp_path / "swan")
    assert scalars["actor/entropy"] == [(1, 1.5)]
    assert not (tmp_path / "logs" / "swanlog").exists()


def test_swanlab_mode_choice(monkeypatch):
    from npu_rl.trackers.swanlab_tracker import choose_mode

    monkeypatch.delenv("SWANLAB_MODE", raising=False)
    monkeypatch.setattr("npu_rl.trackers.swanlab_tracker.dashboard_installed", lambda: False)
    assert choose_mode(has_api_key=False) == "offline"
    monkeypatch.setattr("npu_rl.trackers.swanlab_tracker.dashboard_installed", lambda: True)
    assert choose_mode(has_api_key=False) == "local"  # what `swanlab watch` opens
    assert choose_mode(has_api_key=True) == "cloud"
    monkeypatch.setenv("SWANLAB_MODE", "local")
    assert choose_mode(has_api_key=True) == "local"


def test_swanlab_cloud_without_a_key_fails_with_what_to_do(tmp_path, swanlab_env, monkeypatch):
    monkeypatch.setenv("SWANLAB_MODE", "cloud")
    with pytest.raises(TrackerUnavailable, match="SWANLAB_API_KEY"):
        Tracking(["swanlab"], str(tmp_path), total_steps=1)


# -- failures to start -----------------------------------------------------------------------


def test_missing_package_names_the_install_and_stops_the_run(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "swanlab", None)  # `import swanlab` now raises ImportError
    with pytest.raises(TrackerUnavailable, match=r"pip install 'npu_rl\[swanlab\]'"):
        Tracking(["jsonl", "swanlab"], str(tmp_path), total_steps=1)


def test_missing_package_is_skipped_when_allowed(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "swanlab", None)
    tracking = Tracking(["jsonl", "swanlab"], str(tmp_path), total_steps=1, allow_missing=True)
    tracking.log({"x": 1.0}, 1)
    tracking.close()
    assert list(tracking.skipped) == ["swanlab"]
    assert "continuing without it" in capsys.readouterr().err
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 1, "x": 1.0}


def test_allow_missing_comes_from_the_config(tmp_path, monkeypatch):
    from npu_rl.config import Config

    monkeypatch.setitem(sys.modules, "swanlab", None)
    cfg = Config()
    with pytest.raises(TrackerUnavailable):
        Tracking(["swanlab"], str(tmp_path), 1, config=cfg)
    cfg.trainer.allow_missing_logger = True
    assert Tracking(["swanlab"], str(tmp_path), 1, config=cfg).skipped


def test_trackers_started_before_a_failure_are_closed(tmp_path, monkeypatch):
    started = []

    def failing(run):
        raise TrackerUnavailable("nope")

    def recording(run):
        tracker = JsonlTracker(run.log_dir)
        started.append(tracker)
        return tracker

    with_trackers(monkeypatch, rec=recording, bad=failing)
    with pytest.raises(TrackerUnavailable):
        Tracking(["rec", "bad"], str(tmp_path), 1)
    assert started[0]._fh.closed


def test_unknown_logger_lists_the_available_ones(tmp_path):
    with pytest.raises(UnknownName, match=r"trainer\.logger: unknown tracker 'tensorbord'.*registered:.*tensorboard"):
        Tracking(["tensorbord"], str(tmp_path), 1)


# -- end to end ------------------------------------------------------------------------------


@pytest.mark.slow
def test_training_run_feeds_all_four_trackers(tmp_path, tiny_model_dir, synthetic_parquet, swanlab_env):
    """`python -m npu_rl.train` with console, jsonl, tensorboard and swanlab together; every backend
    is read back and must hold the same metric names at the same steps."""
    import os
    import subprocess

    logs = tmp_path / "logs"
    steps = 3
    cmd = [
        sys.executable, "-m", "npu_rl.train",
        f"model.path={tiny_model_dir}",
        f"data.train_files=[{synthetic_parquet['train']}]",
        f"data.val_files=[{synthetic_parquet['test']}]",
        "data.train_batch_size=2", "data.val_max_samples=2",
        "actor.ppo_mini_batch_size=2", "rollout.n=2", "rollout.max_new_tokens=8",
        "reward.num_workers=0",
        "trainer.logger=[console,jsonl,tensorboard,swanlab]",
        "trainer.project_name=e2e", "trainer.experiment_name=four_trackers",
        f"trainer.log_dir={logs}", f"trainer.default_local_dir={tmp_path / 'ckpt'}",
        f"trainer.total_training_steps={steps}", f"trainer.test_freq={steps}", "trainer.num_threads=1",
    ]  # fmt: skip
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    env.pop("TENSORBOARD_DIR", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    rows = [json.loads(line) for line in (logs / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "actor/pg_loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, steps + 1))
    val_key = next(k for k in rows[-1] if k.startswith("val-core/"))
    val_steps = [r["step"] for r in rows if val_key in r]
    assert val_steps == [0, steps]
    numeric = {k for r in rows for k, v in r.items() if k != "step" and isinstance(v, (int, float))}
    numeric |= {k for r in rows for k, v in r.items() if v is None}  # NaN in JSONL is a number elsewhere
    expected = {k: [r["step"] for r in rows if k in r] for k in numeric}

    tb_scalars, tb_texts = read_tensorboard(logs / "tensorboard")
    assert set(tb_scalars) == numeric
    for key, key_steps in expected.items():
        assert [s for s, _ in tb_scalars[key]] == key_steps, key
    assert [s for s, _ in tb_texts["val/generations"]] == val_steps

    sw_scalars, sw_media, _ = read_swanlab_run(logs / "swanlog")
    assert set(sw_scalars) == numeric
    for key, key_steps in expected.items():
        assert [s for s, _ in sw_scalars[key]] == key_steps, key
    assert sw_media["val/generations"] == val_steps
    for key in ("actor/pg_loss", "actor/entropy", "critic/score/mean", "response_length/mean", val_key):
        assert key in numeric

    console = [line for line in proc.stdout.splitlines() if line.startswith("step ")]
    assert console[-1].startswith(f"step {steps}/{steps} (100%)") and "s/step" in console[-1]


def test_console_starts_last_and_closes_first(tmp_path, monkeypatch):
    events = []

    class Recorder:
        def __init__(self, name):
            self.name = name
            events.append(("start", name))

        def log(self, metrics, step): ...

        def log_samples(self, samples, step): ...

        def close(self):
            events.append(("close", self.name))

    with_trackers(monkeypatch, **{name: (lambda run, name=name: Recorder(name)) for name in ("console", "a", "b")})
    Tracking(["console", "a", "b", "a"], str(tmp_path), 1).close()
    assert events == [("start", "a"), ("start", "b"), ("start", "console"),
                      ("close", "console"), ("close", "b"), ("close", "a")]  # fmt: skip
