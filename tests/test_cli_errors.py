"""Input mistakes end as one message and exit code 2 in every entry point; bugs keep their traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from npu_rl.cli import DEBUG_ENV, UserError, entry_point, user_message

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **env}
    environ.pop(DEBUG_ENV, None) if DEBUG_ENV not in env else None
    return subprocess.run(args, cwd=cwd, env=environ, capture_output=True, text=True, timeout=300)


def assert_one_message(proc: subprocess.CompletedProcess, prog: str, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    message = proc.stderr.strip()
    assert message.startswith(f"{prog}: error: "), message
    for needle in needles:
        assert needle in message, message


def test_train_with_a_missing_model_folder(tmp_path, synthetic_parquet):
    train_files = f"data.train_files=[{synthetic_parquet['train']}]"
    proc = run([sys.executable, "-m", "npu_rl.train", "model.path=models/nowhere/tiny", train_files], tmp_path)
    assert_one_message(proc, "npu_rl.train", "model.path: 'models/nowhere/tiny' does not exist")
    assert proc.stderr.strip().count("\n") == 0


@pytest.mark.slow  # loads the model before the data (~4.5 s); the missing-model case stays quick
def test_train_with_a_missing_data_file(tmp_path, tiny_model_dir):
    missing = tmp_path / "nope" / "train.parquet"
    proc = run(
        [sys.executable, "-m", "npu_rl.train", f"model.path={tiny_model_dir}", f"data.train_files=[{missing}]",
         "trainer.logger=[jsonl]", f"trainer.log_dir={tmp_path / 'logs'}",
         f"trainer.default_local_dir={tmp_path / 'ck'}"],
        tmp_path,
    )  # fmt: skip
    assert_one_message(proc, "npu_rl.train", str(missing))


def test_train_with_a_bad_key_keeps_the_suggestion(tmp_path):
    proc = run([sys.executable, "-m", "npu_rl.train", "model.path=x", "rollout.nn=2"], tmp_path)
    assert_one_message(proc, "npu_rl.train", "did you mean 'rollout.n'")


def test_merge_run_as_a_module_reports_its_own_error_class(tmp_path):
    """Under `python -m` the error classes live in `__main__`; they must still count as user errors."""
    proc = run([sys.executable, "-m", "npu_rl.merge", "--backend", "fsdp", "--local_dir", "nowhere",
                "--target_dir", "out"], tmp_path)  # fmt: skip
    assert_one_message(proc, "npu_rl.merge", "--local_dir nowhere")


def test_a_tool_run_as_a_module(tmp_path):
    argv = [sys.executable, "-m", "npu_rl.tools.preprocess_math", "--input", "nowhere", "--output-dir", "o"]
    proc = run(argv, tmp_path)
    assert_one_message(proc, "npu-rl-preprocess-math", "nowhere: no such file or folder")


def test_eval_merge_and_tools_with_missing_inputs(tmp_path, monkeypatch, capsys):
    from npu_rl import eval as npu_eval
    from npu_rl import merge
    from npu_rl.tools import make_tiny_model, parquet2json, plot_metrics, preprocess_gsm8k

    monkeypatch.chdir(tmp_path)
    cases = [
        (npu_eval.cli, ["--model", "nowhere", "--data", "x.parquet"], "npu_rl.eval", "--model nowhere"),
        (npu_eval.cli, ["--model", "m", "--data", "x.parquet", "--k", "a"], "npu_rl.eval", "--k a"),
        (npu_eval.cli, ["--model", "m", "--data", "x.parquet", "--n", "2"], "npu_rl.eval", "greedy decoding"),
        (merge.main, ["--backend", "fsdp", "--local_dir", ".", "--target_dir", "o", "--max_shard_size", "lots"],
         "npu_rl.merge", "--max_shard_size"),
        (preprocess_gsm8k.main, ["--input", "nowhere", "--output-dir", "o"], "npu-rl-preprocess-gsm8k", "nowhere"),
        (parquet2json.main, ["--input", "nowhere.parquet", "--output", "o"], "npu-rl-parquet2json", "nowhere.parquet"),
        (plot_metrics.main, ["nowhere"], "npu-rl-plot", "nowhere not found"),
        (make_tiny_model.main, ["--data-dir", "nowhere"], "npu-rl-make-tiny-model", "npu-rl-make-synthetic-math"),
    ]  # fmt: skip
    for main, argv, prog, needle in cases:
        assert main(argv) == 2, (prog, argv)
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"{prog}: error: ") and needle in err and "\n" not in err, err


def test_debug_variable_keeps_the_traceback(tmp_path):
    proc = run([sys.executable, "-m", "npu_rl.merge", "--backend", "fsdp", "--local_dir", "nowhere",
                "--target_dir", "out"], tmp_path, **{DEBUG_ENV: "1"})  # fmt: skip
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "MergeError" in proc.stderr


def test_bugs_keep_their_traceback_and_user_errors_do_not(capsys):
    @entry_point("prog")
    def buggy(argv):
        raise KeyError("internal")

    @entry_point("prog")
    def mistaken(argv):
        raise UserError("--flag x: use y")

    @entry_point("prog")
    def fine(argv):
        return {"metrics": 1.0}

    with pytest.raises(KeyError):
        buggy([])
    assert mistaken([]) == 2
    assert capsys.readouterr().err == "prog: error: --flag x: use y\n"
    assert fine([]) == 0


def test_which_exceptions_count_as_user_errors(tmp_path):
    from npu_rl.config import ConfigError
    from npu_rl.data import DataError

    assert user_message(ConfigError("rollout.n: expected an integer")) == "rollout.n: expected an integer"
    assert user_message(DataError("train.parquet row 3: missing")) == "train.parquet row 3: missing"
    assert "pip install 'npu_rl[swanlab]'" in user_message(ModuleNotFoundError("no swanlab", name="swanlab"))
    assert user_message(ModuleNotFoundError("no x", name="some_internal_module")) is None
    with pytest.raises(FileNotFoundError) as info:
        (tmp_path / "absent.yaml").read_text()
    assert user_message(info.value) == f"{tmp_path / 'absent.yaml'}: not found; check the path"
    assert user_message(ValueError("bug")) is None and user_message(TypeError("bug")) is None


def test_every_listed_user_error_names_a_real_exception_class():
    """The list holds names, not classes: a moved or renamed class would silently turn its errors
    back into tracebacks (it happened when ConfigError moved into npu_rl.config.fields)."""
    import importlib

    from npu_rl.cli import USER_ERRORS

    for name in sorted(USER_ERRORS):
        module, _, cls = name.rpartition(".")
        found = getattr(importlib.import_module(module), cls, None)
        assert isinstance(found, type) and issubclass(found, Exception), name
        assert f"{found.__module__}.{found.__qualname__}" == name, name


@pytest.mark.slow  # a training process (~6 s); test_train_with_a_missing_model_folder stays quick
def test_train_with_a_folder_that_is_not_a_model(tmp_path, synthetic_parquet):
    (tmp_path / "weights").mkdir()
    train_files = f"data.train_files=[{synthetic_parquet['train']}]"
    proc = run([sys.executable, "-m", "npu_rl.train", "model.path=weights", train_files], tmp_path)
    assert_one_message(
        proc, "npu_rl.train", "model.path='weights' has no tokenizer.json or", "point it to a Hugging Face model folder"
    )


@pytest.mark.slow  # a process that asks the Hub (offline: ~6 s); the missing-folder case stays quick
def test_train_with_a_hub_id_that_cannot_be_fetched(tmp_path, synthetic_parquet):
    """No network (HF_HUB_OFFLINE=1 here; a typo'd id or a firewall elsewhere): one line naming the key."""
    train_files = f"data.train_files=[{synthetic_parquet['train']}]"
    proc = run([sys.executable, "-m", "npu_rl.train", "model.path=nobody/no-such-model", train_files], tmp_path,
               HF_HUB_OFFLINE="1")  # fmt: skip
    assert_one_message(
        proc, "npu_rl.train", "model.path='nobody/no-such-model' is no folder here and could not be loaded from the Hub"
    )
