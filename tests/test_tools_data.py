"""Dataset converters and the metrics plot, run on small files written here in the upstream layouts
(our own words and numbers, not dataset text)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from npu_rl.data import load_prompts
from npu_rl.eval_metrics import PromptResult, summarize
from npu_rl.tools import parquet2json, plot_metrics, preprocess_gsm8k, preprocess_math
from npu_rl.tools._dataset_io import GSM8K_INSTRUCTION, MATH_INSTRUCTION, DatasetError
from reward import compute_score
from reward.extract import find_boxed

GSM8K_TRAIN = [
    {"question": "Ann has 3 boxes of 400 pens. How many pens?", "answer": "3 * 400 = <<3*400=1200>>1200\n#### 1,200"},
    {"question": "Bo walks 2 km a day for 5 days. How far?", "answer": "2 * 5 = 10\n#### 10"},
]
GSM8K_TEST = [{"question": "Cy buys 4 apples at 3 dollars. Cost?", "answer": "4 * 3 = 12\n#### 12"}]

MATH_TRAIN = [
    {
        "problem": "Simplify $\\frac{2}{4}$.",
        "level": "Level 1",
        "type": "Prealgebra",
        "solution": "Divide top and bottom by 2 to get $\\boxed{\\frac{1}{2}}$.",
    },
    {
        "problem": "Expand $(x+1)^2 - 2x$.",
        "level": "Level 3",
        "type": "Algebra",
        "solution": "First $\\boxed{x^2+2x+1}$ is the square, so the result is $\\boxed{x^{2}+1}$.",
    },
]
MATH_TEST = [
    {
        "problem": "What is $\\sqrt{16}$?",
        "level": "Level 1",
        "type": "Algebra",
        "solution": "Since $4^2=16$, the answer is $\\boxed{4}$.",
    }
]


def write_parquet(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


# -- GSM8K -----------------------------------------------------------------------------------


@pytest.fixture
def gsm8k_download(tmp_path) -> Path:
    """`hf download openai/gsm8k` layout: a main and a socratic config folder."""
    root = tmp_path / "gsm8k_raw"
    write_parquet(GSM8K_TRAIN, root / "main" / "train-00000-of-00001.parquet")
    write_parquet(GSM8K_TEST, root / "main" / "test-00000-of-00001.parquet")
    socratic = [{**r, "answer": "How many? " + r["answer"]} for r in GSM8K_TRAIN]
    write_parquet(socratic, root / "socratic" / "train-00000-of-00001.parquet")
    return root


def test_gsm8k_download_folder_becomes_verl_parquet(tmp_path, gsm8k_download, tiny_tokenizer):
    out = preprocess_gsm8k.convert([str(gsm8k_download)], tmp_path / "out")
    assert set(out) == {"train", "test"}
    train = read_rows(out["train"])
    assert len(train) == 2, "the main config only, not socratic"
    first = train[0]
    assert first["data_source"] == "openai/gsm8k" and first["ability"] == "math"
    assert first["reward_model"] == {"style": "rule", "ground_truth": "1200"}  # thousands separator removed
    (turn,) = first["prompt"]
    assert turn["role"] == "user" and turn["content"] == f"{GSM8K_TRAIN[0]['question']} {GSM8K_INSTRUCTION}"
    assert first["extra_info"]["split"] == "train" and first["extra_info"]["index"] == 0
    assert first["extra_info"]["answer"] == GSM8K_TRAIN[0]["answer"]
    # the trainer's data loader accepts it, and the reward grades the requested "####" form
    dataset = load_prompts(out["test"], tiny_tokenizer)
    assert [r.ground_truth for r in dataset.records] == ["12"]
    assert compute_score("openai/gsm8k", "4 * 3 = 12\n#### 12", dataset.records[0].ground_truth)["acc"]


def test_gsm8k_original_jsonl_files(tmp_path):
    files = [write_jsonl(GSM8K_TRAIN, tmp_path / "train.jsonl"), write_jsonl(GSM8K_TEST, tmp_path / "test.jsonl")]
    out = preprocess_gsm8k.convert([str(f) for f in files], tmp_path / "out")
    assert [r["reward_model"]["ground_truth"] for r in read_rows(out["train"])] == ["1200", "10"]


def test_gsm8k_subset_flag_picks_another_config(tmp_path, gsm8k_download):
    out = preprocess_gsm8k.convert([str(gsm8k_download)], tmp_path / "out", subset="socratic")
    assert set(out) == {"train"}
    assert read_rows(out["train"])[0]["extra_info"]["answer"].startswith("How many?")


def test_gsm8k_bad_rows_are_all_named_and_nothing_is_written(tmp_path, capsys):
    rows = [*GSM8K_TRAIN, {"question": "No final line", "answer": "just 5"}, {"question": "", "answer": "#### 1"}]
    src = write_parquet(rows, tmp_path / "train.parquet")
    assert preprocess_gsm8k.main(["--input", str(src), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "2 bad rows" in err
    assert "[npu_rl] converting train: started (4 rows)" in err  # progress, one line per stage in logs
    assert f"{src}: row 2: column 'answer' has no '#### <number>'" in err
    assert f"{src}: row 3: column 'question' is missing or empty" in err
    assert not (tmp_path / "out").exists()


def test_missing_input_and_ambiguous_folders_are_explained(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        preprocess_gsm8k.convert([str(tmp_path / "nope")], tmp_path / "out")
    write_parquet(MATH_TRAIN, tmp_path / "algebra" / "train-0.parquet")
    write_parquet(MATH_TRAIN, tmp_path / "geometry" / "train-0.parquet")
    with pytest.raises(DatasetError, match=r"several folders \(algebra, geometry\): pass --subset"):
        preprocess_math.convert([str(tmp_path)], tmp_path / "out")


# -- MATH ------------------------------------------------------------------------------------


@pytest.fixture
def math_download(tmp_path) -> Path:
    root = tmp_path / "math_raw"
    write_parquet(MATH_TRAIN, root / "data" / "train-00000-of-00001.parquet")
    write_parquet(MATH_TEST, root / "data" / "test-00000-of-00001.parquet")
    write_parquet(MATH_TRAIN[:1], root / "prealgebra" / "train-00000-of-00001.parquet")  # a per-subject config
    return root


def test_math_ground_truth_is_the_last_boxed_with_nested_braces(tmp_path, math_download, tiny_tokenizer):
    out = preprocess_math.convert([str(math_download)], tmp_path / "out")
    train = read_rows(out["train"])
    assert [r["reward_model"]["ground_truth"] for r in train] == ["\\frac{1}{2}", "x^{2}+1"]
    first = train[0]
    assert first["data_source"] == "DigitalLearningGmbH/MATH-lighteval"
    assert first["prompt"][0]["content"] == f"{MATH_TRAIN[0]['problem']} {MATH_INSTRUCTION}"
    extra = first["extra_info"]
    assert (extra["level"], extra["type"], extra["split"]) == ("Level 1", "Prealgebra", "train")
    assert extra["solution"] == MATH_TRAIN[0]["solution"]
    records = load_prompts(out["train"], tiny_tokenizer).records
    assert compute_score(records[0].data_source, "so it is \\boxed{0.5}", records[0].ground_truth)["acc"]
    # the level / subject columns reach the evaluation breakdown
    results = [PromptResult(r.data_source, r.extra_info, [True], ["1"], [3], [False]) for r in records]
    summary = summarize(results, n=1, ks=[1])
    assert set(summary["by_level"]) == {"Level 1", "Level 3"}
    assert set(summary["by_subject"]) == {"Prealgebra", "Algebra"}


def test_math500_style_answer_and_subject_columns(tmp_path):
    rows = [{"problem": "Compute $1+1$.", "solution": "Add: \\boxed{2}.", "answer": "2", "subject": "Algebra"}]
    src = write_jsonl(rows, tmp_path / "test.jsonl")
    out = preprocess_math.convert([str(src)], tmp_path / "out", data_source="HuggingFaceH4/MATH-500")
    (row,) = read_rows(out["test"])
    assert row["reward_model"]["ground_truth"] == "2" and row["data_source"] == "HuggingFaceH4/MATH-500"
    assert row["extra_info"]["subject"] == "Algebra"


def test_math_solution_without_a_closed_box_is_an_error(tmp_path):
    rows = [{**MATH_TEST[0], "solution": "The answer is \\boxed{4"}]
    src = write_parquet(rows, tmp_path / "test.parquet")
    with pytest.raises(DatasetError, match=r"row 0: column 'solution' has no complete \\boxed"):
        preprocess_math.convert([str(src)], tmp_path / "out")


# -- OpenCompass export ----------------------------------------------------------------------


def test_parquet2json_writes_opencompass_math_json(tmp_path, math_download, synthetic_parquet):
    converted = preprocess_math.convert([str(math_download)], tmp_path / "math")
    out = tmp_path / "oc" / "math.json"
    assert (
        parquet2json.main(["--input", str(converted["train"]), str(synthetic_parquet["test"]), "--output", str(out)])
        == 0
    )
    data = json.loads(out.read_text())
    assert list(data)[:3] == ["0", "1", "2"] and len(data) == 2 + 16
    assert data["0"] == {
        "problem": MATH_TRAIN[0]["problem"],
        "solution": MATH_TRAIN[0]["solution"],
        "level": "Level 1",
        "type": "Prealgebra",
    }
    synthetic = data["2"]
    truth = read_rows(synthetic_parquet["test"])[0]["reward_model"]["ground_truth"]
    assert MATH_INSTRUCTION not in synthetic["problem"] and synthetic["level"].startswith("Level ")
    # OpenCompass reads the answer from the solution's last \boxed{}: it must be the ground truth
    for entry, gt in [(data["1"], "x^{2}+1"), (synthetic, truth)]:
        found, _ = find_boxed(entry["solution"])
        assert found[-1][2] == gt


# -- plot ------------------------------------------------------------------------------------


def _png_size_and_colors(path: Path) -> tuple[tuple[int, int], int]:
    from PIL import Image

    with Image.open(path) as img:
        return img.size, len(img.convert("RGB").getcolors(maxcolors=1 << 20) or [])


def test_plot_from_a_metrics_file_has_the_requested_size(tmp_path):
    rows = [
        {"step": s, "critic/score/mean": s / 10, "actor/entropy": 2 - s / 10, "actor/kl_loss": 0.001 * s,
         "actor/pg_clipfrac": 0.01, "response_length/mean": 20 + s, "actor/grad_norm": None}
        for s in range(1, 11)
    ]  # fmt: skip
    rows.insert(0, {"step": 0, "val-core/synthetic/arith/acc/mean@1": 0.1})
    metrics = write_jsonl(rows, tmp_path / "run" / "metrics.jsonl")
    assert plot_metrics.main([str(metrics.parent), "--width", "900", "--height", "600"]) == 0
    size, colors = _png_size_and_colors(tmp_path / "run" / "metrics.png")
    assert size == (900, 600) and colors > 50, "a real chart, not a blank canvas"
    series = plot_metrics.load_series(metrics)
    assert "actor/grad_norm" not in series and series["val-core/synthetic/arith/acc/mean@1"] == [(0, 0.1)]


def test_plot_explains_a_missing_or_broken_file(tmp_path, capsys):
    assert plot_metrics.main([str(tmp_path)]) == 2
    assert "metrics.jsonl not found" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n')
    assert plot_metrics.main([str(tmp_path)]) == 2
    assert "line 2 is not JSON" in capsys.readouterr().err


@pytest.mark.slow
def test_plot_of_a_real_training_run(tmp_path, tiny_model_dir, synthetic_parquet):
    logs = tmp_path / "logs"
    train = [
        sys.executable, "-m", "npu_rl.train", f"model.path={tiny_model_dir}",
        f"data.train_files=[{synthetic_parquet['train']}]", f"data.val_files=[{synthetic_parquet['test']}]",
        "data.train_batch_size=2", "data.val_max_samples=2", "actor.ppo_mini_batch_size=2", "rollout.n=2",
        "rollout.max_new_tokens=8", "reward.num_workers=0", "trainer.logger=[jsonl]", f"trainer.log_dir={logs}",
        f"trainer.default_local_dir={tmp_path / 'ckpt'}", "trainer.total_training_steps=3", "trainer.test_freq=3",
        "trainer.num_threads=1",
    ]  # fmt: skip
    subprocess.run(train, check=True, capture_output=True, timeout=600)
    plot = [sys.executable, "-m", "npu_rl.tools.plot_metrics", str(logs), "--output", str(tmp_path / "p.png")]
    subprocess.run(plot, check=True, capture_output=True, timeout=120)
    size, colors = _png_size_and_colors(tmp_path / "p.png")
    assert size == (1500, 900) and colors > 50


def test_math_levels_filter_keeps_the_held_out_set_whole(tmp_path, math_download):
    assert (
        preprocess_math.main(
            ["--input", str(math_download), "--output-dir", str(tmp_path / "o"), "--levels", "3", "4", "5"]
        )
        == 0
    )
    assert [r["extra_info"]["level"] for r in read_rows(tmp_path / "o" / "train.parquet")] == ["Level 3"]
    assert [r["extra_info"]["level"] for r in read_rows(tmp_path / "o" / "test.parquet")] == ["Level 1"]


ONE_UPDATE = {
    "actor": {"use_kl_loss": False, "ppo_epochs": 1, "ppo_mini_batch_size": 16},
    "data": {"train_batch_size": 16},
}


def _run_dir(tmp_path: Path, name: str, config: dict | None, clipfrac: float = 0.0) -> Path:
    rows = [
        {"step": s, "critic/score/mean": s / 10, "actor/ppo_kl": 0.0, "actor/pg_clipfrac": clipfrac,
         "actor/pg_clipfrac_lower": 0.0, "actor/entropy": 1.0 - s / 20}
        for s in range(1, 8)
    ]  # fmt: skip
    metrics = write_jsonl(rows, tmp_path / name / "metrics.jsonl")
    if config is not None:
        (metrics.parent / "config.yaml").write_text(yaml.safe_dump(config))
    return metrics.parent


def test_panels_that_are_zero_by_construction_say_why(tmp_path):
    panels = {
        p.title: p for p in plot_metrics.build_panels([plot_metrics.load_run(_run_dir(tmp_path, "a", ONE_UPDATE))])
    }
    assert not panels["KL"].lines and "one update per rollout" in panels["KL"].notes[0]
    assert not panels["clip fraction"].lines
    assert panels["clip fraction"].notes == [
        "pg_clipfrac, pg_clipfrac_lower = 0 by construction: one update per rollout (ppo_epochs=1, one mini-batch): "
        "the probability ratio is exactly 1"
    ]
    assert [line[0] for line in panels["reward / accuracy"].lines] == ["critic/score/mean"]
    # several updates per rollout: a zero clip fraction is a finding, not a construction, so it is drawn
    several = {**ONE_UPDATE, "actor": {**ONE_UPDATE["actor"], "ppo_epochs": 2}}
    panels = {p.title: p for p in plot_metrics.build_panels([plot_metrics.load_run(_run_dir(tmp_path, "b", several))])}
    assert len(panels["clip fraction"].lines) == 2 and not panels["clip fraction"].notes
    # no config beside the metrics: nothing is assumed
    panels = {p.title: p for p in plot_metrics.build_panels([plot_metrics.load_run(_run_dir(tmp_path, "c", None))])}
    assert len(panels["KL"].lines) == 1 and not panels["KL"].notes


def test_several_runs_overlay_with_smoothing(tmp_path, capsys):
    a, b = _run_dir(tmp_path, "a", ONE_UPDATE), _run_dir(tmp_path, "b", None, clipfrac=0.1)
    runs = [plot_metrics.load_run(str(a), "lr1e-6"), plot_metrics.load_run(str(b), "lr1e-5")]
    panels = {p.title: p for p in plot_metrics.build_panels(runs)}
    assert [(line[0], line[2]) for line in panels["reward / accuracy"].lines] == [
        ("lr1e-6: critic/score/mean", 0), ("lr1e-5: critic/score/mean", 1)
    ]  # fmt: skip
    assert [line[0] for line in panels["clip fraction"].lines] == [
        "lr1e-5: actor/pg_clipfrac",
        "lr1e-5: actor/pg_clipfrac_lower",
    ]
    assert panels["clip fraction"].notes[0].startswith("lr1e-6: pg_clipfrac, pg_clipfrac_lower = 0 by construction")
    out = tmp_path / "both.png"
    argv = [str(a), str(b / "metrics.jsonl"), "--labels", "lr1e-6,lr1e-5", "--smooth", "0.8", "--output", str(out)]
    assert plot_metrics.main(argv) == 0
    size, colors = _png_size_and_colors(out)
    assert size == (1500, 900) and colors > 50
    assert "[npu_rl] plotting both.png: done, 7 parts" in capsys.readouterr().err
    assert plot_metrics.main([str(a), "--smooth", "1.0"]) == 2
    assert plot_metrics.main([str(a), str(b), "--labels", "one"]) == 2


def test_ema_is_debiased():
    assert plot_metrics.ema([1.0, 1.0, 1.0], 0.9) == pytest.approx([1.0, 1.0, 1.0])
    assert plot_metrics.ema([0.0, 1.0], 0.5) == pytest.approx([0.0, 0.5 / 0.75])
