"""The shared registry and progress primitives."""

from __future__ import annotations

import io

import pytest

from npu_rl.progress import Progress
from npu_rl.registry import Registry, UnknownName


def test_registry_lists_names_and_suggests():
    reg: Registry[int] = Registry("estimator")
    reg.register("grpo", "grpo_alias")(1)
    reg.add("rloo", 2)
    assert reg.get("grpo") == reg["grpo_alias"] == 1
    assert reg.names() == ["grpo", "grpo_alias", "rloo"]
    expected = r"unknown estimator 'rlo' \(did you mean 'rloo'\?\); registered: grpo, grpo_alias, rloo"
    with pytest.raises(UnknownName, match="algorithm.adv_estimator: " + expected):
        reg.get("rlo", "algorithm.adv_estimator")
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("rloo", 3)


def test_progress_plain_stream_prints_one_line_per_stage():
    out = io.StringIO()
    with Progress("validation", total=4, unit="prompts", stream=out) as bar:
        bar.update(2)
        bar.update(2)
    lines = out.getvalue().splitlines()
    assert lines[0] == "[npu_rl] validation: started (4 prompts)"
    assert lines[1].startswith("[npu_rl] validation: done, 4 prompts in ")
    assert len(lines) == 2


def test_progress_line_has_eta_only_while_work_remains():
    bar = Progress("merge", total=10, unit="tensors", stream=io.StringIO())
    bar.start -= 2.0  # two seconds in
    bar.done = 5
    assert bar.line().startswith("merge 5/10 tensors 2.5 tensors/s ETA 2s")
    bar.done = 10
    assert "ETA" not in bar.line()


def test_progress_failed_stage_says_so():
    out = io.StringIO()
    with pytest.raises(RuntimeError), Progress("save", stream=out):
        raise RuntimeError("disk")
    assert "save: failed" in out.getvalue()
