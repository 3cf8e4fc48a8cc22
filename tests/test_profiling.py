"""`trainer.profile_steps` (verl's global_profiler.steps): the listed steps of a real training run
leave a Chrome trace per rank whose step sections and operators are there, the others none; verl's
keys reach it."""

from __future__ import annotations

import json

import pytest
from test_trainer import make_cfg, run

from npu_rl.config import ConfigError, load_config


def test_listed_steps_leave_a_chrome_trace_with_the_step_sections(tmp_path, tiny_model_dir, synthetic_parquet):
    out = tmp_path / "profile"
    cfg = make_cfg(
        tmp_path, tiny_model_dir, synthetic_parquet, "trainer.total_training_steps=2", "trainer.test_freq=0",
        "trainer.profile_steps=[2]", f"trainer.profile_dir={out}",
    )  # fmt: skip
    run(cfg)
    assert sorted(p.name for p in out.iterdir()) == ["step_2.rank0.json"]  # step 1 ran unprofiled
    events = json.loads((out / "step_2.rank0.json").read_text())["traceEvents"]
    names = {e.get("name") for e in events}
    for section in ("gen", "old_log_prob", "ref", "adv", "update_actor", "update_weights"):
        assert f"npu_rl/{section}" in names, section
    assert {"aten::mm", "aten::addmm"} & names and "Optimizer.step#AdamW.step" in names
    spans = {e["name"]: e for e in events if e.get("name", "").startswith("npu_rl/") and "dur" in e}
    assert spans["npu_rl/step"]["dur"] >= spans["npu_rl/update_actor"]["dur"] > 0


def test_verl_profiler_keys_reach_the_trainer_and_nsys_is_refused():
    base = ["model.path=m", "data.train_files=[a]"]
    cfg = load_config(None, [*base, "global_profiler.steps=[1,5]", "global_profiler.save_path=prof",
                             "global_profiler.tool=torch"])  # fmt: skip
    assert (cfg.trainer.profile_steps, cfg.trainer.profile_dir) == ([1, 5], "prof")
    with pytest.raises(ConfigError, match=r"global_profiler\.tool='nsys'"):
        load_config(None, [*base, "global_profiler.tool=nsys"])
    with pytest.raises(ConfigError, match="profile_steps"):
        load_config(None, [*base, "trainer.profile_steps=[0]"])
