"""Checkpoints from elsewhere never run code: crafted files fail to load, on resume and on merge.

Each crafted file would create a marker file through os.system if it were unpickled; the tests
check both the error and that the marker does not exist.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest
import torch
from _train_proc import ROOT, env, train, train_args
from torch import nn

from npu_rl.checkpoint import CheckpointManager, dcp_load, dcp_save
from npu_rl.safe_load import SafeFileSystemReader, UnsafeCheckpointError, load_plain


class RunsCommand:
    """Unpickling this runs a shell command (what an attacker puts into a checkpoint file)."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _checkpoint(root):
    model = nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    cm = CheckpointManager(root)
    return cm, cm.save(1, model, opt, None, {"global_step": 1}, None, None), model, opt


def test_genuine_checkpoints_load_through_the_restricted_reader(tmp_path):
    cm, path, model, _ = _checkpoint(tmp_path)
    meta = SafeFileSystemReader(path / "actor" / "optim").read_metadata()
    assert "param_groups.0.lr" in meta.state_dict_metadata  # non-tensor entries, read with weights_only
    fresh = nn.Linear(4, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.5)
    assert cm.load(path, fresh, fresh_opt, None) == {"global_step": 1}
    assert fresh_opt.param_groups[0]["lr"] == 0.1 and torch.equal(fresh.weight, model.weight)


def test_crafted_metadata_is_refused_on_load_and_runs_nothing(tmp_path):
    cm, path, model, opt = _checkpoint(tmp_path / "ckpt")
    marker = tmp_path / "pwned"
    (path / "actor" / "model" / ".metadata").write_bytes(pickle.dumps(RunsCommand(marker)))
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to load posix\.system"):
        cm.load(path, model, opt, None)
    assert not marker.exists()


def test_crafted_non_tensor_entry_and_small_files_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    dcp_save({"w": torch.zeros(2), "extra": RunsCommand(marker)}, tmp_path / "dcp")
    with pytest.raises(UnsafeCheckpointError, match="entry 'extra'"):
        dcp_load({"w": torch.zeros(2), "extra": None}, tmp_path / "dcp")
    torch.save({"global_step": RunsCommand(marker)}, tmp_path / "trainer_state.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"trainer_state\.pt: holds more than plain values"):
        load_plain(tmp_path / "trainer_state.pt")
    assert not marker.exists()


def test_storage_entry_pointing_outside_the_checkpoint_is_refused(tmp_path):
    _, path, _, _ = _checkpoint(tmp_path / "ckpt")
    meta_file = path / "actor" / "model" / ".metadata"
    meta = SafeFileSystemReader(path / "actor" / "model").read_metadata()
    for info in meta.storage_data.values():
        info.relative_path = "../../../etc/passwd"
    meta.storage_meta = None
    meta_file.write_bytes(pickle.dumps(meta))
    with pytest.raises(UnsafeCheckpointError, match="points outside"):
        SafeFileSystemReader(path / "actor" / "model").read_metadata()


def test_crafted_metadata_is_refused_by_merge(tmp_path, tiny_model_dir):
    from npu_rl.merge import merge_checkpoint  # noqa: F401 - the module under test must import cleanly

    _, path, _, _ = _checkpoint(tmp_path / "ckpt")
    hf = path / "actor" / "huggingface"
    (hf / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    marker = tmp_path / "pwned"
    (path / "actor" / "model" / ".metadata").write_bytes(pickle.dumps(RunsCommand(marker)))
    proc = subprocess.run(
        [sys.executable, "-m", "npu_rl.merge", "--backend", "fsdp", "--local_dir", str(path / "actor"),
         "--target_dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, env=env(), cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "refusing to load posix.system" in proc.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_crafted_metadata_is_refused_on_resume(tmp_path, tiny_model_dir, synthetic_parquet):
    args = train_args(tmp_path, tiny_model_dir, synthetic_parquet, steps=1)
    first = train(args)
    assert first.returncode == 0, first.stderr[-3000:]
    marker = tmp_path / "pwned"
    meta = tmp_path / "ckpt" / "global_step_1" / "actor" / "model" / ".metadata"
    meta.write_bytes(pickle.dumps(RunsCommand(marker)))
    resumed = train(train_args(tmp_path, tiny_model_dir, synthetic_parquet, steps=2))
    assert resumed.returncode == 2  # a refused checkpoint is the user's to deal with: one message, no traceback
    assert "npu_rl.train: error: " in resumed.stderr and "refusing to load posix.system" in resumed.stderr
    assert "Traceback" not in resumed.stderr
    assert not marker.exists()
