"""Export npu_rl / verl parquet to OpenCompass's MATH `math.json` layout, to score a model there too.

    npu-rl-parquet2json --input data/math/test.parquet --output opencompass_data/math/math.json

Layout (what OpenCompass's MATH loader reads): one JSON object keyed by "0", "1", ..., each entry
{"problem", "solution", "level", "type"}. OpenCompass takes the answer from the solution's last
\\boxed{}; rows converted by npu-rl-preprocess-math keep the original solution, any other row gets
"\\boxed{<ground_truth>}" as its solution so that the same answer is graded. level / type are written
when the row has them (extra_info.level, extra_info.type or extra_info.subject).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from npu_rl.cli import entry_point
from npu_rl.tools._dataset_io import GSM8K_INSTRUCTION, MATH_INSTRUCTION, DatasetError, iter_rows, raise_problems


def problem_text(row: dict[str, Any]) -> str:
    """The bare problem: stored in extra_info by our converters, else the last user turn minus the instruction."""
    extra = row.get("extra_info") or {}
    for key in ("problem", "question"):
        if isinstance(extra.get(key), str) and extra[key].strip():
            return extra[key].strip()
    users = [m.get("content", "") for m in row.get("prompt") or [] if m.get("role") == "user"]
    if not users:
        raise DatasetError("no user message in prompt")
    text = users[-1].strip()
    for instruction in (MATH_INSTRUCTION, GSM8K_INSTRUCTION):
        text = text.removesuffix(instruction).strip()
    return text


def to_entry(row: dict[str, Any]) -> dict[str, Any]:
    extra = row.get("extra_info") or {}
    truth = (row.get("reward_model") or {}).get("ground_truth")
    if truth in (None, ""):
        raise DatasetError("reward_model.ground_truth is missing")
    solution = extra.get("solution") or f"\\boxed{{{truth}}}"
    entry = {"problem": problem_text(row), "solution": solution}
    level = extra.get("level")
    subject = extra.get("type") or extra.get("subject")
    if level not in (None, ""):
        entry["level"] = level if isinstance(level, str) else f"Level {level}"
    if subject:
        entry["type"] = subject
    return entry


def convert(inputs: list[str | Path], output: str | Path) -> Path:
    entries: dict[str, dict[str, Any]] = {}
    problems = []
    for path, i, row in iter_rows(map(Path, inputs), "converting"):
        try:
            entries[str(len(entries))] = to_entry(row)
        except DatasetError as err:
            problems.append(f"{path}: row {i}: {err}")
    raise_problems(problems)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(entries, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return out


@entry_point("npu-rl-parquet2json")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", nargs="+", required=True, help="parquet file(s) in verl's schema")
    p.add_argument("--output", required=True, help="math.json to write")
    args = p.parse_args(argv)
    out = convert(args.input, args.output)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
