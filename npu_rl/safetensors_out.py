"""Safetensors files written from a plan of tensors, one group of tensors in memory at a time.

The merge tools (npu_rl.merge for npu_rl checkpoints, npu_rl.merge_verl for verl's) know every
tensor's name, shape and dtype before reading any weight, so the headers and the split into shard
files are computed first (`split_shards`, `header`), then `write_shard` loads tensors in groups of
at most `budget` saved bytes through the caller's `load`, writes and frees them.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from npu_rl.progress import Progress

ST_DTYPE = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


class UnstorableDtype(ValueError):
    """A tensor's dtype has no safetensors code."""


@dataclass
class Entry:
    name: str
    shape: list[int]
    saved_dtype: torch.dtype
    out_dtype: torch.dtype  # written as; saved_dtype is what the checkpoint holds
    source: str = ""  # the checkpoint's name when the tensor is written under another one (the critic's head)

    @property
    def key(self) -> str:
        return self.source or self.name

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * self.out_dtype.itemsize


def parse_size(text: str) -> int:
    """'5GB' -> 5e9, '500MiB' -> 500*2**20, '1024' -> 1024 bytes."""
    m = _SIZE.match(str(text))
    unit = m.group(2).upper() if m else ""
    if not m or unit not in _UNITS:
        raise ValueError(f"cannot read size {text!r}; use e.g. 5GB, 500MB or 2GiB")
    return int(float(m.group(1)) * _UNITS[unit])


def checked_dtype(name: str, dtype: torch.dtype) -> torch.dtype:
    if dtype not in ST_DTYPE:
        raise UnstorableDtype(f"tensor {name!r} has dtype {dtype}, which safetensors cannot store")
    return dtype


def split_shards(entries: list[Entry], max_shard_bytes: int) -> list[list[Entry]]:
    """Greedy split in state-dict order; a tensor larger than the limit gets a shard of its own."""
    shards: list[list[Entry]] = [[]]
    size = 0
    for e in entries:
        if shards[-1] and size + e.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += e.nbytes
    return shards


def header(entries: list[Entry]) -> bytes:
    """The safetensors header: JSON with dtype, shape and byte range per tensor, padded to 8 bytes."""
    header: dict[str, dict] = {"__metadata__": {"format": "pt"}}  # type: ignore[dict-item]
    offset = 0
    for e in entries:
        header[e.name] = {
            "dtype": ST_DTYPE[e.out_dtype],
            "shape": e.shape,
            "data_offsets": [offset, offset + e.nbytes],
        }
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def groups(entries: list[Entry], budget: int) -> list[list[Entry]]:
    """Consecutive tensors batched up to `budget` saved bytes: fewer load calls, same peak memory."""
    out: list[list[Entry]] = [[]]
    size = 0
    for e in entries:
        saved = e.nbytes // e.out_dtype.itemsize * e.saved_dtype.itemsize
        if out[-1] and size + saved > budget:
            out.append([])
            size = 0
        out[-1].append(e)
        size += saved
    return out


def write_shard(
    path: Path,
    entries: list[Entry],
    load: Callable[[list[Entry]], dict[str, torch.Tensor]],
    budget: int,
    bar: Progress,
) -> None:
    with open(path, "wb") as fh:
        fh.write(header(entries))
        for group in groups(entries, budget):
            tensors = load(group)
            for e in group:
                t = tensors.pop(e.name).to(e.out_dtype).contiguous()
                fh.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
                del t
                bar.update()
