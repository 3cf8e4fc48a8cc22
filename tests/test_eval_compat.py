"""Evaluation comparable with the Ascend sample's: 1024 new tokens by default, a math-verify grader
option, and the OpenCompass model config for a merged folder."""

from __future__ import annotations

import sys
import types

import pytest

from npu_rl.cli import UserError
from npu_rl.eval import build_parser, main
from npu_rl.tools import opencompass_config
from reward.math_verify_adapter import math_verify_score


def test_eval_defaults_match_the_sample_opencompass_run():
    args = build_parser().parse_args(["--model", "m", "--data", "d"])
    assert args.max_new_tokens == 1024 and args.temperature == 0.0 and args.n == 1 and args.grader == "builtin"


def test_math_verify_grader_needs_math_verify(monkeypatch, capsys):
    monkeypatch.setattr("npu_rl.eval.math_verify_available", lambda: False)
    from npu_rl.eval import cli

    assert cli(["--model", "nowhere", "--data", "d.parquet", "--grader", "math_verify"]) == 2
    assert (
        "npu_rl.eval: error: --grader math_verify needs math-verify: pip install math-verify" in capsys.readouterr().err
    )


def test_math_verify_grader_scores_through_eval(tmp_path, tiny_model_dir, synthetic_parquet):
    pytest.importorskip("math_verify")
    summary = main(
        [
            "--model", str(tiny_model_dir), "--data", str(synthetic_parquet["test"]), "--grader", "math_verify",
            "--max-new-tokens", "6", "--max-samples", "3", "--reward-workers", "0",
            "--output-dir", str(tmp_path / "out"), "--num-threads", "1",
        ]
    )  # fmt: skip
    assert summary["num_prompts"] == 3 and 0.0 <= summary["accuracy"] <= 1.0


def test_math_verify_term():
    pytest.importorskip("math_verify")
    assert math_verify_score("m", "so $\\boxed{\\frac{1}{2}}$", "0.5") == {"score": 1.0, "acc": True}
    assert math_verify_score("m", "so $\\boxed{3}$", "4")["acc"] is False
    assert math_verify_score("m", "no final answer at all", "4")["score"] == 0.0


def test_opencompass_config_for_a_merged_folder(tmp_path, tiny_model_dir, monkeypatch):
    out = opencompass_config.main(["--model", str(tiny_model_dir), "--opencompass", str(tmp_path / "oc")])
    assert out == tmp_path / "oc" / "opencompass" / "configs" / "models" / "npu_rl" / "npu_rl_merged.py"
    fake = types.ModuleType("opencompass.models")
    fake.HuggingFacewithChatTemplate = "HF-chat-model"
    monkeypatch.setitem(sys.modules, "opencompass", types.ModuleType("opencompass"))
    monkeypatch.setitem(sys.modules, "opencompass.models", fake)
    namespace: dict = {}
    exec(compile(out.read_text(), str(out), "exec"), namespace)  # our own generated file
    (model,) = namespace["models"]
    assert model == {
        "type": "HF-chat-model",
        "abbr": f"npu_rl-{tiny_model_dir.name}",
        "path": str(tiny_model_dir.resolve()),
        "max_out_len": 1024,
        "batch_size": 32,
        "run_cfg": {"num_gpus": 1},
    }


def test_opencompass_config_refuses_an_unmerged_folder(tmp_path):
    with pytest.raises(UserError, match="merge a checkpoint first"):
        opencompass_config.main(["--model", str(tmp_path), "--output", str(tmp_path / "x.py")])
