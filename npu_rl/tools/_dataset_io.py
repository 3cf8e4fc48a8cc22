"""Shared parts of the dataset converters: find a downloaded dataset's split files, read their rows,
and write rows in verl's parquet schema (what npu_rl.data reads).

Downloads come in a few shapes (`hf download` leaves `<config>/<split>-00000-of-00001.parquet`,
original releases ship `train.jsonl` / `test.jsonl`), so files are matched by the split name in
their file name and grouped by folder; a folder (`--subset`) picks one config when there are several.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from npu_rl.progress import Progress

# verl's instruction suffixes (field notes): the reward's requested answer form follows them.
MATH_INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."
GSM8K_INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'

SPLITS = ("train", "test")
SUFFIXES = (".parquet", ".jsonl", ".json")
_SPLIT_RE = re.compile(r"(?:^|[-_.])(train|test)(?:[-_.]|$)")


class DatasetError(ValueError):
    """Unusable input, with every problem listed by file, row and column."""


def split_of(path: Path) -> str | None:
    m = _SPLIT_RE.search(path.stem.lower())
    return m.group(1) if m else None


# Folder names of a dataset's default config in `hf download` layouts, used when a split is in several.
DEFAULT_SUBSETS = ("main", "default", "data")


def find_split_files(inputs: Iterable[str | Path], subset: str | None = None) -> dict[str, list[Path]]:
    """{split: files} from files and/or folders.

    A split found in several folders (one per dataset config) is read from the folder named `subset`,
    else from the default config's folder (DEFAULT_SUBSETS) when there is one, else it is an error.
    """
    inputs = list(inputs)
    candidates: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            candidates += sorted(
                p for p in item.rglob("*") if p.suffix in SUFFIXES and not any(s.startswith(".") for s in p.parts)
            )
        elif item.is_file():
            candidates.append(item)
        else:
            raise DatasetError(f"{item}: no such file or folder")
    if subset:
        candidates = [p for p in candidates if subset in p.parent.parts]
    found: dict[str, list[Path]] = defaultdict(list)
    for path in candidates:
        split = split_of(path)
        if split:
            found[split].append(path)
    if not found:
        raise DatasetError(
            f"no train/test files ({', '.join(SUFFIXES)} with 'train' or 'test' in the name) under "
            f"{', '.join(map(str, inputs))}" + (f" in a folder named {subset!r}" if subset else "")
        )
    for split, files in found.items():
        folders = sorted({p.parent for p in files})
        if len(folders) > 1:
            default = [f for f in folders if f.name in DEFAULT_SUBSETS]
            if len(default) != 1:
                names = ", ".join(sorted({f.name for f in folders}))
                raise DatasetError(f"{split} files in several folders ({names}): pass --subset <folder> to pick one")
            found[split] = [p for p in files if p.parent == default[0]]
    return {split: sorted(files) for split, files in found.items()}


def read_records(path: Path) -> list[dict[str, Any]]:
    """Rows of a parquet, JSON Lines or JSON (list of objects) file."""
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        rows = []
        for line_no, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DatasetError(f"{path}: line {line_no}: not JSON ({err})") from err
        return rows
    data = json.loads(text)
    if isinstance(data, dict):  # {"0": {...}, "1": {...}} as in OpenCompass-style files
        data = list(data.values())
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of objects")
    return data


def iter_rows(files: Iterable[Path], desc: str) -> Iterator[tuple[Path, int, dict[str, Any]]]:
    """(file, row number, row) over `files`, with a progress line (rows done / total, ETA) on stderr."""
    loaded = [(path, read_records(path)) for path in files]
    with Progress(desc, total=sum(len(rows) for _, rows in loaded), unit="rows") as bar:
        for path, rows in loaded:
            for i, row in enumerate(rows):
                yield path, i, row
                bar.update()


def require_text(row: dict[str, Any], column: str, where: str, problems: list[str]) -> str:
    value = row.get(column)
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{where}: column {column!r} is missing or empty")
        return ""
    return value


def verl_row(
    data_source: str, problem: str, instruction: str, ground_truth: str, split: str, index: int, extra: dict[str, Any]
) -> dict[str, Any]:
    """One row in verl's schema: the user turn is the problem followed by the instruction."""
    return {
        "data_source": data_source,
        "prompt": [{"role": "user", "content": f"{problem.strip()} {instruction}"}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": ground_truth},
        "extra_info": {"split": split, "index": index, **extra},
    }


def raise_problems(problems: list[str], limit: int = 20) -> None:
    if problems:
        shown = "\n  ".join(problems[:limit])
        more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
        raise DatasetError(f"{len(problems)} bad rows (nothing written):\n  {shown}{more}")


def write_parquet(rows: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def converter_parser(doc: str, subset_help: str) -> argparse.ArgumentParser:
    """The options every download converter shares: --input, --output-dir, --subset."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--input", nargs="+", required=True, help="download folder and/or split files")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--subset", default=None, help=subset_help)
    return p


def report_written(written: dict[str, Path]) -> int:
    """Print each written split's file; the converters' exit code."""
    for split, path in written.items():
        print(f"{split}: {path}")
    return 0
