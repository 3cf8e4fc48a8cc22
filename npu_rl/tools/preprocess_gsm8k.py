"""Convert a locally downloaded GSM8K into npu_rl's parquet (verl's schema and instruction prompt).

    hf download openai/gsm8k --repo-type dataset --local-dir ~/data/gsm8k_raw
    npu-rl-preprocess-gsm8k --input ~/data/gsm8k_raw --output-dir data/gsm8k

Input: the `hf download` folder (main/train-*.parquet, main/test-*.parquet; the `main` config is
used unless --subset says otherwise), or the original train.jsonl / test.jsonl, or such files
given directly. Each row needs `question` and `answer`, whose final line is `#### <number>`.
With --tool-prompt each row starts with TOOL_SYSTEM_PROMPT as a system message, for multi-turn
training with tools (docs/multi_turn.md). With --interaction NAME each row's extra_info carries verl's
`interaction_kwargs` ({name, query, ground_truth}) for simulated user turns (docs/multi_turn.md).
Output: <output-dir>/train.parquet and test.parquet. The ground truth is the number after `####`
with thousands separators removed, as verl does; the worked answer stays in extra_info.answer.
"""

from __future__ import annotations

from pathlib import Path

from npu_rl.cli import entry_point
from npu_rl.tools._dataset_io import (
    GSM8K_INSTRUCTION,
    converter_parser,
    find_split_files,
    iter_rows,
    raise_problems,
    report_written,
    require_text,
    verl_row,
    write_parquet,
)

DATA_SOURCE = "openai/gsm8k"
TOOL_SYSTEM_PROMPT = (
    "You are a math expert. Reason step-by-step and use tools to verify calculations: "
    "call a tool whenever a computation is not trivial, then check its result before you continue."
)


def final_answer(answer: str) -> str | None:
    """The number after the last `####`, without thousands separators; None when there is none."""
    if "####" not in answer:
        return None
    value = answer.rsplit("####", 1)[1].strip().replace(",", "")
    return value or None


def convert_split(
    files: list[Path], split: str, system: str | None = None, interaction: str | None = None
) -> list[dict]:
    rows, problems = [], []
    for path, i, record in iter_rows(files, f"converting {split}"):
        where = f"{path}: row {i}"
        question = require_text(record, "question", where, problems)
        answer = require_text(record, "answer", where, problems)
        if not answer:
            continue
        truth = final_answer(answer)
        if truth is None:
            problems.append(f"{where}: column 'answer' has no '#### <number>' final line")
            continue
        extra = {"question": question, "answer": answer}
        if interaction:
            extra["interaction_kwargs"] = {"name": interaction, "query": question, "ground_truth": truth}
        row = verl_row(DATA_SOURCE, question, GSM8K_INSTRUCTION, truth, split, len(rows), extra)
        if system:
            row["prompt"] = [{"role": "system", "content": system}, *row["prompt"]]
        rows.append(row)
    raise_problems(problems)
    return rows


def convert(
    inputs: list[str],
    output_dir: str | Path,
    subset: str | None = None,
    system: str | None = None,
    interaction: str | None = None,
) -> dict[str, Path]:
    out = {}
    for split, files in find_split_files(inputs, subset).items():
        rows = convert_split(files, split, system, interaction)
        out[split] = write_parquet(rows, Path(output_dir) / f"{split}.parquet")
    return out


@entry_point("npu-rl-preprocess-gsm8k")
def main(argv: list[str] | None = None) -> int:
    p = converter_parser(__doc__, "config folder to read (default: main)")
    p.add_argument(
        "--tool-prompt", action="store_true", help="add the tool-use system prompt (multi-turn training with tools)"
    )
    p.add_argument(
        "--interaction",
        metavar="NAME",
        help="add extra_info.interaction_kwargs for the interaction NAME (e.g. gsm8k: simulated user turns)",
    )
    args = p.parse_args(argv)
    system = TOOL_SYSTEM_PROMPT if args.tool_prompt else None
    return report_written(convert(args.input, args.output_dir, args.subset, system, args.interaction))


if __name__ == "__main__":
    raise SystemExit(main())
