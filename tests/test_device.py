"""Device selection logic, tested with the hardware that is not here simulated at its probe functions."""

import subprocess
from pathlib import Path

import pytest

from npu_rl import device


def test_auto_prefers_npu_then_cuda_then_cpu(monkeypatch):
    monkeypatch.delenv(device.ENV_OVERRIDE, raising=False)
    monkeypatch.setattr(device, "_npu_available", lambda: True)
    monkeypatch.setattr(device, "_cuda_available", lambda: True)
    assert device.select("auto").type == "npu"
    monkeypatch.setattr(device, "_npu_available", lambda: False)
    assert device.select("auto").type == "cuda"
    monkeypatch.setattr(device, "_cuda_available", lambda: False)
    assert device.select("auto").type == "cpu"


def test_env_overrides_config(monkeypatch):
    monkeypatch.setenv(device.ENV_OVERRIDE, "cpu")
    monkeypatch.setattr(device, "_cuda_available", lambda: True)
    assert device.select("cuda").type == "cpu"


def test_npu_without_torch_npu_says_what_to_install(monkeypatch):
    monkeypatch.delenv(device.ENV_OVERRIDE, raising=False)
    with pytest.raises(device.DeviceError, match=r"torch_npu.*npu_rl\[npu\]"):
        device.select("npu")


def test_cuda_request_without_cuda_is_an_error(monkeypatch):
    monkeypatch.delenv(device.ENV_OVERRIDE, raising=False)
    monkeypatch.setattr(device, "_cuda_available", lambda: False)
    with pytest.raises(device.DeviceError, match="not available"):
        device.select("cuda")


def test_unknown_device_is_rejected(monkeypatch):
    monkeypatch.setenv(device.ENV_OVERRIDE, "tpu")
    with pytest.raises(device.DeviceError, match="unknown device 'tpu'"):
        device.select("auto")


@pytest.mark.parametrize(
    ("kind", "backend", "env"),
    [("npu", "hccl", "ASCEND_RT_VISIBLE_DEVICES"), ("cuda", "nccl", "CUDA_VISIBLE_DEVICES"), ("cpu", "gloo", None)],
)
def test_backend_and_visible_devices(kind, backend, env):
    acc = device.Accelerator(kind)
    assert acc.dist_backend == backend
    assert acc.visible_devices_env == env


def test_peak_flops_table():
    assert device.peak_flops_for("Ascend910B2") == 376e12
    assert device.peak_flops_for("Ascend910B") == 313e12  # the unspecified 910 entry
    assert device.peak_flops_for("NVIDIA H100 80GB HBM3") == 989e12
    assert device.peak_flops_for("NVIDIA A100-SXM4-80GB") == 312e12
    assert device.peak_flops_for("some cpu") is None
    assert device.Accelerator("cpu").peak_flops() is None


def test_cpu_accelerator_basics():
    acc = device.Accelerator("cpu")
    acc.synchronize()
    acc.empty_cache()
    assert str(acc.torch_device(3)) == "cpu"
    assert acc.memory_stats()["perf/cpu_peak_rss_gb"] > 0


def test_host_memory_is_what_verl_logs():
    """verl's perf/cpu_memory_used_gb is psutil.virtual_memory().used; read twice, so other processes
    may move it a little between the two reads."""
    psutil = pytest.importorskip("psutil")
    ours = device.Accelerator("cpu").memory_stats()["perf/cpu_memory_used_gb"]
    assert ours == pytest.approx(psutil.virtual_memory().used / 1024**3, abs=0.25)


def test_rng_state_round_trip():
    import torch

    device.seed_everything(3, device.Accelerator("cpu"))
    state = device.rng_state(device.Accelerator("cpu"))
    a = torch.rand(3)
    device.set_rng_state(state, device.Accelerator("cpu"))
    assert torch.equal(torch.rand(3), a)


def test_no_torch_cuda_outside_the_device_layer():
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        ["grep", "-rln", "torch.cuda", "npu_rl", "reward", "--include=*.py"], cwd=root, capture_output=True, text=True
    ).stdout.split()
    assert out == ["npu_rl/device.py"] or set(out) <= {"npu_rl/device.py"}, out


def test_cpu_threads_default_to_the_cores_this_process_may_use(monkeypatch):
    from npu_rl.device import cpu_threads

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert cpu_threads(3) == 3
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 5, 7, 9})
    assert cpu_threads() == 6
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: the node's cores shared among its ranks
    assert cpu_threads() == 1
