"""npu_rl.checkpoint: real DCP checkpoints written, killed mid-save, resolved and resumed."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from _dist_utils import run_workers
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from npu_rl.checkpoint import MARKER, CheckpointError, CheckpointManager
from npu_rl.config import FSDPConfig
from npu_rl.device import Accelerator
from npu_rl.distributed import DistInfo, all_reduce, iter_full_state_dict, shard_model


def _schedule(step: int) -> float:
    return min(1.0, (step + 1) / 4)


def _setup(model_dir, world: DistInfo | None = None):
    """Model, AdamW and a warmup schedule as a trainer builds them (sharded when distributed)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if world is not None:
        model = shard_model(model, FSDPConfig(), Accelerator("cpu"), world, trainable=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule)
    return model, opt, sched


def _batch(vocab: int, seed: int) -> torch.Tensor:
    return torch.randint(3, vocab, (4, 10), generator=torch.Generator().manual_seed(seed))


def _train_step(model, opt, sched, ids: torch.Tensor) -> float:
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()
    return loss.item()


def _draws() -> tuple:
    return torch.rand(3).tolist(), random.random(), float(np.random.rand())


def _save(cm: CheckpointManager, step: int, model, opt, sched, model_dir, state=None):
    return cm.save(
        step,
        model,
        opt,
        sched,
        state if state is not None else {"step": step, "sampler": {"epoch": 0, "index": 4 * step}},
        model.config,
        AutoTokenizer.from_pretrained(model_dir),
        GenerationConfig.from_pretrained(model_dir),
    )


def test_round_trip_single_process(tiny_model_dir, tmp_path):
    model, opt, sched = _setup(tiny_model_dir)
    _train_step(model, opt, sched, _batch(model.config.vocab_size, 0))
    cm = CheckpointManager(tmp_path / "ckpt")
    path = _save(cm, 1, model, opt, sched, tiny_model_dir)
    expected_draws = _draws()

    assert path == tmp_path / "ckpt" / "global_step_1"
    assert (tmp_path / "ckpt" / MARKER).read_text().strip() == "1"
    actor = path / "actor"
    meta = json.loads((actor / "metadata.json").read_text())
    assert meta["step"] == 1 and meta["world_size"] == 1 and meta["mesh"] is None
    assert meta["dtypes"] == {"float32": len(model.state_dict())} and meta["tie_word_embeddings"] is True
    for name in ("config.json", "tokenizer.json", "generation_config.json"):
        assert (actor / "huggingface" / name).is_file(), name

    fresh, fresh_opt, fresh_sched = _setup(tiny_model_dir)
    state = cm.load(cm.resolve("auto"), fresh, fresh_opt, fresh_sched)
    assert state == {"step": 1, "sampler": {"epoch": 0, "index": 4}}
    assert _draws() == expected_draws
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight
    assert fresh_sched.state_dict() == sched.state_dict()
    assert fresh_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    for a, b in zip(opt.state.values(), fresh_opt.state.values(), strict=True):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
        assert torch.equal(a["step"], b["step"])
    # the next step of the restored run is the next step of the original
    ids = _batch(model.config.vocab_size, 1)
    assert _train_step(fresh, fresh_opt, fresh_sched, ids) == _train_step(model, opt, sched, ids)


def _tiny():
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, opt


def test_resolve_modes_and_errors(tmp_path):
    cm = CheckpointManager(tmp_path / "ckpt")
    assert cm.resolve("auto") is None and cm.resolve("disable") is None
    model, opt = _tiny()
    path = cm.save(3, model, opt, None, {"step": 3}, None, None)
    assert cm.resolve("auto") == path
    assert cm.resolve("disable") is None
    assert cm.resolve(str(path)) == path and cm.resolve(str(path / "actor")) == path
    with pytest.raises(CheckpointError, match="no such directory"):
        cm.resolve(str(tmp_path / "nope" / "global_step_9"))
    (tmp_path / "other").mkdir()
    with pytest.raises(CheckpointError, match="global_step_N"):
        cm.resolve(str(tmp_path / "other"))
    half = tmp_path / "ckpt" / "global_step_7"
    (half / "actor" / "model").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        cm.resolve(str(half))
    assert cm.resolve("auto") == path  # the half-written step 7 is never picked


def test_max_to_keep_and_stale_marker(tmp_path):
    cm = CheckpointManager(tmp_path, max_to_keep=2)
    model, opt = _tiny()
    for step in (1, 2, 3):
        cm.save(step, model, opt, None, {"step": step}, None, None)
    assert cm.complete_steps() == [2, 3]
    (tmp_path / MARKER).write_text("9\n")  # names a checkpoint that is gone
    assert cm.latest() == tmp_path / "global_step_3"
    (tmp_path / MARKER).unlink()
    assert cm.latest() == tmp_path / "global_step_3"


def test_trainer_state_must_be_plain_and_is_checked_before_writing(tmp_path):
    cm = CheckpointManager(tmp_path)
    model, opt = _tiny()
    with pytest.raises(TypeError, match="trainer_state"):
        cm.save(1, model, opt, None, {"sampler": random.Random(0)}, None, None)
    assert not any(tmp_path.iterdir())


def test_same_step_saved_twice_is_replaced(tmp_path):
    cm = CheckpointManager(tmp_path)
    model, opt = _tiny()
    cm.save(1, model, opt, None, {"v": 1}, None, None)
    cm.save(1, model, opt, None, {"v": 2}, None, None)
    assert cm.load(cm.resolve("auto"), model, opt, None) == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["global_step_1", MARKER]


KILL_MID_SAVE = textwrap.dedent(
    """
    import os, signal, sys, torch
    from torch import nn
    from npu_rl.checkpoint import CheckpointManager

    class DiesWhenSaved:
        # The scheduler is saved after the model and optimizer shards: SIGKILL lands mid-save.
        def state_dict(self):
            os.kill(os.getpid(), signal.SIGKILL)

    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cm = CheckpointManager(sys.argv[1])
    cm.save(1, model, opt, None, {"step": 1}, None, None)
    cm.save(2, model, opt, DiesWhenSaved(), {"step": 2}, None, None)
    """
)


@pytest.mark.slow  # spawns processes: ~10-40 s; the quick subset keeps the single-process tests
def test_kill_9_mid_save_keeps_previous_latest(tmp_path):
    root = tmp_path / "ckpt"
    proc = subprocess.run([sys.executable, "-c", KILL_MID_SAVE, str(root)], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()
    assert (root / ".tmp_global_step_2" / "actor" / "model" / ".metadata").is_file()  # died after the shards
    assert not (root / "global_step_2").exists()
    assert (root / MARKER).read_text().strip() == "1"
    cm = CheckpointManager(root)
    assert cm.resolve("auto") == root / "global_step_1"
    model, opt = _tiny()
    assert cm.load(cm.resolve("auto"), model, opt, None) == {"step": 1}
    cm.save(2, model, opt, None, {"step": 2}, None, None)  # the next save clears the debris
    assert sorted(p.name for p in root.iterdir()) == ["global_step_1", "global_step_2", MARKER]


def _two_rank_worker(info: DistInfo, model_dir: str, root: str, record: str) -> None:
    model, opt, sched = _setup(model_dir, info)
    vocab = model.config.vocab_size
    rank_half = slice(2 * info.rank, 2 * info.rank + 2)
    _train_step(model, opt, sched, _batch(vocab, 0)[rank_half])
    cm = CheckpointManager(root, dist=info)
    _save(cm, 1, model, opt, sched, model_dir)
    draws = _draws()
    full = {k: v.clone() for k, v in iter_full_state_dict(model)}
    ids = _batch(vocab, 1)
    loss = model(input_ids=ids[rank_half], labels=ids[rank_half]).loss.detach()
    next_loss = all_reduce(loss, "mean").item()

    # resume at the same world size into freshly built, sharded objects
    fresh, fresh_opt, fresh_sched = _setup(model_dir, info)
    assert cm.load(cm.resolve("auto"), fresh, fresh_opt, fresh_sched) == {
        "step": 1,
        "sampler": {"epoch": 0, "index": 4},
    }
    assert _draws() == draws, "this rank's RNG streams were not restored"
    for k, v in iter_full_state_dict(fresh):
        assert torch.equal(v, full[k]), k
    for a, b in zip(opt.state.values(), fresh_opt.state.values(), strict=True):
        assert torch.equal(a["exp_avg"].full_tensor(), b["exp_avg"].full_tensor())
    assert fresh_sched.state_dict() == sched.state_dict()
    if info.is_main:
        torch.save({"full": full, "next_loss": next_loss}, record)


@pytest.mark.slow  # spawns processes: ~10-40 s; the quick subset keeps the single-process tests
@pytest.mark.dist
def test_two_rank_checkpoint_resumes_at_two_and_one_rank(tiny_model_dir, tmp_path):
    root, record = tmp_path / "ckpt", tmp_path / "record.pt"
    run_workers(_two_rank_worker, 2, str(tiny_model_dir), str(root), str(record))
    saved = torch.load(record)
    meta = json.loads((root / "global_step_1" / "actor" / "metadata.json").read_text())
    assert meta["world_size"] == 2 and meta["mesh"]["shape"] == [2]

    # one process, no process group: DCP reshards the 2-rank checkpoint into plain tensors
    model, opt, sched = _setup(tiny_model_dir)
    cm = CheckpointManager(root)
    with pytest.warns(UserWarning, match="saved by 2 ranks, resuming with 1"):
        state = cm.load(cm.resolve("auto"), model, opt, sched)
    assert state["step"] == 1
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved["full"][k]), k
    assert sched.last_epoch == 1
    ids = _batch(model.config.vocab_size, 1)
    loss = model(input_ids=ids, labels=ids).loss.item()
    torch.testing.assert_close(loss, saved["next_loss"], rtol=1e-6, atol=0)  # measured 0 on both kinds
    _train_step(model, opt, sched, ids)  # the restored optimizer state steps without error
