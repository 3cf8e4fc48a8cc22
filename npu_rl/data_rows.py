"""Rows of verl-schema parquet files, read and checked: a `PromptRecord` per valid row, or every problem.

Row: `data_source` (str), `prompt` (list of {role, content}), `reward_model.ground_truth` (str or
number), optional `ability` (default "math", as every verl math preprocessor writes; nothing branches
on it) and `extra_info` (a mapping passed to the reward untouched). `Problems` collects what is wrong
across every row of every file, and raises it as one `DataError` naming file, 0-based row and column,
so a user fixes a file in one pass; one mistake over many rows reads as one line. Tokenizing the
checked rows and the batch order are npu_rl.data.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

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


class Problems:
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
        elif not content.strip():
            bad(f"{column}[{j}].content", "empty" if not content else "only whitespace")
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
    file: str, row: int, values: dict[str, Any], prompt_key: str, problems: Problems, chat: bool = True
) -> PromptRecord | None:
    before = len(problems)

    def bad(column: str, message: str) -> None:
        problems.add(file, row, column, message)

    data_source = values["data_source"]
    if not isinstance(data_source, str) or not data_source.strip():
        bad("data_source", "empty" if isinstance(data_source, str) else _bad_value("a string", data_source))
    plain = ""  # data.apply_chat_template=false: the prompt is a string, used verbatim
    if chat:
        messages = _check_messages(values[prompt_key], prompt_key, bad)
    elif isinstance(values[prompt_key], str) and values[prompt_key].strip():
        messages, plain = [], values[prompt_key]
    else:
        messages = []
        bad(prompt_key, _bad_value("a plain-string prompt (data.apply_chat_template=false)", values[prompt_key]))
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
        -1, [], plain, messages, data_source, ground_truth, ability, extra or {}, file, row
    )  # index, ids: later


def _read_file(file: str, prompt_key: str, problems: Problems, chat: bool = True) -> list[PromptRecord]:
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
    try:  # a readable footer does not make a readable body (a truncated or corrupted copy)
        table = pq.read_table(path, columns=columns)
        data = {c: table.column(c).to_pylist() for c in columns}
    except (pa.ArrowException, OSError) as err:
        reason = " ".join(str(err).split())  # Arrow's messages span lines; a problem is one line
        problems.add(file, None, "", f"cannot read the data, the file is damaged ({reason}); copy or convert it again")
        return []
    if table.num_rows == 0:
        problems.add(file, None, "", "has no rows")
        return []
    rows = (
        _check_row(file, i, {c: data[c][i] for c in columns}, prompt_key, problems, chat) for i in range(len(table))
    )
    return [r for r in rows if r is not None]


def read_split(
    files: Sequence[str | Path], prompt_key: str, problems: Problems, chat: bool = True
) -> list[PromptRecord]:
    """The valid rows of one split's files, in order; what is wrong goes into `problems`."""
    if isinstance(files, str | Path):
        files = [files]
    if not files:
        problems.add("(no files)", None, "", "no parquet files given")
    return [row for f in files for row in _read_file(str(f), prompt_key, problems, chat)]
