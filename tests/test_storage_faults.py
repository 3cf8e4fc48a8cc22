"""Saves that fail or die half-way: kills inside the publish and the marker write, a file-size fault at
the write, a filesystem too small, NaN weights. The previous checkpoint always stays usable."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from _train_proc import ROOT, env
from torch import nn

from npu_rl import checkpoint, checkpoint_state
from npu_rl.checkpoint import MARKER, CheckpointError, CheckpointManager

# Saves step 1, then dies by SIGKILL at the rename named by argv[2] during a second save.
KILL_AT_RENAME = textwrap.dedent(
    """
    import os, signal, sys, torch
    from pathlib import Path
    from torch import nn
    from npu_rl.checkpoint import CheckpointManager

    root, mode = Path(sys.argv[1]), sys.argv[2]
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cm = CheckpointManager(root)
    cm.save(1, model, opt, None, {"v": 1}, None, None)
    replace = os.replace

    def dying_replace(src, dst):
        src, dst = Path(src), Path(dst)
        if mode == "publish" and src.name == ".tmp_global_step_1":  # after global_step_1 -> .old_global_step_1
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "marker" and dst.name == "latest_checkpointed_iteration.txt":
            os.kill(os.getpid(), signal.SIGKILL)
        replace(src, dst)

    os.replace = dying_replace
    cm.save(1 if mode == "publish" else 2, model, opt, None, {"v": 2}, None, None)
    """
)


def _kill_at(root: Path, mode: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AT_RENAME, str(root), mode], capture_output=True, timeout=300, env=env(), cwd=ROOT
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()


def _tiny():
    model = nn.Linear(4, 2)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


@pytest.mark.slow  # kills a writer process mid-save (~2.5 s each)
def test_kill_inside_publish_is_repaired_at_start_up(tmp_path):
    _kill_at(tmp_path, "publish")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".old_global_step_1", ".tmp_global_step_1", MARKER]  # no global_step_1 at all
    cm = CheckpointManager(tmp_path)
    assert cm.clean_debris() == ["restored global_step_1", "removed .old_global_step_1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["global_step_1", MARKER]
    model, opt = _tiny()
    assert cm.load(cm.resolve("auto"), model, opt, None) == {"v": 2}  # the complete new copy won


@pytest.mark.slow
def test_kill_inside_marker_write_leaves_nothing_behind_after_start_up(tmp_path):
    _kill_at(tmp_path, "marker")
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(f".{MARKER}.tmp-")]
    assert len(leftovers) == 1
    assert (tmp_path / MARKER).read_text().strip() == "1"  # the marker still names the last published step
    cm = CheckpointManager(tmp_path)
    assert cm.clean_debris() == [f"removed {leftovers[0]}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["global_step_1", "global_step_2", MARKER]
    model, opt = _tiny()
    assert cm.load(cm.resolve("auto"), model, opt, None) == {"v": 1}


# The write of the model shard exceeds RLIMIT_FSIZE: the kernel fails it with EFBIG, as a full disk fails it.
WRITE_FAULT = textwrap.dedent(
    """
    import resource, signal, sys, torch
    from torch import nn
    from npu_rl.checkpoint import CheckpointError, CheckpointManager

    torch.manual_seed(0)
    model = nn.Linear(256, 256)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cm = CheckpointManager(sys.argv[1])
    cm.save(1, model, opt, None, {"v": 1}, None, None)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # report EFBIG instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        cm.save(2, model, opt, None, {"v": 2}, None, None)
    except CheckpointError as err:
        print(err)
        sys.exit(3)
    """
)


def test_write_fault_names_the_path_and_keeps_the_previous_checkpoint(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", WRITE_FAULT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env(),
        cwd=ROOT,
    )
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert f"saving the step 2 checkpoint into {tmp_path / '.tmp_global_step_2'} failed" in proc.stdout
    assert f"still {tmp_path / 'global_step_1'}" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["global_step_1", MARKER]  # the half-written step is gone
    model, opt = _tiny_big()
    assert CheckpointManager(tmp_path).load(tmp_path / "global_step_1", model, opt, None) == {"v": 1}


def _tiny_big():
    model = nn.Linear(256, 256)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def test_not_enough_free_space_is_refused_before_writing(tmp_path, monkeypatch):
    model, opt = _tiny()
    cm = CheckpointManager(tmp_path / "ckpt")
    cm.save(1, model, opt, None, {"v": 1}, None, None)
    monkeypatch.setattr(checkpoint_state, "free_bytes", lambda path: 1000)  # where the check reads it
    with pytest.raises(CheckpointError, match="not enough free space") as err:
        cm.save(2, model, opt, None, {"v": 2}, None, None)
    needed = int(checkpoint.estimate_bytes(model.state_dict(), opt) * checkpoint.SPACE_MARGIN)
    assert f"({needed + checkpoint.SPACE_EXTRA_BYTES} bytes" in str(err.value)
    assert str(tmp_path / "ckpt") in str(err.value) and "global_step_1" in str(err.value)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["global_step_1", MARKER]


def test_a_real_tiny_filesystem_is_refused_with_path_and_bytes(tmp_path):
    """A 1 MiB tmpfs where mounting is allowed (root in a container); skipped elsewhere."""
    mnt = tmp_path / "tiny_fs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        model, opt = _tiny_big()  # 263 KB of weights plus the margin for the other files: more than 1 MiB
        with pytest.raises(CheckpointError, match=rf"not enough free space to save step 1 in {mnt}") as err:
            CheckpointManager(mnt).save(1, model, opt, None, {"v": 1}, None, None)
        assert "bytes: parameters and optimizer state" in str(err.value)
        assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_nonfinite_weights_are_never_published(tmp_path):
    model, opt = _tiny()
    cm = CheckpointManager(tmp_path)
    cm.save(1, model, opt, None, {"v": 1}, None, None)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=r"refusing to save step 2 .* NaN/inf \(weight\)"):
        cm.save(2, model, opt, None, {"v": 2}, None, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["global_step_1", MARKER]
