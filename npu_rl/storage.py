"""Durable file writes: what survives a kill -9 or a power cut, and how much room a write needs.

A rename is durable only once its directory is fsynced, and a file's content only once the file is;
`write_atomic` does both so a reader sees the old or the new content, never a torn one.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import Any

import torch


def fsync_dir(path: Path) -> None:
    """Make renames and new entries in directory `path` durable (a rename is only as durable as its directory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under `root` (HF's save_pretrained and torch.save do not)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new content, durably."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write_durable(tmp, data)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds `path` (its nearest existing ancestor)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
