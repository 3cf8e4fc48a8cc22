"""Merge throughput and peak memory: `python -m npu_rl.merge` on a checkpoint of a few hundred MB.

    .venv/bin/python bench/merge.py [--layers 8] [--hidden 1024] [--world-sizes 1,2]

Builds a random-init Qwen2 model from a config (fp32, ~490 MB with the defaults), writes npu_rl
checkpoints of it from 1 process and from 2 torchrun processes (FSDP2 shards), then merges each in
a fresh process and prints the merge's time, throughput and peak RSS. For contrast it also runs
the "load everything, then save" approach most mergers take. Peak RSS is the merging process's
own high-water resident set (VmHWM, Linux), next to the same process's RSS before it merged anything
(Python + torch + npu_rl imported), so the difference is what merging cost.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Runs in a fresh interpreter: prints {"baseline_mb", "peak_mb", "seconds", "bytes"} as JSON.
_CHILD = r"""
import json, sys, time
import torch
import npu_rl.merge as merge

def high_water_mb():  # VmHWM belongs to this process image; getrusage would carry the parent's over exec
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM")) / 1024

baseline = high_water_mb()
mode, local_dir, target = sys.argv[1:4]
start = time.perf_counter()
if mode == "stream":
    report = merge.merge_checkpoint(local_dir, target)
    size = report.total_bytes
else:  # load every tensor first, then write one file: what a non-streaming merger does
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import save_file
    from torch.distributed.checkpoint import FileSystemReader
    meta = FileSystemReader(local_dir + "/model").read_metadata()
    sd = {k: torch.empty(v.size, dtype=v.properties.dtype) for k, v in meta.state_dict_metadata.items()}
    dcp.load(sd, checkpoint_id=local_dir + "/model", no_dist=True)
    sd.pop("lm_head.weight", None)
    save_file(sd, target + ".safetensors")
    size = sum(t.numel() * t.element_size() for t in sd.values())
seconds = time.perf_counter() - start
peak = high_water_mb()
print(json.dumps({"baseline_mb": baseline, "peak_mb": peak, "seconds": seconds, "bytes": size}))
"""


def build_model(hidden: int, layers: int, vocab: int):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=max(1, hidden // 256),
        intermediate_size=int(hidden * 2.75),
        tie_word_embeddings=True,
        dtype="float32",
    )
    return Qwen2ForCausalLM(config).to(torch.float32)


def save_checkpoint(root: Path, hidden: int, layers: int, vocab: int) -> Path:
    """Write global_step_1 from this process: plain tensors alone, FSDP2 shards under torchrun."""
    import torch

    from npu_rl.checkpoint import CheckpointManager
    from npu_rl.config import FSDPConfig
    from npu_rl.device import Accelerator
    from npu_rl.distributed import destroy, init_distributed, shard_model

    acc = Accelerator("cpu")
    dist = init_distributed(acc)
    model = shard_model(build_model(hidden, layers, vocab), FSDPConfig(), acc, dist, trainable=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    path = CheckpointManager(root, dist=dist).save(1, model, optimizer, None, {"step": 1}, model.config, None)
    destroy()
    return path / "actor"


def run_child(mode: str, local_dir: Path, target: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(local_dir), str(target)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--world-sizes", default="1,2", help="checkpoints to write and merge, by writer world size")
    p.add_argument("--work-dir", default=None, help="scratch folder (default: a temp dir, removed afterwards)")
    p.add_argument("--_save", default=None, help=argparse.SUPPRESS)  # internal: torchrun worker
    args = p.parse_args()
    if args._save:
        save_checkpoint(Path(args._save), args.hidden, args.layers, args.vocab)
        return

    import torch

    torch.set_num_threads(2)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="npu_rl_merge_bench_"))
    model = build_model(args.hidden, args.layers, args.vocab)
    state = model.state_dict()
    total = sum(t.numel() * t.element_size() for k, t in state.items() if k != "lm_head.weight")
    largest = max(t.numel() * t.element_size() for t in state.values())
    print(
        f"model: Qwen2 hidden={args.hidden} layers={args.layers} vocab={args.vocab}, "
        f"{total / 1e6:.0f} MB fp32, largest tensor {largest / 1e6:.0f} MB"
    )
    del model, state
    rows = []
    try:
        for world in [int(w) for w in args.world_sizes.split(",")]:
            root = work / f"ckpt_w{world}"
            save = [sys.executable, __file__, "--hidden", str(args.hidden), "--layers", str(args.layers)]
            save += ["--vocab", str(args.vocab), "--_save", str(root)]
            if world > 1:
                save = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}"]
                save += [__file__, "--hidden", str(args.hidden), "--layers", str(args.layers)]
                save += ["--vocab", str(args.vocab), "--_save", str(root)]
            subprocess.run(save, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            actor = root / "global_step_1" / "actor"
            for mode in ("stream", "load-all"):
                r = run_child(mode, actor, work / f"out_w{world}_{mode}")
                rows.append((world, mode, r))
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)

    head = ("writer ranks", "merge", "seconds", "MB/s", "RSS before", "peak RSS", "added")
    print("{:>12} {:>9} {:>8} {:>7} {:>11} {:>9} {:>7}".format(*head))
    for world, mode, r in rows:
        added = r["peak_mb"] - r["baseline_mb"]
        print(
            f"{world:>12} {mode:>9} {r['seconds']:>8.2f} {r['bytes'] / 1e6 / r['seconds']:>7.0f} "
            f"{r['baseline_mb']:>8.0f} MB {r['peak_mb']:>6.0f} MB {added:>4.0f} MB"
        )


if __name__ == "__main__":
    main()
