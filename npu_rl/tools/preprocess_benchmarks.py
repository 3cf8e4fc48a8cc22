"""Convert locally downloaded math benchmarks into one verl parquet per benchmark, for the eval suite.

    npu-rl-preprocess-benchmarks --output-dir data/benchmarks \\
        --input math500=~/data/MATH-500 aime24=~/data/aime_2024 aime25=~/data/aime_2025 \\
                amc23=~/data/amc23 minerva=~/data/minerva_math olympiadbench=~/data/OlympiadBench \\
                gsm8k=~/data/gsm8k math=~/data/MATH-lighteval
    python -m npu_rl.eval --model <model> --suite data/benchmarks --n 8 --temperature 0.6

Each `--input NAME=PATH` names a benchmark and its download (a file, or a folder whose .parquet /
.jsonl / .json files are read; when a folder has test-split files only those are read, since
benchmark releases put their rows under `test` or, for AIME and AMC, under `train`). Written:
`<output-dir>/<NAME>.parquet`, the suite's input. Layouts read (column names as published;
alternatives in brackets, first present wins):

| name | columns | ground truth |
| --- | --- | --- |
| math500 | problem, solution, answer, subject, level, unique_id | `answer` |
| aime24, aime25 | problem [question, Problem], answer [Answer], id [ID] | `answer` as an integer |
| amc23 | problem [question], answer (often a float such as 27.0), id | `answer`; 27.0 -> 27, 0.8333.. -> 5/6 |
| minerva | problem [question], solution, or answer | `answer`, else the solution's last \\boxed{} |
| olympiadbench | question, final_answer (a list of strings), id, subfield | the list joined by ", " |
| gsm8k | question, answer with a final `#### N` line | N, as npu-rl-preprocess-gsm8k |
| math | problem, solution, level, type | as npu-rl-preprocess-math |

Every problem is reported at once with its file and row, and nothing is written then.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

from npu_rl.cli import entry_point
from npu_rl.tools._dataset_io import (
    GSM8K_INSTRUCTION,
    MATH_INSTRUCTION,
    SUFFIXES,
    DatasetError,
    raise_problems,
    read_records,
    split_of,
    verl_row,
    write_parquet,
)
from npu_rl.tools.preprocess_gsm8k import final_answer
from npu_rl.tools.preprocess_math import boxed_answer


def _first(record: dict[str, Any], columns: tuple[str, ...]) -> Any:
    for column in columns:
        value = record.get(column)
        if value not in (None, ""):
            return value
    return None


def _number_text(value: Any) -> str:
    """27.0 -> "27"; 0.8333333333333334 -> "5/6" (AMC sets store answers as floats; the grader treats a
    decimal as exact, so the fraction the float stands for is recovered); other values as written."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, float) and math.isfinite(value):
        q = Fraction(value).limit_denominator(10_000)
        return f"{q.numerator}/{q.denominator}" if float(q) == value else repr(value)
    text = str(value).strip()
    if text.endswith(".0") and text[:-2].lstrip("-").isdigit():
        return text[:-2]
    return text


def _strip_dollars(text: str) -> str:
    text = text.strip()
    while len(text) >= 2 and text.startswith("$") and text.endswith("$"):
        text = text[1:-1].strip()
    return text


def _olympiad_truth(value: Any) -> str | None:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        return None
    parts = [_strip_dollars(str(v)) for v in value if str(v).strip()]
    return ", ".join(parts) or None


def _answer_or_boxed(record: dict[str, Any]) -> str | None:
    given = _first(record, ("answer", "Answer", "final_answer"))
    if given is not None:
        return _olympiad_truth(given) if isinstance(given, list) else _number_text(given)
    solution = _first(record, ("solution", "Solution"))
    return boxed_answer(solution) if isinstance(solution, str) else None


# name -> (data_source, problem columns, ground truth of a record, instruction, extra_info columns)
Truth = Callable[[dict[str, Any]], "str | None"]
BENCHMARKS: dict[str, tuple[str, tuple[str, ...], Truth, str, tuple[str, ...]]] = {
    "math500": ("HuggingFaceH4/MATH-500", ("problem",), _answer_or_boxed, MATH_INSTRUCTION,
                ("subject", "level", "unique_id")),
    "aime24": ("aime24", ("problem", "question", "Problem"), _answer_or_boxed, MATH_INSTRUCTION, ("id", "ID", "url")),
    "aime25": ("aime25", ("problem", "question", "Problem"), _answer_or_boxed, MATH_INSTRUCTION, ("id", "ID", "url")),
    "amc23": ("amc23", ("problem", "question"), _answer_or_boxed, MATH_INSTRUCTION, ("id", "url")),
    "minerva": ("minerva_math", ("problem", "question"), _answer_or_boxed, MATH_INSTRUCTION, ("id", "type")),
    "olympiadbench": ("olympiadbench", ("question", "problem"), lambda r: _olympiad_truth(r.get("final_answer")),
                      MATH_INSTRUCTION, ("id", "subfield", "subject", "answer_type")),
    "gsm8k": ("openai/gsm8k", ("question",), lambda r: final_answer(str(r.get("answer") or "")), GSM8K_INSTRUCTION,
              ()),
    "math": ("DigitalLearningGmbH/MATH-lighteval", ("problem",), _answer_or_boxed, MATH_INSTRUCTION,
             ("level", "type")),
}  # fmt: skip


def benchmark_files(path: Path) -> list[Path]:
    """The data files of one benchmark download: test-split files when there are any, else all."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DatasetError(f"{path}: no such file or folder")
    files = sorted(
        p
        for p in path.rglob("*")
        if p.suffix in SUFFIXES and not any(s.startswith(".") for s in p.relative_to(path).parts)
    )
    if not files:
        raise DatasetError(f"{path}: no {', '.join(SUFFIXES)} files")
    tests = [p for p in files if split_of(p) == "test"]
    return tests or files


def convert_benchmark(name: str, files: list[Path]) -> list[dict[str, Any]]:
    """verl rows of one benchmark; every bad row is listed in one DatasetError."""
    if name not in BENCHMARKS:
        raise DatasetError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    data_source, problem_cols, truth_of, instruction, extra_cols = BENCHMARKS[name]
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for path in files:
        for i, record in enumerate(read_records(path)):
            where = f"{path}: row {i}"
            problem = _first(record, problem_cols)
            truth = truth_of(record)
            bad = []
            if not isinstance(problem, str) or not problem.strip():
                bad.append(f"{where}: no problem text (looked for column {' / '.join(problem_cols)})")
            if truth is None:
                bad.append(f"{where}: no final answer for benchmark {name!r} (see the table in --help)")
            if bad:
                problems += bad
                continue
            extra = {"benchmark": name, **{c: record[c] for c in extra_cols if record.get(c) not in (None, "")}}
            rows.append(verl_row(data_source, problem, instruction, truth, "test", len(rows), extra))
    raise_problems(problems)
    if not rows:
        raise DatasetError(f"benchmark {name!r}: no rows in {', '.join(map(str, files))}")
    return rows


def convert(inputs: dict[str, Path], output_dir: str | Path) -> dict[str, Path]:
    """Convert every benchmark first, then write: one bad input leaves no partial output."""
    converted = {
        name: convert_benchmark(name, benchmark_files(Path(path).expanduser())) for name, path in inputs.items()
    }
    return {name: write_parquet(rows, Path(output_dir) / f"{name}.parquet") for name, rows in converted.items()}


def parse_inputs(items: list[str]) -> dict[str, Path]:
    inputs: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise DatasetError(f"--input {item!r}: expected NAME=PATH with NAME one of {', '.join(BENCHMARKS)}")
        if name not in BENCHMARKS:
            raise DatasetError(f"--input {item!r}: unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
        inputs[name] = Path(path)
    return inputs


@entry_point("npu-rl-preprocess-benchmarks")
def main(argv: list[str] | None = None) -> int:
    """Convert; a bad --input or a bad row ends as one message (every problem listed) and exit code 2."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, metavar="NAME=PATH", help=f"names: {', '.join(BENCHMARKS)}")
    p.add_argument("--output-dir", required=True, help="one <NAME>.parquet per benchmark is written here")
    args = p.parse_args(argv)
    written = convert(parse_inputs(args.input), args.output_dir)
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
