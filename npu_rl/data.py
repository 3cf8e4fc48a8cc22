"""Prompts for GRPO from parquet files in verl's row schema, validated before any compute.

Every row of every file is checked (npu_rl.data_rows: the row schema and its checks) before the first
token is computed, and all problems are raised in one `DataError` naming file, 0-based row and column.
Overlong prompts are dropped or cut (data.truncation) with a logged count (never silently), or are
errors. `BatchSampler`'s position is part of the checkpoint and a resume continues with exactly the next
batch, also at an epoch boundary (where verl's dataloader skipped data).
"""

from __future__ import annotations

import logging
import zlib
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from npu_rl.config import DataConfig
from npu_rl.data_rows import DataError, Problems, PromptRecord, read_split

__all__ = ["BatchSampler", "DataError", "PromptDataset", "PromptRecord", "build_datasets", "load_prompts"]

logger = logging.getLogger(__name__)


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


def _tokenize(
    rows: list[PromptRecord], tokenizer: Any, cfg: DataConfig, problems: Problems, tools: list[dict] | None = None
) -> PromptDataset:
    """Render and tokenize validated rows; overlong prompts are dropped and counted, or are problems.
    `tools` (function schemas) are rendered into the prompt by the chat template (multi-turn tool use)."""
    if cfg.apply_chat_template and not getattr(tokenizer, "chat_template", None):
        raise DataError(
            "the tokenizer has no chat template; prompts are chat messages and need one "
            "(plain-string prompts: data.apply_chat_template=false)"
        )
    texts: list[str] = []
    for r in rows:
        if not cfg.apply_chat_template:
            texts.append(r.prompt_text)
            continue
        try:
            kwargs = {**cfg.apply_chat_template_kwargs, **({"tools": tools} if tools else {})}
            texts.append(
                tokenizer.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=False, **kwargs)
            )
        except Exception as err:  # a user's Jinja template may raise anything (e.g. roles must alternate)
            problems.add(r.file, r.row, cfg.prompt_key, f"chat template failed: {err}")
            texts.append("")
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    limit = cfg.max_prompt_length
    too_long = f"longer than data.max_prompt_length={limit} tokens after the chat template"
    records, overlong, truncated = [], Counter(), Counter()
    for index, (r, text, prompt_ids) in enumerate(zip(rows, texts, ids, strict=True)):
        if len(prompt_ids) <= limit:
            records.append(replace(r, index=index, prompt_ids=list(prompt_ids), prompt_text=text))
        elif cfg.filter_overlong_prompts:
            overlong[r.file] += 1
        elif cfg.truncation != "error":
            cut = truncate(list(prompt_ids), limit, cfg.truncation)
            # the text the policy sees (logged, given to reward functions) is the cut one
            records.append(replace(r, index=index, prompt_ids=cut, prompt_text=tokenizer.decode(cut)))
            truncated[r.file] += 1
        else:
            problems.add(
                r.file,
                r.row,
                cfg.prompt_key,
                too_long + "; raise it, set data.filter_overlong_prompts=true or data.truncation=left/right/middle",
            )
    per_file = Counter(r.file for r in rows)
    for file, count in overlong.items():
        logger.warning("filtered %d of %d prompts longer than %d tokens in %s", count, per_file[file], limit, file)
    for file, count in truncated.items():
        logger.warning(
            "truncated %d of %d prompts longer than %d tokens in %s (data.truncation=%s)",
            count,
            per_file[file],
            limit,
            file,
            cfg.truncation,
        )
    if rows and not records and cfg.filter_overlong_prompts:
        problems.add(", ".join(per_file), None, cfg.prompt_key, f"every prompt is {too_long}; nothing is left")
    return PromptDataset(records, num_rows=len(rows), filtered=dict(overlong))


def truncate(ids: list[int], limit: int, side: str) -> list[int]:
    """Cut a prompt to `limit` tokens as verl's postprocess_data does: "left" keeps the last tokens, "right"
    the first, "middle" the first limit // 2 and the last limit - limit // 2."""
    if len(ids) <= limit:
        return ids
    if side == "left":
        return ids[len(ids) - limit :]
    if side == "right":
        return ids[:limit]
    if side == "middle":
        head = limit // 2
        return ids[:head] + ids[len(ids) - (limit - head) :]
    raise ValueError(f"unknown truncation side {side!r}: left, right or middle")


def _check_interactions(rows: list[PromptRecord], names: Collection[str], problems: Problems) -> None:
    """Every row's extra_info.interaction_kwargs picks one of the configured simulated users (verl's key)."""
    from npu_rl.agent_tools.interaction import chosen_name

    for r in rows:
        try:
            chosen_name(names, (r.extra_info or {}).get("interaction_kwargs"))
        except ValueError as err:
            problems.add(r.file, r.row, "extra_info", str(err))


def _load(
    splits: list[Sequence[str | Path]],
    tokenizer: Any,
    cfg: DataConfig,
    tools: list[dict] | None = None,
    interactions: Collection[str] | None = None,
) -> list[PromptDataset]:
    """Validate every row of every split first, then tokenize: bad data fails before any compute."""
    problems = Problems()
    rows = [read_split(files, cfg.prompt_key, problems, cfg.apply_chat_template) for files in splits]
    for split in rows if interactions else ():
        _check_interactions(split, interactions, problems)
    problems.raise_if_any()
    datasets = [_tokenize(r, tokenizer, cfg, problems, tools) for r in rows]
    problems.raise_if_any()
    return datasets


def load_prompts(
    files: Sequence[str | Path] | str | Path,
    tokenizer: Any,
    cfg: DataConfig | None = None,
    *,
    max_samples: int = -1,
    tools: list[dict] | None = None,
) -> PromptDataset:
    """One split (e.g. a held-out set to evaluate on); `max_samples` >= 0 keeps the first that many prompts.
    `tools` (function schemas) are rendered into the prompts, as in multi-turn training."""
    dataset = _load([files], tokenizer, cfg or DataConfig(), tools)[0]
    if max_samples >= 0:
        dataset.records = dataset.records[:max_samples]
    return dataset


def build_datasets(
    cfg: DataConfig, tokenizer: Any, tools: list[dict] | None = None, interactions: Collection[str] | None = None
) -> tuple[PromptDataset, PromptDataset | None]:
    """Train and (when `data.val_files` is set) validation prompts, the latter cut to `data.val_max_samples`;
    `interactions`: the simulated users rows may name (extra_info.interaction_kwargs, checked per row)."""
    if not cfg.val_files:
        return _load([cfg.train_files], tokenizer, cfg, tools, interactions)[0], None
    train, val = _load([cfg.train_files, cfg.val_files], tokenizer, cfg, tools, interactions)
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

    def __init__(
        self,
        records: Sequence[PromptRecord],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 1,
        key: str = "data.train_batch_size",
    ):
        if len(records) < batch_size:
            raise DataError(
                f"the training set has {len(records)} prompts after filtering, fewer than {key}={batch_size}: "
                "not one full batch"
            )
        self.key = key  # the config key batch_size comes from, for messages
        self.records = records
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._order_for(0)
        # Which records, by stable index: a resume over differently filtered data is refused, not misaligned.
        self._fingerprint = zlib.crc32(np.asarray([r.index for r in records], dtype=np.int64).tobytes())

    @classmethod
    def for_training(cls, records: Sequence[PromptRecord], cfg: DataConfig) -> BatchSampler:
        """The trainer's sampler: batches of data.gen_batch_size prompts (DAPO's generation batches) where
        that is set, else data.train_batch_size."""
        key = "data.gen_batch_size" if cfg.gen_batch_size else "data.train_batch_size"
        return cls(records, cfg.generation_batch_size, shuffle=cfg.shuffle, seed=cfg.seed, key=key)

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
        for key, name in (("seed", "data.seed"), ("shuffle", "data.shuffle"), ("batch_size", self.key)):
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
