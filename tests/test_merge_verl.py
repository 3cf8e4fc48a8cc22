"""npu_rl.merge on verl's own FSDP checkpoints: model_world_size_W_rank_R.pt files written here the way
verl's checkpoint manager writes them (FSDP2 state dicts under gloo across 2 processes, and a
single-rank save with plain tensors), merged into a Hugging Face folder whose logits equal the model's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _dist_utils import run_workers
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from npu_rl.config import FSDPConfig
from npu_rl.device import Accelerator
from npu_rl.distributed import DistInfo, shard_model
from npu_rl.merge import MergeError, main, merge_checkpoint
from npu_rl.merge_verl import load_rank_file


def _build(model_dir: str) -> torch.nn.Module:
    """The tiny tied Qwen2, a replicated (1,) buffer and a 0-d one, and a parameter of odd length 5
    (FSDP2 then shards it unevenly: 3 + 2 rows)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.model.register_buffer("sample_count", torch.tensor([7.0]))
    model.register_buffer("step_scalar", torch.tensor(3))
    model.model.register_parameter("odd", torch.nn.Parameter(torch.arange(10.0).reshape(5, 2)))
    return model


def _ids(vocab: int) -> torch.Tensor:
    return torch.randint(3, vocab, (4, 10), generator=torch.Generator().manual_seed(5))


def _save_hf_folder(model: torch.nn.Module, model_dir: str, actor: Path) -> None:
    model.config.save_pretrained(actor / "huggingface")
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(actor / "huggingface")


def _fsdp2_worker(info: DistInfo, model_dir: str, actor: str) -> None:
    actor_dir = Path(actor)
    model = shard_model(_build(model_dir), FSDPConfig(), Accelerator("cpu"), info, trainable=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = _ids(model.config.vocab_size)[2 * info.rank : 2 * info.rank + 2]
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    state = model.state_dict()  # DTensor parameters, plain buffers: what verl saves with FSDP2
    assert any(hasattr(v, "placements") for v in state.values())
    torch.save(state, actor_dir / f"model_world_size_{info.world_size}_rank_{info.rank}.pt")
    full = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).clone() for k, v in state.items()}
    with torch.no_grad():
        logits = model(input_ids=_ids(model.config.vocab_size)).logits
    if info.is_main:
        (actor_dir / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": info.world_size}))
        _save_hf_folder(model, model_dir, actor_dir)
        torch.save({"state": full, "logits": logits}, actor_dir.parent / "reference.pt")


@pytest.fixture(scope="module")
def verl_fsdp2_ckpt(tiny_model_dir, tmp_path_factory):
    actor = tmp_path_factory.mktemp("verl_ckpt") / "global_step_1" / "actor"
    actor.mkdir(parents=True)
    run_workers(_fsdp2_worker, 2, str(tiny_model_dir), str(actor))
    return actor, torch.load(actor.parent / "reference.pt")


@pytest.mark.slow  # with the next test, ~8 s: a 2-rank verl save in subprocesses
@pytest.mark.dist
def test_verl_fsdp2_two_rank_checkpoint_merges_to_the_same_model(verl_fsdp2_ckpt, tmp_path):
    actor, reference = verl_fsdp2_ckpt
    report = merge_checkpoint(actor.parent, tmp_path / "hf")  # global_step_N accepted, as for our checkpoints
    weights = load_file(tmp_path / "hf" / "model.safetensors")
    assert "lm_head.weight" not in weights  # tied: stored once
    for name, tensor in reference["state"].items():
        if name != "lm_head.weight":
            assert weights[name].dtype == tensor.dtype and torch.equal(weights[name], tensor), name
    assert weights["model.sample_count"].shape == (1,)  # replicated buffer: once, not concatenated
    assert weights["step_scalar"].shape == () and weights["step_scalar"].dtype == torch.int64
    assert weights["model.odd"].shape == (5, 2)  # uneven shards rebuilt
    assert report.dtypes == {"float32": report.num_tensors - 1, "int64": 1}
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    assert merged.lm_head.weight is merged.model.embed_tokens.weight
    with torch.no_grad():
        logits = merged(input_ids=_ids(merged.config.vocab_size)).logits
    torch.testing.assert_close(logits, reference["logits"], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.dist
def test_verl_spelling_of_the_merge_command(verl_fsdp2_ckpt, tmp_path):
    actor, _ = verl_fsdp2_ckpt
    cmd = [sys.executable, "-m", "npu_rl.merge", "merge", "--backend", "fsdp", "--local_dir", str(actor)]
    done = subprocess.run([*cmd, "--target_dir", str(tmp_path / "hf")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "hf" / "model.safetensors").is_file() and (tmp_path / "hf" / "tokenizer.json").is_file()


def test_single_rank_plain_tensor_save_keeps_dtypes(tiny_model_dir, tmp_path):
    actor = tmp_path / "global_step_3" / "actor"
    actor.mkdir(parents=True)
    model = _build(str(tiny_model_dir)).to(torch.bfloat16)
    model.model.norm.weight.data = model.model.norm.weight.data.float()  # one fp32 tensor among bf16 ones
    torch.save(model.state_dict(), actor / "model_world_size_1_rank_0.pt")
    (actor / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": 1}))
    _save_hf_folder(model, str(tiny_model_dir), actor)
    assert main(["merge", "--backend", "fsdp", "--local_dir", str(actor), "--target_dir", str(tmp_path / "hf")]) == 0
    weights = load_file(tmp_path / "hf" / "model.safetensors")
    for name, tensor in model.state_dict().items():
        if name != "lm_head.weight":
            assert weights[name].dtype == tensor.dtype and torch.equal(weights[name], tensor), name
    assert weights["model.norm.weight"].dtype == torch.float32
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"


class _NotATensor:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_loading_never_unpickles_arbitrary_objects(tmp_path, capsys):
    path = tmp_path / "model_world_size_1_rank_0.pt"
    torch.save({"w": torch.ones(2), "payload": _NotATensor()}, path)
    with pytest.raises(MergeError, match="weights only"):
        load_rank_file(path)
    assert "this must never run" not in capsys.readouterr().out


def test_inconsistent_verl_checkpoints_give_clear_errors(tmp_path):
    actor = tmp_path / "actor"
    actor.mkdir()
    torch.save({"w": torch.ones(2)}, actor / "model_world_size_2_rank_0.pt")
    (actor / "huggingface").mkdir()
    (actor / "huggingface" / "config.json").write_text("{}")
    with pytest.raises(MergeError, match=r"no model_world_size_2_rank_R\.pt for R=\[1\]"):
        merge_checkpoint(actor, tmp_path / "out")
    torch.save({"w": torch.zeros(2)}, actor / "model_world_size_2_rank_1.pt")
    with pytest.warns(UserWarning, match="fsdp_config.json is missing"), pytest.raises(MergeError, match="differs"):
        merge_checkpoint(actor, tmp_path / "out")
    assert not (tmp_path / "out").exists()
