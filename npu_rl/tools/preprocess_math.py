"""Convert a locally downloaded MATH dataset into npu_rl's parquet (verl's schema and instruction prompt).

    hf download DigitalLearningGmbH/MATH-lighteval --repo-type dataset --local-dir ~/data/math_raw
    npu-rl-preprocess-math --input ~/data/math_raw --output-dir data/math

Input: the download folder (train-*.parquet / test-*.parquet; when each subject is also its own
config folder, the default config's folder is used unless --subset names one), or split files
(.parquet, .jsonl, .json) given directly. Columns: `problem`, `solution`, and optionally `level`,
`type` (MATH's subject; MATH-500 calls it `subject`) and `answer` (MATH-500 has it).
Ground truth: the `answer` column when present, else the content of the solution's last
\\boxed{...} (nested braces matched by the reward package's own extractor, so training data and
grading agree on what "the boxed answer" is). level, type/subject, problem and solution are kept
in extra_info, so `npu_rl.eval` can break accuracy down by level and subject.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from npu_rl.cli import entry_point
from npu_rl.tools._dataset_io import (
    MATH_INSTRUCTION,
    find_split_files,
    iter_rows,
    raise_problems,
    require_text,
    verl_row,
    write_parquet,
)
from reward.extract import find_boxed

DATA_SOURCE = "DigitalLearningGmbH/MATH-lighteval"


def boxed_answer(solution: str) -> str | None:
    """Content of the last complete \\boxed{...} / \\fbox{...}, or None."""
    found, _ = find_boxed(solution)
    if not found:
        return None
    answer = found[-1][2].strip()
    return answer or None


def convert_split(files: list[Path], split: str, data_source: str) -> list[dict]:
    rows, problems = [], []
    for path, i, record in iter_rows(files, f"converting {split}"):
        where = f"{path}: row {i}"
        problem = require_text(record, "problem", where, problems)
        solution = require_text(record, "solution", where, problems)
        given = record.get("answer")
        truth = str(given).strip() if given not in (None, "") else (boxed_answer(solution) if solution else None)
        if problem and solution and truth is None:
            problems.append(f"{where}: column 'solution' has no complete \\boxed{{...}} answer")
        if not (problem and solution and truth):
            continue
        extra = {"problem": problem, "solution": solution}
        for key in ("level", "type", "subject"):
            if record.get(key) not in (None, ""):
                extra[key] = record[key]
        rows.append(verl_row(data_source, problem, MATH_INSTRUCTION, truth, split, len(rows), extra))
    raise_problems(problems)
    return rows


def convert(
    inputs: list[str], output_dir: str | Path, subset: str | None = None, data_source: str = DATA_SOURCE
) -> dict[str, Path]:
    out = {}
    for split, files in find_split_files(inputs, subset).items():
        out[split] = write_parquet(convert_split(files, split, data_source), Path(output_dir) / f"{split}.parquet")
    return out


@entry_point("npu-rl-preprocess-math")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", nargs="+", required=True, help="download folder and/or split files")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--subset", default=None, help="config folder to read when there are several")
    p.add_argument("--data-source", default=DATA_SOURCE, help=f"data_source column (default {DATA_SOURCE})")
    args = p.parse_args(argv)
    written = convert(args.input, args.output_dir, args.subset, args.data_source)
    for split, path in written.items():
        print(f"{split}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
