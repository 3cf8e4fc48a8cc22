"""The benchmark suite: published layouts (our own rows in tests/fixtures/benchmarks) converted to
verl parquet, graded by the reward, and evaluated on the tiny model into one table."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from npu_rl.eval import main
from npu_rl.eval_suite import SuiteError, format_suite_table, resolve_suite
from npu_rl.tools import preprocess_benchmarks
from npu_rl.tools._dataset_io import DatasetError
from reward import compute_score

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"
LAYOUTS = {
    "math500": "MATH-500",  # test.jsonl
    "aime24": "aime_2024",  # data/train-*.parquet (HF layout, only a train split)
    "aime25": "aime_2025",  # aime2025-I.jsonl / aime2025-II.jsonl (no split in the name)
    "amc23": "amc23",  # parquet with float answers
    "minerva": "minerva_math",  # question / answer jsonl
    "olympiadbench": "OlympiadBench",  # JSON list, final_answer is a list
    "gsm8k": "gsm8k",  # main/test-*.parquet
    "math": "MATH-lighteval",  # data/{train,test}-*.parquet: only test is read
}
TRUTHS = {
    "math500": ["7", r"\frac{3}{4}", "3"],
    "aime24": ["24", "9"],
    "aime25": ["1", "23"],
    "amc23": ["27", "5/6"],
    "minerva": ["60", "9"],
    "olympiadbench": ["2, -2", "25"],
    "gsm8k": ["30", "36"],
    "math": ["6", "7"],
}


@pytest.fixture(scope="module")
def benchmarks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("benchmarks")
    preprocess_benchmarks.convert({name: FIXTURES / folder for name, folder in LAYOUTS.items()}, out)
    return out


def test_every_layout_becomes_verl_rows_with_its_ground_truth(benchmarks: Path) -> None:
    for name, truths in TRUTHS.items():
        rows = pq.read_table(benchmarks / f"{name}.parquet").to_pylist()
        assert [r["reward_model"]["ground_truth"] for r in rows] == truths, name
        assert all(r["prompt"][0]["role"] == "user" and r["extra_info"]["benchmark"] == name for r in rows)
        assert [r["extra_info"]["index"] for r in rows] == list(range(len(rows)))
    math500 = pq.read_table(benchmarks / "math500.parquet").to_pylist()
    assert math500[1]["extra_info"]["subject"] == "Number Theory" and math500[1]["extra_info"]["level"] == 2
    gsm8k = pq.read_table(benchmarks / "gsm8k.parquet").to_pylist()
    assert gsm8k[0]["data_source"] == "openai/gsm8k" and '"####"' in gsm8k[0]["prompt"][0]["content"]


def test_the_reward_grades_each_benchmark_s_answers_by_meaning(benchmarks: Path) -> None:
    responses = {"5/6": r"\boxed{\frac{5}{6}}", "2, -2": r"\boxed{\pm 2}", "24": r"\boxed{024}"}
    for name in TRUTHS:
        for row in pq.read_table(benchmarks / f"{name}.parquet").to_pylist():
            truth = row["reward_model"]["ground_truth"]
            response = "Final Answer: The final answer is $" + responses.get(truth, truth) + "$. I hope it is correct."
            assert compute_score(row["data_source"], response, truth)["acc"], (name, truth)
            assert not compute_score(row["data_source"], r"\boxed{1000}", truth)["acc"], (name, truth)


def test_bad_rows_are_listed_and_nothing_is_written(tmp_path: Path) -> None:
    bad = tmp_path / "aime.jsonl"
    bad.write_text('{"problem": "What is 1+1?"}\n{"answer": "3"}\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"row 0: no final answer(.|\n)*row 1: no problem text"):
        preprocess_benchmarks.convert({"aime24": bad}, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert preprocess_benchmarks.main(["--input", f"nope={bad}", "--output-dir", str(tmp_path / "o")]) == 2
    assert preprocess_benchmarks.main(["--input", str(bad), "--output-dir", str(tmp_path / "o")]) == 2


def test_suite_items_resolve_to_named_files(benchmarks: Path, tmp_path: Path) -> None:
    suite = resolve_suite([benchmarks])
    assert list(suite) == sorted(TRUTHS)
    renamed = resolve_suite([f"AIME={benchmarks / 'aime24.parquet'}", benchmarks / "gsm8k.parquet"])
    assert renamed == {"AIME": benchmarks / "aime24.parquet", "gsm8k": benchmarks / "gsm8k.parquet"}
    for item in (tmp_path, tmp_path / "missing.parquet"):
        with pytest.raises(SuiteError, match="--suite"):
            resolve_suite([item])


def test_format_suite_table_has_a_row_per_benchmark_and_the_unweighted_average() -> None:
    def summary(count: int, mean: float) -> dict:
        return {"num_prompts": count, "metrics": {"count": count, "mean@4": mean, "pass@4": 1.0, "maj@4": mean}}

    result = {"n": 4, "k": [1, 4], "benchmarks": {"aime": summary(30, 0.1), "gsm8k": summary(1319, 0.7)}}
    result["average"] = {"mean@4": 0.4, "pass@1": 0.4, "pass@4": 1.0, "maj@4": 0.4}
    table = format_suite_table(result).splitlines()
    assert table[0].split() == ["benchmark", "count", "mean@4", "pass@1", "pass@4", "maj@4", "resp_len"]
    assert table[2].split()[:3] == ["aime", "30", "10.0"] and table[3].split()[:3] == ["gsm8k", "1319", "70.0"]
    assert table[-1].split()[:2] == ["average", "40.0"]


def test_suite_runs_on_the_tiny_model_and_prints_one_table(
    benchmarks: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--model", str(tiny_model_dir), "--suite", str(benchmarks), "--n", "2", "--temperature", "1.0"]
    args += ["--max-new-tokens", "6", "--reward-workers", "0", "--output-dir", str(tmp_path)]
    result = main(args)
    captured = capsys.readouterr()
    assert "eval suite" in captured.err  # progress (with ETA on a terminal)
    lines = captured.out.splitlines()
    assert lines[0].split()[:5] == ["benchmark", "count", "mean@2", "pass@1", "pass@2"]
    assert [line.split()[0] for line in lines[2 : 2 + len(TRUTHS)]] == sorted(TRUTHS)
    assert any(line.startswith("average") for line in lines)
    saved = json.loads((tmp_path / "suite.summary.json").read_text())
    assert sorted(saved["benchmarks"]) == sorted(TRUTHS)
    for name, summary in saved["benchmarks"].items():
        assert summary["num_prompts"] == len(TRUTHS[name])
        assert (tmp_path / name / "n2_t1.generations.jsonl").is_file()
    means = [s["metrics"]["mean@2"] for s in saved["benchmarks"].values()]
    assert saved["average"]["mean@2"] == pytest.approx(sum(means) / len(means))
    assert result["average"] == saved["average"]


def test_suite_and_data_are_exclusive(tiny_model_dir: Path) -> None:
    with pytest.raises(SystemExit):
        main(["--model", str(tiny_model_dir)])
