"""`npu_rl.train --check`: the run's own readers over config, data, reward and model config.json, with
no weights in the model folder (so none can have been read) and nothing written."""

from __future__ import annotations

import shutil

from transformers import AutoModelForCausalLM

from npu_rl import train
from npu_rl.config import load_config
from npu_rl.model import num_parameters
from npu_rl.rollout.base import SamplingParams
from npu_rl.rollout.kv_budget import DecodeShape
from npu_rl.storage import fmt_bytes


def _weightless(tmp_path, tiny_model_dir):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    for weights in [*folder.glob("*.safetensors"), *folder.glob("*.bin")]:
        weights.unlink()
    return folder


def test_check_reads_the_run_without_its_weights(tmp_path, capsys, monkeypatch, tiny_model_dir, synthetic_parquet):
    folder = _weightless(tmp_path, tiny_model_dir)
    monkeypatch.chdir(tmp_path)
    data = [f"data.train_files=[{synthetic_parquet['train']}]", f"data.val_files=[{synthetic_parquet['test']}]"]
    args = [f"model.path={folder}", *data, "data.train_batch_size=8", "trainer.total_epochs=3", "rollout.n=3"]
    assert train.cli(["--check", *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    net = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = f"[npu_rl check] model: Qwen2ForCausalLM, {num_parameters(net) / 1e6:.2f} M parameters, float32; "
    assert lines[2].startswith(model + "forward=packed attention=segments decoder=fast"), lines
    # the hf rollout's call at the configured sizes, as the rollout itself plans it (tests/test_rollout_memory.py)
    cfg = load_config(None, args)
    per_prompt = DecodeShape.of(net).bytes_per_prompt(SamplingParams.for_training(cfg.rollout), 512, fast=True)
    assert lines[:2] + lines[3:] == [
        "[npu_rl check] data: 48 training prompts, 16 validation prompts; 6 steps per epoch, 18 steps in all",
        "[npu_rl check] reward: math x 1",
        "[npu_rl check] rollout: hf, up to rollout.micro_batch_size=64 prompts x 3 samples x (512 + 1024) tokens "
        f"per generate call: about {fmt_bytes(64 * per_prompt)} of KV cache and sampler (on a card, fewer prompts "
        "per call where that is not free)",
        "[npu_rl check] device: cpu",
        "[npu_rl check] ok: nothing was loaded onto a device or written; drop --check to train",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no logs, checkpoints or run lock


def test_check_imports_the_reward_functions(tmp_path, capsys, monkeypatch, tiny_model_dir, synthetic_parquet):
    folder = _weightless(tmp_path, tiny_model_dir)
    user = tmp_path / "my_reward.py"
    user.write_text("def other(data_source, solution_str, ground_truth, extra_info=None):\n    return 0.0\n")
    monkeypatch.chdir(tmp_path)
    args = ["--check", f"model.path={folder}", f"data.train_files=[{synthetic_parquet['train']}]",
            f"reward.custom_function.path={user}"]  # fmt: skip
    assert train.cli(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("npu_rl.train: error: reward.custom_function.name: no function 'compute_score'"), err
