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

Prompt templates (--prompt-template): `verl` (default) is verl's math_dataset.py prompt, the problem
followed by the \\boxed{} instruction as the only (user) turn. `ascend_sample` adds the system prompt
of the Ascend single-card GRPO sample (cann-recipes-train llm_rl/qwen2_5/verl_npu_demo: its
tokenizer_config.json makes it the chat template's default system turn), which asks for
`<think>` / `<answer>` blocks, the format the `ascend_sample_math` reward pays for. Rendered through
Qwen2.5's chat template the two give the same text the sample trained on.
"""

from __future__ import annotations

from pathlib import Path

from npu_rl.cli import entry_point
from npu_rl.tools._dataset_io import (
    MATH_INSTRUCTION,
    DatasetError,
    converter_parser,
    find_split_files,
    iter_rows,
    raise_problems,
    report_written,
    require_text,
    verl_row,
    write_parquet,
)
from reward.extract import find_boxed

DATA_SOURCE = "DigitalLearningGmbH/MATH-lighteval"
# The sample's system prompt, character for character. Its example line really contains backslash-n
# pairs (the template escapes them), not line breaks; the model reads them as written.
ASCEND_SAMPLE_SYSTEM_PROMPT = (
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant. When answering any question, you must "
    "first output your reasoning process within <think> tags, and then output the final answer within <answer> "
    "tags with the answer enclosed in \\boxed{}. Ensure to use newlines for better readability: place a newline "
    "after <think> and before </think>, and similarly for <answer> tags. For example: "
    "<think>\\n reasoning process here \\n</think>\\n<answer>\\n\\boxed{ answer here }\\n</answer>"
)
SYSTEM_PROMPTS = {"verl": None, "ascend_sample": ASCEND_SAMPLE_SYSTEM_PROMPT}


def boxed_answer(solution: str) -> str | None:
    """Content of the last complete \\boxed{...} / \\fbox{...}, or None."""
    found, _ = find_boxed(solution)
    if not found:
        return None
    answer = found[-1][2].strip()
    return answer or None


def _level(value: object) -> int | None:
    """MATH's "Level 3" (or 3) as 3; None when absent or unreadable."""
    digits = "".join(ch for ch in str(value or "") if ch.isdigit())
    return int(digits) if digits else None


def convert_split(
    files: list[Path], split: str, data_source: str, levels: set[int] | None = None, template: str = "verl"
) -> list[dict]:
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
        if levels is not None and _level(record.get("level")) not in levels:
            continue  # e.g. --levels 3 4 5 (SimpleRL-Zero trains on the harder problems)
        extra = {"problem": problem, "solution": solution}
        for key in ("level", "type", "subject"):
            if record.get(key) not in (None, ""):
                extra[key] = record[key]
        row = verl_row(data_source, problem, MATH_INSTRUCTION, truth, split, len(rows), extra)
        if SYSTEM_PROMPTS[template]:
            row["prompt"].insert(0, {"role": "system", "content": SYSTEM_PROMPTS[template]})
        rows.append(row)
    raise_problems(problems)
    return rows


def convert(
    inputs: list[str],
    output_dir: str | Path,
    subset: str | None = None,
    data_source: str = DATA_SOURCE,
    template: str = "verl",
    train_levels: set[int] | None = None,
) -> dict[str, Path]:
    if template not in SYSTEM_PROMPTS:
        raise DatasetError(f"--prompt-template {template!r}: use one of {sorted(SYSTEM_PROMPTS)}")
    out = {}
    for split, files in find_split_files(inputs, subset).items():
        levels = train_levels if split == "train" else None  # the held-out set stays whole
        rows = convert_split(files, split, data_source, levels, template)
        out[split] = write_parquet(rows, Path(output_dir) / f"{split}.parquet")
    return out


@entry_point("npu-rl-preprocess-math")
def main(argv: list[str] | None = None) -> int:
    p = converter_parser(__doc__, "config folder to read when there are several")
    p.add_argument("--data-source", default=DATA_SOURCE, help=f"data_source column (default {DATA_SOURCE})")
    p.add_argument(
        "--prompt-template",
        choices=sorted(SYSTEM_PROMPTS),
        default="verl",
        help="verl: instruction only (default); ascend_sample: plus the Ascend GRPO sample's <think>/<answer> "
        "system prompt",
    )
    p.add_argument("--levels", nargs="+", type=int, default=None, help="keep only these MATH levels in train")
    args = p.parse_args(argv)
    levels = set(args.levels) if args.levels else None
    return report_written(
        convert(args.input, args.output_dir, args.subset, args.data_source, args.prompt_template, levels)
    )


if __name__ == "__main__":
    raise SystemExit(main())
