"""Reading checkpoint files without running code from them.

Users resume and merge checkpoints they downloaded, and pickle runs whatever a file tells it to.
torch's DCP reader unpickles `.metadata` with plain `pickle.load`, and its default load planner reads
non-tensor entries (the optimizer's param_groups) with `torch.load(weights_only=False)`. This module
replaces both:

- `SafeFileSystemReader` reads `.metadata` with `MetadataUnpickler`, which resolves only the classes
  torch 2.13 writes into DCP metadata (listed in `_ALLOWED`: the metadata dataclasses, torch.Size,
  dtypes, layouts, memory formats, pathlib paths), and checks that every storage entry names a
  plain file inside the checkpoint folder.
- `SafeLoadPlanner` reads non-tensor entries with `torch.load(weights_only=True)` (plain containers,
  numbers, strings and tensors only). Tensor data DCP already reads with `weights_only=True`.
- `load_plain` is `torch.load(weights_only=True)` for the small files next to the shards.

Anything else fails with `UnsafeCheckpointError` naming the file and the refused global, before a
single object of it is built.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint._traverse import set_element  # what DefaultLoadPlanner.load_bytes uses
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import ReadItem

_DCP_METADATA_CLASSES = (
    "Metadata",
    "MetadataIndex",
    "StorageMeta",
    "TensorProperties",
    "TensorStorageMetadata",
    "ChunkStorageMetadata",
    "BytesStorageMetadata",
    "_MEM_FORMAT_ENCODING",  # TensorProperties pickles its memory format as this enum
)

# module -> names the metadata of torch 2.13 DCP checkpoints refers to (found by recording
# find_class while loading model and optimizer checkpoints written by 1 and 2 ranks).
_ALLOWED: dict[str, frozenset[str]] = {
    "torch.distributed.checkpoint.metadata": frozenset(_DCP_METADATA_CLASSES),
    "torch.distributed.checkpoint.filesystem": frozenset({"_StorageInfo"}),
    "torch.serialization": frozenset({"_get_layout"}),  # looks a layout up by name among torch's own
    "torch": frozenset({"Size"}),  # and every torch.dtype, checked below
    "pathlib": frozenset({"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"}),
    "collections": frozenset({"OrderedDict"}),
}


class UnsafeCheckpointError(ValueError):
    """A checkpoint file asks for something a checkpoint never needs (code, or a path outside it)."""


class MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata, resolving only the globals in `_ALLOWED` (and torch dtypes)."""

    def __init__(self, file: Any, source: str) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if name in _ALLOWED.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise UnsafeCheckpointError(
            f"{self.source}: refusing to load {module}.{name}: DCP checkpoint metadata holds only torch's "
            "checkpoint classes, so this file was made to run code or was not written by torch.distributed."
            "checkpoint. Do not load it; if you wrote it yourself with a newer torch, report the class name"
        )


def load_dcp_metadata(path: Path) -> Metadata:
    """A DCP `.metadata` file through `MetadataUnpickler`; the object must be a `Metadata`."""
    try:
        with open(path, "rb") as fh:
            metadata = MetadataUnpickler(fh, str(path)).load()
    except UnsafeCheckpointError:
        raise
    except Exception as err:  # truncated or garbled files raise anything from EOFError to KeyError
        raise UnsafeCheckpointError(f"{path}: not a readable DCP metadata file ({type(err).__name__}: {err})") from err
    if not isinstance(metadata, Metadata):
        raise UnsafeCheckpointError(f"{path}: holds a {type(metadata).__name__}, not DCP Metadata")
    return metadata


def _check_storage_paths(metadata: Metadata, folder: Path, source: str) -> None:
    """Every shard a metadata entry points to must be a plain file name inside the checkpoint folder."""
    for info in (metadata.storage_data or {}).values():
        rel = getattr(info, "relative_path", None)
        if not isinstance(rel, str) or not rel or PurePosixPath(rel).name != rel or rel in (".", ".."):
            raise UnsafeCheckpointError(f"{source}: storage entry points outside {folder}: {rel!r}")


class SafeFileSystemReader(FileSystemReader):
    """DCP's file reader with `.metadata` read by `MetadataUnpickler`, each file parsed once per reader."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")  # None: the global `.metadata`; a rank: that rank's own (if one was written)
        cache: dict[int | None, Metadata] = self.__dict__.setdefault("_safe_metadata", {})
        if rank not in cache:
            path = Path(self._get_metadata_path(rank))
            metadata = load_dcp_metadata(path)
            _check_storage_paths(metadata, Path(self.path), str(path))
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            cache[rank] = metadata
        return cache[rank]


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner, but non-tensor entries are read with `weights_only=True`."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as err:
            raise UnsafeCheckpointError(
                f"entry {read_item.dest_index.fqn!r} of the checkpoint holds more than plain values: {err}"
            ) from err
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def load_plain(path: Path) -> Any:
    """A small torch file of plain containers, numbers, strings and tensors; anything else is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(f"{path}: holds more than plain values, refusing to load it ({err})") from err
