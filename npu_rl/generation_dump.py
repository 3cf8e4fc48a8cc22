"""verl's generation dumps: every response of a step, or of a validation, as `<dir>/<step>.jsonl`.

`trainer.rollout_data_dir` gets the training rollouts of each step, `trainer.validation_data_dir` the
generations of each validation, one line per response in verl's fields: `input` (the prompt as the
model saw it, special tokens dropped), `output` (the whole response, tool answers and simulated user
turns included, special tokens dropped), `gts` (ground truth), `score`, `step`, then the reward's
components (`acc` and each term's score). The ranks' rows are gathered to rank 0, which writes the file
(rank order, each rank's rows in its order) with storage.write_atomic, so a reader never sees half a
file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from npu_rl import distributed
from npu_rl.evaluation import GradedPrompt
from npu_rl.reward_manager import RewardBatch
from npu_rl.rollout.batch import RolloutBatch
from npu_rl.storage import write_atomic


def rollout_rows(rollout: RolloutBatch, graded: RewardBatch, tokenizer: Any, step: int) -> list[dict[str, Any]]:
    """One row per training response of this rank."""
    records = rollout.row_records
    prompts = tokenizer.batch_decode([r.prompt_ids for r in records], skip_special_tokens=True)
    ids = [row[:n] for row, n in zip(rollout.response_ids.tolist(), rollout.lengths.tolist(), strict=True)]
    outputs = tokenizer.batch_decode(ids, skip_special_tokens=True)
    extra = {k: v for k, v in graded.components.items() if len(v) == len(records)}
    rows = []
    for i, (rec, prompt, output) in enumerate(zip(records, prompts, outputs, strict=True)):
        row = {"input": prompt, "output": output, "gts": rec.ground_truth, "score": graded.scores[i], "step": step}
        if graded.acc[i] is not None:
            row["acc"] = graded.acc[i]
        rows.append(row | {k: v[i] for k, v in extra.items()})
    return rows


def validation_rows(graded: Sequence[GradedPrompt], tokenizer: Any, step: int) -> list[dict[str, Any]]:
    """One row per validation response of this rank (each prompt's n samples in order)."""
    prompts = tokenizer.batch_decode([g.record.prompt_ids for g in graded], skip_special_tokens=True)
    rows = []
    for g, prompt in zip(graded, prompts, strict=True):
        for response, score, acc in zip(g.responses, g.scores, g.acc, strict=True):
            row = {"input": prompt, "output": response, "gts": g.record.ground_truth, "score": score, "step": step}
            rows.append(row if acc is None else row | {"acc": acc})
    return rows


def dump_rollouts(
    directory: str | None, step: int, rollout: RolloutBatch, graded: RewardBatch, tokenizer: Any, is_main: bool
) -> Path | None:
    """trainer.rollout_data_dir: this step's training responses of every rank (a collective when set)."""
    return dump(directory, step, rollout_rows(rollout, graded, tokenizer, step) if directory else [], is_main)


def dump_validation(
    directory: str | None, step: int, graded: Sequence[GradedPrompt], tokenizer: Any, is_main: bool
) -> Path | None:
    """trainer.validation_data_dir: this validation's responses of every rank (a collective when set)."""
    return dump(directory, step, validation_rows(graded, tokenizer, step) if directory else [], is_main)


def dump(directory: str | None, step: int, rows: list[dict[str, Any]], is_main: bool) -> Path | None:
    """Gather every rank's rows (a collective: every rank calls it) and write `<directory>/<step>.jsonl`
    on rank 0; returns the file there. Nothing happens without a directory."""
    if not directory:
        return None
    gathered = distributed.all_gather_object(rows)
    if not is_main:
        return None
    path = Path(directory).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    target = path / f"{step}.jsonl"
    lines = [json.dumps(row, ensure_ascii=False, default=str) + "\n" for part in gathered for row in part]
    write_atomic(target, "".join(lines).encode("utf-8"))
    return target
