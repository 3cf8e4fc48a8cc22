"""Turn a sharded npu_rl checkpoint into a Hugging Face model folder, one tensor at a time.

    python -m npu_rl.merge [merge] --backend fsdp \\
        --local_dir checkpoints/<project>/<experiment>/global_step_N/actor --target_dir <out>

(`merge` is optional: verl's model merger spells it that way.) verl's own FSDP checkpoints
(`model_world_size_W_rank_R.pt`) are converted too, by `npu_rl.merge_verl`.

Why it streams: the DCP metadata already records every tensor's global shape and dtype, so the
safetensors headers (and the shard split) are computed before any weight is read; tensors are then
loaded from the rank shards in small groups (never more bytes than the largest tensor), written,
and freed. Peak memory stays near the largest tensor, whatever the model size and whatever world
size wrote the checkpoint.

What it gets right where other mergers break: a world-size-1 save (plain tensors) and an N-rank
save (sharded DTensors) read the same way; replicated buffers and 0-d tensors keep their shape
(they are stored once, never concatenated across ranks); dtypes are kept as saved unless
`--dtype` says otherwise; tied input/output embeddings are written once, as `save_pretrained`
does; a missing or partial checkpoint gives an error saying what is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from npu_rl import lora
from npu_rl.cli import UserError, entry_point
from npu_rl.progress import Progress
from npu_rl.safe_load import SafeFileSystemReader
from npu_rl.safetensors_out import Entry, checked_dtype, parse_size, split_shards, write_shard

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class MergeError(RuntimeError):
    """The checkpoint cannot be merged; the message names the missing piece and the path."""


@dataclass
class MergeReport:
    target_dir: Path
    num_tensors: int
    total_bytes: int
    shards: list[str]
    largest_tensor_bytes: int
    seconds: float
    dtypes: dict[str, int] = field(default_factory=dict)


def _find_actor_dir(local_dir: Path) -> Path:
    if (local_dir / "actor").is_dir() and not (local_dir / "model").is_dir():
        local_dir = local_dir / "actor"  # a global_step_N directory was given
    if not local_dir.is_dir():
        raise MergeError(f"--local_dir {local_dir} does not exist; expected <ckpt>/global_step_N/actor")
    from npu_rl.merge_verl import is_verl_checkpoint

    if is_verl_checkpoint(local_dir):
        return local_dir
    if not (local_dir / "model" / ".metadata").is_file():
        raise MergeError(
            f"no DCP metadata at {local_dir / 'model' / '.metadata'} and no model_world_size_W_rank_R.pt: neither "
            "an npu_rl nor a verl FSDP checkpoint (expected <ckpt>/global_step_N/actor), or its save was "
            "interrupted before completing"
        )
    return local_dir


def _hf_dir(actor: Path, override: Path | None) -> Path:
    hf = override or actor / "huggingface"
    if override is None and not hf.is_dir() and (actor.parent / "actor" / "huggingface").is_dir():
        hf = actor.parent / "actor" / "huggingface"  # the critic shares the actor's config and tokenizer
    if not (hf / "config.json").is_file():
        raise MergeError(
            f"no config.json in {hf}: the checkpoint's huggingface/ folder is missing; pass "
            "--hf_model_dir <folder with the original config.json and tokenizer>"
        )
    return hf


def _drop_tied(entries: list[Entry], tie_word_embeddings: bool) -> list[Entry]:
    names = {e.name for e in entries}
    if tie_word_embeddings and "lm_head.weight" in names and "model.embed_tokens.weight" in names:
        entries = [e for e in entries if e.name != "lm_head.weight"]  # from_pretrained re-ties it
    return entries


def plan_tensors(actor: Path, dtype: torch.dtype | None, tie_word_embeddings: bool) -> list[Entry]:
    """Every tensor to write, from DCP metadata alone (no weights read)."""
    meta = SafeFileSystemReader(actor / "model").read_metadata()  # never unpickles code
    entries = []
    for name, item in meta.state_dict_metadata.items():
        if not isinstance(item, TensorStorageMetadata):
            warnings.warn(f"skipping non-tensor entry {name!r} of the model state dict", stacklevel=2)
            continue
        saved = checked_dtype(name, item.properties.dtype)
        out = dtype if dtype is not None and saved.is_floating_point else saved
        entries.append(Entry(name, list(item.size), saved, out))
    entries = _drop_tied(entries, tie_word_embeddings)
    if not entries:
        raise MergeError(f"{actor / 'model'} holds no tensors")
    return entries


def _load(reader: FileSystemReader, entries: list[Entry]) -> dict[str, torch.Tensor]:
    """Read full tensors from however many rank chunks hold them (one DCP call for the group)."""
    tensors = {e.key: torch.empty(e.shape, dtype=e.saved_dtype) for e in entries}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(tensors, storage_reader=reader, no_dist=True)
    return {e.name: tensors[e.key] for e in entries}


def _write_lora_merged(work: Path, entries: list[Entry], load: Callable[[list[Entry]], dict[str, torch.Tensor]]) -> str:
    """A LoRA checkpoint (npu_rl.lora): adapters merged into their base weights under the base
    model's names, one file. Reads the whole model at once (not streamed: A, B and the base
    weight of a layer are needed together)."""
    from safetensors.torch import save_file

    tensors = load(entries)
    out = {e.name: e.out_dtype for e in entries}
    order = sorted(tensors, key=lambda n: n != lora.SCALING_BUFFER)  # the scaling first
    merged = {}
    for name, tensor in lora.merged_tensors((n, tensors.pop(n)) for n in order):
        source = name if name in out else name.replace(".weight", ".base_layer.weight")
        merged[name] = tensor.to(out.get(source, tensor.dtype)).contiguous()
    save_file(merged, str(work / "model.safetensors"), metadata={"format": "pt"})
    return "model.safetensors"


CRITIC_HEAD = "value_head."  # npu_rl.critic.ValueModel's scalar head


def as_token_classifier(entries: list[Entry]) -> list[Entry]:
    """A critic (`global_step_N/critic`) written as Hugging Face's `<Arch>ForTokenClassification` with one
    label, the class verl builds its critic from: the head `value_head.*` becomes `score.*`, so
    `AutoModelForTokenClassification.from_pretrained(folder)(ids).logits[..., 0]` are the values."""
    return [
        Entry("score." + e.name.removeprefix(CRITIC_HEAD), e.shape, e.saved_dtype, e.out_dtype, source=e.name)
        if e.name.startswith(CRITIC_HEAD)
        else e
        for e in entries
    ]


def _critic_config(out: Path) -> None:
    config = json.loads((out / "config.json").read_text())
    config["architectures"] = [
        arch.replace("ForCausalLM", "ForTokenClassification") for arch in config.get("architectures") or []
    ]
    config["id2label"], config["label2id"] = {"0": "VALUE"}, {"VALUE": 0}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def _write_config(hf: Path, out: Path, dtypes: Counter) -> None:
    """Copy config/tokenizer files and record the dtype the weights are actually stored in."""
    for item in hf.iterdir():
        if (
            item.is_file()
            and not item.name.endswith((".safetensors", ".bin"))
            and item.name != "model.safetensors.index.json"
        ):
            shutil.copy2(item, out / item.name)
    floats = {d: n for d, n in dtypes.items() if d.is_floating_point}
    if floats:
        main = str(max(floats, key=floats.get)).removeprefix("torch.")  # type: ignore[arg-type]
        config = json.loads((out / "config.json").read_text())
        config["dtype"] = main
        if "torch_dtype" in config:
            config["torch_dtype"] = main
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def merge_checkpoint(
    local_dir: str | Path,
    target_dir: str | Path,
    dtype: str | None = None,
    max_shard_size: str = "5GB",
    hf_model_dir: str | Path | None = None,
    overwrite: bool = False,
) -> MergeReport:
    """Write the HF folder for checkpoint `local_dir` into `target_dir` (built aside, renamed at the end)."""
    if sys.byteorder != "little":
        raise MergeError("safetensors files are little-endian; merge on a little-endian machine")
    start = time.perf_counter()
    actor = _find_actor_dir(Path(local_dir))
    hf = _hf_dir(actor, Path(hf_model_dir) if hf_model_dir else None)
    config = json.loads((hf / "config.json").read_text())
    if dtype is not None and dtype not in DTYPES:
        raise MergeError(f"--dtype {dtype!r} is not one of {sorted(DTYPES)}")
    tie = bool(config.get("tie_word_embeddings", False))
    verl = None
    if (actor / "model" / ".metadata").is_file():
        entries = plan_tensors(actor, DTYPES.get(dtype or ""), tie)
    else:  # a verl checkpoint (_find_actor_dir accepted nothing else)
        from npu_rl.merge_verl import VerlSource

        verl = VerlSource(actor)
        entries = _drop_tied(verl.entries(DTYPES.get(dtype or "")), tie)
        if not entries:
            raise MergeError(f"{actor} holds no tensors")

    target = Path(target_dir)
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise MergeError(f"--target_dir {target} exists and is not empty; pass --overwrite to replace it")
    critic = any(e.name.startswith(CRITIC_HEAD) for e in entries)
    if critic:
        entries = as_token_classifier(entries)
    if verl is None and not critic and not (actor / "metadata.json").is_file():
        warnings.warn(f"{actor / 'metadata.json'} is missing; merging from the DCP metadata alone", stacklevel=2)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = target.with_name(f".{target.name}.merging-{os.getpid()}")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()

    shards = split_shards(entries, parse_size(max_shard_size))
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    total = sum(e.nbytes for e in entries)
    dtypes = Counter(e.out_dtype for e in entries)
    try:
        if verl is not None:
            load = verl.load
        else:
            reader = SafeFileSystemReader(actor / "model")  # metadata parsed once, safely

            def load(group: list[Entry]) -> dict[str, torch.Tensor]:
                return _load(reader, group)

        budget = max(e.nbytes // e.out_dtype.itemsize * e.saved_dtype.itemsize for e in entries)
        if any(lora.is_lora_name(e.name) for e in entries):
            names = [_write_lora_merged(work, entries, load)]
            shards = [entries]
        with Progress(f"merging into {target}", total=len(entries), unit="tensors") as bar:
            for name, shard in zip(names, shards, strict=True):
                if (work / name).exists():  # the LoRA merge wrote it whole
                    bar.update(len(shard))
                else:
                    write_shard(work / name, shard, load, budget, bar)
        if len(shards) > 1:
            index = {
                "metadata": {"total_size": total},
                "weight_map": {e.name: name for name, shard in zip(names, shards, strict=True) for e in shard},
            }
            (work / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        _write_config(hf, work, dtypes)
        if critic:
            _critic_config(work)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)  # never leave a half-written folder behind
        raise

    if target.exists():
        shutil.rmtree(target)
    os.replace(work, target)
    return MergeReport(
        target_dir=target,
        num_tensors=len(entries),
        total_bytes=total,
        shards=names,
        largest_tensor_bytes=max(e.nbytes for e in entries),
        seconds=time.perf_counter() - start,
        dtypes={str(d).removeprefix("torch."): n for d, n in dtypes.items()},
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m npu_rl.merge",
        usage="python -m npu_rl.merge [merge] --backend fsdp --local_dir DIR --target_dir DIR [options]",
        description=(
            "Merge an npu_rl FSDP checkpoint (torch.distributed.checkpoint shards, any world size) or a verl "
            "FSDP checkpoint (model_world_size_W_rank_R.pt + fsdp_config.json) into a "
            "Hugging Face model folder: safetensors weights (sharded with model.safetensors.index.json above "
            "--max_shard_size), config.json, tokenizer and generation config. Tensors are streamed in groups "
            "no larger than the largest tensor, so peak memory stays near twice that, whatever the model size."
        ),
        epilog=(
            "example: python -m npu_rl.merge --backend fsdp "
            "--local_dir checkpoints/npu_rl/run/global_step_100/actor --target_dir models/step100 --dtype bfloat16"
        ),
    )
    p.add_argument("--backend", required=True, choices=["fsdp"], help="checkpoint format (FSDP2 + DCP)")
    p.add_argument(
        "--local_dir",
        required=True,
        help="<ckpt>/global_step_N/actor (global_step_N also accepted), or .../critic for PPO's value model",
    )
    p.add_argument("--target_dir", required=True, help="output Hugging Face folder (built aside, then renamed)")
    p.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default=None,
        help="cast floating-point weights to this dtype (default: keep the saved dtype, fp32 master weights)",
    )
    p.add_argument("--max_shard_size", default="5GB", help="split weights into files of at most this size (5GB)")
    p.add_argument("--hf_model_dir", default=None, help="take config/tokenizer from here instead of huggingface/")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --target_dir")
    return p


@entry_point("npu_rl.merge")
def main(argv: list[str] | None = None) -> int:
    """Merge; a bad checkpoint path or option ends as one message and exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["merge"]:  # verl's spelling: python -m verl.model_merger merge --backend fsdp ...
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    try:
        parse_size(args.max_shard_size)
    except ValueError as err:
        raise UserError(f"--max_shard_size: {err}") from err
    report = merge_checkpoint(
        args.local_dir, args.target_dir, args.dtype, args.max_shard_size, args.hf_model_dir, args.overwrite
    )
    print(
        f"wrote {report.num_tensors} tensors ({report.total_bytes / 1e6:.1f} MB, {report.dtypes}) in "
        f"{len(report.shards)} file(s) to {report.target_dir} in {report.seconds:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
