"""npu_rl.merge: checkpoints from 1 and 2 real ranks become HF folders that load with identical logits."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from _dist_utils import run_workers
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from npu_rl.checkpoint import CheckpointManager
from npu_rl.config import FSDPConfig
from npu_rl.device import Accelerator
from npu_rl.distributed import DistInfo, shard_model
from npu_rl.merge import MergeError, main, merge_checkpoint, parse_size


def _build(model_dir, info: DistInfo | None = None):
    """The tiny tied-embedding Qwen2 plus two persistent buffers FSDP replicates: a (1,) and a 0-d one."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.model.register_buffer("sample_count", torch.tensor([7.0]))
    model.register_buffer("step_scalar", torch.tensor(3))
    if info is not None:
        model = shard_model(model, FSDPConfig(), Accelerator("cpu"), info, trainable=True)
    return model


def _ids(vocab: int) -> torch.Tensor:
    return torch.randint(3, vocab, (4, 10), generator=torch.Generator().manual_seed(5))


def _train_and_save(model, info: DistInfo, root, model_dir) -> None:
    """One optimizer step (so weights differ from the base), then a checkpoint."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = (
        _ids(model.config.vocab_size)[2 * info.rank : 2 * info.rank + 2]
        if info.world_size > 1
        else _ids(model.config.vocab_size)
    )
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad()
    CheckpointManager(root, dist=info).save(
        1,
        model,
        opt,
        None,
        {"step": 1},
        model.config,
        AutoTokenizer.from_pretrained(model_dir),
        GenerationConfig.from_pretrained(model_dir),
    )


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=_ids(model.config.vocab_size)).logits


def _two_rank_worker(info: DistInfo, model_dir: str, root: str, record: str) -> None:
    model = _build(model_dir, info)
    _train_and_save(model, info, root, model_dir)
    logits = _logits(model)
    if info.is_main:
        torch.save(logits, record)


@pytest.fixture(scope="module")
def plain_ckpt(tiny_model_dir, tmp_path_factory):
    """A world-size-1 checkpoint (no process group) and the trained model's logits."""
    root = tmp_path_factory.mktemp("plain_ckpt")
    model = _build(tiny_model_dir)
    _train_and_save(model, DistInfo(), root, tiny_model_dir)
    return root / "global_step_1" / "actor", _logits(model)


def _check_buffers_and_tie(folder) -> None:
    weights = load_file(folder / "model.safetensors")
    assert weights["model.sample_count"].shape == (1,) and weights["model.sample_count"].item() == 7.0
    assert weights["step_scalar"].shape == () and weights["step_scalar"].dtype == torch.int64
    assert weights["step_scalar"].item() == 3
    assert "lm_head.weight" not in weights  # tied: stored once, as save_pretrained does


@pytest.mark.slow  # spawns processes: ~10-40 s; the quick subset keeps the single-process tests
@pytest.mark.dist
def test_merge_two_rank_checkpoint(tiny_model_dir, tmp_path):
    root, record = tmp_path / "ckpt", tmp_path / "logits.pt"
    run_workers(_two_rank_worker, 2, str(tiny_model_dir), str(root), str(record))
    report = merge_checkpoint(root / "global_step_1" / "actor", tmp_path / "hf")
    _check_buffers_and_tie(tmp_path / "hf")
    assert report.dtypes == {"float32": report.num_tensors - 1, "int64": 1}

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    assert merged.lm_head.weight is merged.model.embed_tokens.weight
    # measured bit-identical on both kinds; the tolerance admits another summation order
    torch.testing.assert_close(_logits(merged), torch.load(record), rtol=1e-5, atol=1e-5)
    # bit-identical to the same checkpoint resumed into a plain model in this process
    resumed = _build(tiny_model_dir)
    with pytest.warns(UserWarning, match="saved by 2 ranks"):
        CheckpointManager(root).load(root / "global_step_1", resumed, None, None)
    assert torch.equal(_logits(merged), _logits(resumed))


def test_merge_single_process_checkpoint(plain_ckpt, tmp_path):
    actor, logits = plain_ckpt
    merge_checkpoint(actor, tmp_path / "hf")
    _check_buffers_and_tie(tmp_path / "hf")
    for name in ("config.json", "tokenizer.json", "generation_config.json"):
        assert (tmp_path / "hf" / name).is_file(), name
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    assert torch.equal(_logits(merged), logits)
    AutoTokenizer.from_pretrained(tmp_path / "hf")


def test_dtype_cast_and_sharded_index(plain_ckpt, tmp_path):
    actor, logits = plain_ckpt
    out = tmp_path / "hf"
    report = merge_checkpoint(actor, out, dtype="bfloat16", max_shard_size="40KB")
    assert len(report.shards) > 1 and not (out / "model.safetensors").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(report.shards)
    assert index["metadata"]["total_size"] == sum((out / s).stat().st_size for s in report.shards) - sum(
        8 + int.from_bytes((out / s).read_bytes()[:8], "little") for s in report.shards
    )
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    tensors = {}
    for shard in report.shards:
        tensors |= load_file(out / shard)
    assert tensors["step_scalar"].dtype == torch.int64  # integers are never cast
    assert tensors["model.norm.weight"].dtype == torch.bfloat16
    merged = AutoModelForCausalLM.from_pretrained(out, dtype="auto")  # the dtype config.json records
    assert merged.dtype == torch.bfloat16
    # bf16 weights: measured max 5.3e-3 on both kinds, 13x below the tolerance
    torch.testing.assert_close(_logits(merged).float(), logits, rtol=0.05, atol=0.05)


def test_missing_pieces_give_clear_errors(plain_ckpt, tmp_path):
    actor, _ = plain_ckpt
    broken = tmp_path / "global_step_1" / "actor"
    shutil.copytree(actor, broken)

    (broken / "metadata.json").unlink()
    with pytest.warns(UserWarning, match="metadata.json is missing"):
        merge_checkpoint(broken.parent, tmp_path / "ok")  # global_step_N is accepted too
    with pytest.raises(MergeError, match="not empty; pass --overwrite"):
        merge_checkpoint(broken, tmp_path / "ok")

    shutil.rmtree(broken / "huggingface")
    with pytest.raises(MergeError, match="--hf_model_dir"):
        merge_checkpoint(broken, tmp_path / "out")
    (broken / "model" / ".metadata").unlink()
    with pytest.raises(MergeError, match="no DCP metadata"):
        merge_checkpoint(broken, tmp_path / "out")
    with pytest.raises(MergeError, match="does not exist"):
        merge_checkpoint(tmp_path / "nowhere", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size("100") == 100
    with pytest.raises(ValueError, match="5GB"):
        parse_size("lots")


def test_cli(plain_ckpt, tmp_path, capsys):
    actor, _ = plain_ckpt
    help_text = subprocess.run(
        [sys.executable, "-m", "npu_rl.merge", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in ("--backend", "--local_dir", "--target_dir", "--dtype", "--max_shard_size"):
        assert flag in help_text
    argv = ["--backend", "fsdp", "--local_dir", str(actor), "--target_dir", str(tmp_path / "hf")]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "wrote" in out
    # progress on stderr, one line per stage when not on a terminal
    n = len(load_file(tmp_path / "hf" / "model.safetensors"))
    assert f"merging into {tmp_path / 'hf'}: started ({n} tensors)" in err
    assert f"merging into {tmp_path / 'hf'}: done, {n} tensors in" in err
    assert main(argv) == 2  # target exists now
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--dtype", "float16"]) == 0


def test_merge_critic_as_token_classifier(tiny_model_dir, tmp_path):
    """PPO's critic (global_step_N/critic, beside the actor) merges into <Arch>ForTokenClassification with
    one label whose logits are the critic's values, with the actor's config and tokenizer."""
    from transformers import AutoModelForTokenClassification

    from npu_rl.critic import ValueModel

    actor = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    critic = ValueModel(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32))
    with torch.no_grad():  # a trained head: zero would not show a wrong mapping
        critic.value_head.weight.normal_(generator=torch.Generator().manual_seed(1))
        critic.value_head.bias.fill_(0.25)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    root = tmp_path / "ckpt"
    critic_optim = torch.optim.AdamW(critic.parameters())
    others = {"critic": (critic, critic_optim, torch.optim.lr_scheduler.LambdaLR(critic_optim, lambda _: 1.0))}
    CheckpointManager(root).save(1, actor, None, None, {"step": 1}, actor.config, tok, others=others)

    report = merge_checkpoint(root / "global_step_1" / "critic", tmp_path / "critic_hf")
    merged = AutoModelForTokenClassification.from_pretrained(tmp_path / "critic_hf", dtype=torch.float32)
    assert type(merged).__name__ == "Qwen2ForTokenClassification" and merged.config.num_labels == 1
    assert (tmp_path / "critic_hf" / "tokenizer_config.json").is_file() and report.num_tensors > 2
    ids = _ids(actor.config.vocab_size)
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    with torch.no_grad():
        expected = critic(ids, torch.ones_like(ids), positions)
        values = merged(input_ids=ids).logits[..., 0]
    torch.testing.assert_close(values, expected, rtol=1e-5, atol=1e-5)
