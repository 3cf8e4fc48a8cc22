"""`model.disable_dropout` (TRL's disable_dropout): a model whose config asks for dropout computes the same
log-probs in every pass, so PPO's ratio starts at exactly 1."""

from __future__ import annotations

import json

import torch

from npu_rl.config import ModelConfig
from npu_rl.device import Accelerator
from npu_rl.model import load_model


def _with_dropout(tiny_model_dir, tmp_path):
    """A copy of the tiny model folder whose config.json sets attention_dropout 0.5."""
    folder = tmp_path / "dropout_model"
    folder.mkdir()
    for item in tiny_model_dir.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config["attention_dropout"] = 0.5
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _two_train_mode_passes(folder, disable: bool) -> tuple[torch.Tensor, torch.Tensor]:
    model = load_model(ModelConfig(path=str(folder), disable_dropout=disable), Accelerator("cpu"), trainable=True)
    model.train()
    ids = torch.arange(3, 19)[None, :]
    with torch.no_grad():
        return model(input_ids=ids).logits, model(input_ids=ids).logits


def test_disabled_dropout_gives_equal_passes_and_keeps_the_config(tiny_model_dir, tmp_path):
    folder = _with_dropout(tiny_model_dir, tmp_path)
    torch.manual_seed(0)
    first, second = _two_train_mode_passes(folder, disable=False)
    assert not torch.equal(first, second), "attention dropout 0.5 is active in train mode"
    first, second = _two_train_mode_passes(folder, disable=True)
    assert torch.equal(first, second)
    model = load_model(ModelConfig(path=str(folder)), Accelerator("cpu"), trainable=True)
    assert model.config.attention_dropout == 0.5  # what is saved with checkpoints stays the user's
