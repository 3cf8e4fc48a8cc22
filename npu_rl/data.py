"""Prompts for GRPO from parquet files in verl's row schema, validated before any compute.

Row: `data_source` (str), `prompt` (list of {role, content}), `reward_model.ground_truth` (str or
number), optional `ability` (default "math", as every verl math preprocessor writes; nothing branches
on it) and `extra_info` (a mapping passed to the reward untouched). Every row of every file is checked
before the first token is computed, and all problems are raised in one `DataError` naming file, 0-based
row and column, so a user fixes a file in one pass; one mistake over many rows reads as one line.
Overlong prompts are dropped with a logged count (never silently) or are errors. `BatchSampler`'s
position is part of the checkpoint and a resume continues with exactly the next batch, also at an epoch
boundary (where verl's dataloader skipped data).
"""

from __future__ import annotations

import difflib
import logging
import math
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from npu_rl.config import DataConfig

logger = logging.getLogger(__name__)

DEFAULT_ABILITY = "math"
ROLES = ("system", "user", "assistant")
MAX_REPORTED = 10  # problem lines shown in one DataError; the total is always counted
MAX_ROWS_SHOWN = 5  # row numbers listed per problem line before "and N more"


class DataError(ValueError):
    """Bad training data, with every problem found (`problems`), each naming file, row and column."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


@dataclass(frozen=True)
class PromptRecord:
    """One validated, tokenized prompt: what rollout and reward consume.

    `index` is the row's position in the concatenated input files before filtering, so it stays the
    same whatever `max_prompt_length` drops; within one batch it identifies the prompt's GRPO group.
    """

    index: int
    prompt_ids: list[int]
    prompt_text: str  # the chat-templated prompt, generation prompt included
    messages: list[dict[str, str]]
    data_source: str
    ground_truth: str
    ability: str
    extra_info: dict[str, Any]
    file: str
    row: int  # 0-based row within `file`, for messages about this prompt


@dataclass
class PromptDataset:
    """The tokenized prompts of one split, and how many were dropped as overlong (per file)."""

    records: list[PromptRecord]
    num_rows: int  # valid rows read, before filtering and before `max_samples`
    filtered: dict[str, int] = field(default_factory=dict)

    @property
    def num_filtered(self) -> int:
        return sum(self.filtered.values())

    def __len__(self) -> int:
        return len(self.records)

    def batches(self, batch_size: int) -> Iterator[list[PromptRecord]]:
        """Records in file order, the last batch possibly short: for validation, which sees every prompt."""
        for start in range(0, len(self.records), batch_size):
            yield self.records[start : start + batch_size]


class _Problems:
    """Collects problems keyed by (file, column, message), so a column-wide mistake is one line."""

    def __init__(self) -> None:
        self._groups: dict[tuple[str, str, str], list[int]] = {}

    def __len__(self) -> int:
        return sum(max(len(rows), 1) for rows in self._groups.values())

    def add(self, file: str, row: int | None, column: str, message: str) -> None:
        rows = self._groups.setdefault((file, column, message), [])
        if row is not None:
            rows.append(row)

    def raise_if_any(self) -> None:
        if not self._groups:
            return
        lines = [self._format(key, rows) for key, rows in self._groups.items()]
        shown = lines[:MAX_REPORTED]
        if len(lines) > MAX_REPORTED:
            shown.append(f"... and {len(lines) - MAX_REPORTED} more kinds of problem")
        total = len(self)
        header = f"{total} problem{'s' if total > 1 else ''} in the data (row numbers are 0-based):"
        raise DataError("\n  ".join([header, *shown]), lines)

    @staticmethod
    def _format(key: tuple[str, str, str], rows: list[int]) -> str:
        file, column, message = key
        where = file
        if rows:
            listed = ", ".join(str(r) for r in rows[:MAX_ROWS_SHOWN])
            more = f" and {len(rows) - MAX_ROWS_SHOWN} more" if len(rows) > MAX_ROWS_SHOWN else ""
            where += f" row {listed}" if len(rows) == 1 else f" rows {listed}{more}"
        if column:
            where += f" column {column}"
        return f"{where}: {message}"


def _bad_value(expected: str, value: Any) -> str:
    """Why a value was refused, short and the same for every row with that mistake (so they group)."""
    if value is None:
        return "missing"
    if isinstance(value, str | list | dict) and not value:
        return "empty"
    return f"expected {expected}, got {type(value).__name__}"


def _as_dict(value: Any) -> dict[str, Any] | None:
    """A struct reads back as a dict and a parquet map as a list of (key, value) pairs; accept both."""
    if isinstance(value, dict):
        return value
    if isinstance(value, list) and all(isinstance(p, tuple) and len(p) == 2 for p in value):
        return dict(value)
    return None


def _check_messages(value: Any, column: str, bad: Any) -> list[dict[str, str]]:
    if isinstance(value, str):
        bad(
            column,
            "expected a list of {role, content} messages, got a plain string "
            "(wrap it: [{'role': 'user', 'content': text}])",
        )
        return []
    if not isinstance(value, list) or not value:
        bad(column, _bad_value("a list of {role, content} messages", value))
        return []
    messages = []
    for j, raw in enumerate(value):
        msg = _as_dict(raw)
        if msg is None:
            bad(f"{column}[{j}]", _bad_value("a {role, content} mapping", raw))
            continue
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            if isinstance(role, str):
                bad(f"{column}[{j}].role", f"{role[:40]!r} is not one of {', '.join(ROLES)}")
            else:
                bad(f"{column}[{j}].role", _bad_value("a string", role))
        if not isinstance(content, str):
            bad(
                f"{column}[{j}].content",
                "missing" if content is None else f"expected a string, got {type(content).__name__}",
            )
        messages.append({"role": role, "content": content})
    return messages


def _check_ground_truth(value: Any, bad: Any) -> str:
    """The answer as a string: numbers are accepted because pandas often stores integer answers as floats."""
    reward_model = _as_dict(value)
    if reward_model is None:
        bad("reward_model", _bad_value("a mapping with ground_truth", value))
        return ""
    gt = reward_model.get("ground_truth")
    column = "reward_model.ground_truth"
    if isinstance(gt, str) and gt.strip():
        return gt
    if isinstance(gt, int) and not isinstance(gt, bool):
        return str(gt)
    if isinstance(gt, float) and math.isfinite(gt):
        return str(int(gt)) if gt.is_integer() else repr(gt)  # 72.0 -> "72": the answer, not pandas' dtype
    if isinstance(gt, Decimal) and gt.is_finite():
        return str(gt)
    if isinstance(gt, float | Decimal):
        bad(column, "not a finite number")
    elif isinstance(gt, str):
        bad(column, "empty")
    else:
        bad(column, _bad_value("a string or number", gt))
    return ""


def _check_row(
    file: str, row: int, values: dict[str, Any], prompt_key: str, problems: _Problems
) -> PromptRecord | None:
    before = len(problems)

    def bad(column: str, message: str) -> None:
        problems.add(file, row, column, message)

    data_source = values["data_source"]
    if not isinstance(data_source, str) or not data_source.strip():
        bad("data_source", "empty" if isinstance(data_source, str) else _bad_value("a string", data_source))
    messages = _check_messages(values[prompt_key], prompt_key, bad)
    ground_truth = _check_ground_truth(values["reward_model"], bad)
    ability = values.get("ability")
    if ability is None:
        ability = DEFAULT_ABILITY
    elif not isinstance(ability, str):
        bad("ability", _bad_value("a string", ability))
    extra_info = values.get("extra_info")
    extra = {} if extra_info is None else _as_dict(extra_info)
    if extra is None:
        bad("extra_info", _bad_value("a mapping", extra_info))
    if len(problems) > before:
        return None
    return PromptRecord(
        -1, [], "", messages, data_source, ground_truth, ability, extra or {}, file, row
    )  # index, ids: later


def _read_file(file: str, prompt_key: str, problems: _Problems) -> list[PromptRecord]:
    path = Path(file)
    if not path.is_file():
        problems.add(file, None, "", "not found" if not path.exists() else "not a file")
        return []
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as err:
        problems.add(file, None, "", f"not a readable parquet file ({err})")
        return []
    required = ["data_source", prompt_key, "reward_model"]
    missing = [c for c in required if c not in schema.names]
    for column in missing:
        hint = difflib.get_close_matches(column, schema.names, n=1, cutoff=0.6)
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        problems.add(file, None, column, f"missing column{did_you_mean}; the file has {schema.names}")
    if missing:
        return []
    columns = required + [c for c in ("ability", "extra_info") if c in schema.names]
    table = pq.read_table(path, columns=columns)
    if table.num_rows == 0:
        problems.add(file, None, "", "has no rows")
        return []
    data = {c: table.column(c).to_pylist() for c in columns}
    rows = (_check_row(file, i, {c: data[c][i] for c in columns}, prompt_key, problems) for i in range(len(table)))
    return [r for r in rows if r is not None]


def _read_split(files: Sequence[str | Path], prompt_key: str, problems: _Problems) -> list[PromptRecord]:
    if isinstance(files, str | Path):
        files = [files]
    if not files:
        problems.add("(no files)", None, "", "no parquet files given")
    return [row for f in files for row in _read_file(str(f), prompt_key, problems)]


def _tokenize(
    rows: list[PromptRecord], tokenizer: Any, cfg: DataConfig, problems: _Problems, tools: list[dict] | None = None
) -> PromptDataset:
    """Render and tokenize validated rows; overlong prompts are dropped and counted, or are problems.
    `tools` (function schemas) are rendered into the prompt by the chat template (multi-turn tool use)."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("the tokenizer has no chat template; prompts are chat messages and need one")
    texts: list[str] = []
    for r in rows:
        try:
            kwargs = {"tools": tools} if tools else {}
            texts.append(
                tokenizer.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=False, **kwargs)
            )
        except Exception as err:  # a user's Jinja template may raise anything (e.g. roles must alternate)
            problems.add(r.file, r.row, cfg.prompt_key, f"chat template failed: {err}")
            texts.append("")
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    limit = cfg.max_prompt_length
    too_long = f"longer than data.max_prompt_length={limit} tokens after the chat template"
    records, overlong = [], Counter()
    for index, (r, text, prompt_ids) in enumerate(zip(rows, texts, ids, strict=True)):
        if len(prompt_ids) <= limit:
            records.append(replace(r, index=index, prompt_ids=list(prompt_ids), prompt_text=text))
        elif cfg.filter_overlong_prompts:
            overlong[r.file] += 1
        else:
            problems.add(
                r.file, r.row, cfg.prompt_key, too_long + "; raise it or set data.filter_overlong_prompts=true"
            )
    per_file = Counter(r.file for r in rows)
    for file, count in overlong.items():
        logger.warning("filtered %d of %d prompts longer than %d tokens in %s", count, per_file[file], limit, file)
    if rows and not records and cfg.filter_overlong_prompts:
        problems.add(", ".join(per_file), None, cfg.prompt_key, f"every prompt is {too_long}; nothing is left")
    return PromptDataset(records, num_rows=len(rows), filtered=dict(overlong))


def _load(
    splits: list[Sequence[str | Path]], tokenizer: Any, cfg: DataConfig, tools: list[dict] | None = None
) -> list[PromptDataset]:
    """Validate every row of every split first, then tokenize: bad data fails before any compute."""
    problems = _Problems()
    rows = [_read_split(files, cfg.prompt_key, problems) for files in splits]
    problems.raise_if_any()
    datasets = [_tokenize(r, tokenizer, cfg, problems, tools) for r in rows]
    problems.raise_if_any()
    return datasets


def load_prompts(
    files: Sequence[str | Path] | str | Path, tokenizer: Any, cfg: DataConfig | None = None, *, max_samples: int = -1
) -> PromptDataset:
    """One split (e.g. a held-out set to evaluate on); `max_samples` >= 0 keeps the first that many prompts."""
    dataset = _load([files], tokenizer, cfg or DataConfig())[0]
    if max_samples >= 0:
        dataset.records = dataset.records[:max_samples]
    return dataset


def build_datasets(
    cfg: DataConfig, tokenizer: Any, tools: list[dict] | None = None
) -> tuple[PromptDataset, PromptDataset | None]:
    """Train and (when `data.val_files` is set) validation prompts, the latter cut to `data.val_max_samples`."""
    if not cfg.val_files:
        return _load([cfg.train_files], tokenizer, cfg, tools)[0], None
    train, val = _load([cfg.train_files, cfg.val_files], tokenizer, cfg, tools)
    if cfg.val_max_samples >= 0:
        val.records = val.records[: cfg.val_max_samples]
    return train, val


class BatchSampler:
    """Training batches in a deterministic, resumable order.

    Epoch e visits the records in the permutation drawn from (seed, e), `batch_size` at a time; the
    last incomplete batch of an epoch is dropped, so every step has the same number of prompts. The
    state is (epoch, position) of the NEXT batch: it moves to the next epoch as soon as the current
    one is used up, so a checkpoint taken at an epoch boundary resumes at batch 0 of the next epoch.
    """

    def __init__(self, records: Sequence[PromptRecord], batch_size: int, *, shuffle: bool = True, seed: int = 1):
        if len(records) < batch_size:
            raise DataError(
                f"the training set has {len(records)} prompts after filtering, fewer than "
                f"data.train_batch_size={batch_size}: not one full batch"
            )
        self.records = records
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._order_for(0)
        # Which records, by stable index: a resume over differently filtered data is refused, not misaligned.
        self._fingerprint = zlib.crc32(np.asarray([r.index for r in records], dtype=np.int64).tobytes())

    @property
    def steps_per_epoch(self) -> int:
        return len(self.records) // self.batch_size

    def _order_for(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.records)))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.records)).tolist()

    def next_batch(self) -> list[PromptRecord]:
        """The next `batch_size` records; endless (epochs follow each other), the trainer counts steps."""
        batch = [self.records[i] for i in self._order[self.position : self.position + self.batch_size]]
        self.position += self.batch_size
        if self.position + self.batch_size > len(self.records):
            self.epoch += 1
            self.position = 0
            self._order = self._order_for(self.epoch)
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Plain ints and bools (JSON-safe) to store in a checkpoint."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "batch_size": self.batch_size,
            "num_records": len(self.records),
            "fingerprint": self._fingerprint,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where a checkpoint stopped; refuse when seed, batch size or dataset differ from it."""
        for key, name in (("seed", "data.seed"), ("shuffle", "data.shuffle"), ("batch_size", "data.train_batch_size")):
            if state.get(key) != getattr(self, key):
                raise DataError(
                    f"cannot resume data order: checkpoint has {name}={state.get(key)}, config has {getattr(self, key)}"
                )
        if state.get("fingerprint") != self._fingerprint:
            raise DataError(
                f"cannot resume data order: the checkpoint's training set had {state.get('num_records')} prompts, "
                f"this one has {len(self.records)} (or other ones): were the files or data.max_prompt_length "
                "changed? Resuming would repeat or skip prompts"
            )
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or position < 0 or position % self.batch_size or position + self.batch_size > len(self.records):
            raise DataError(f"cannot resume data order: invalid epoch/position {epoch}/{position} in checkpoint")
        self.epoch, self.position = epoch, position
        self._order = self._order_for(epoch)
