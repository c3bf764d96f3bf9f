"""GPU computes: their devices reach the sandbox, and a machine without them is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsilo.config import open_workspace
from fedsilo.errors import ConfigError
from fedsilo.provisioning import provision
from fedsilo.silo._agent import Agent
from fedsilo.silo._gpu import check_gpus, gpu_binds
from fedsilo.silo._sandbox import SandboxSpec, sandbox_argv


def _fake_dev(tmp_path: Path, *names: str) -> Path:
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in names:
        (dev / name).touch()
    return dev


def test_a_machine_without_the_declared_devices_is_refused_by_name(tmp_path: Path) -> None:
    dev = _fake_dev(tmp_path, "nvidiactl", "nvidia-uvm", "nvidia0")
    check_gpus("silo-a", "a-gpu", (0,), dev=dev)
    with pytest.raises(ConfigError) as caught:
        check_gpus("silo-a", "a-gpu", (0, 1), dev=dev)
    message = str(caught.value)
    assert "silo 'silo-a': compute 'a-gpu' declares GPUs [0, 1]" in message
    assert str(dev / "nvidia1") in message and "nvidia0 " not in message


def test_only_the_granted_devices_and_the_driver_reach_the_sandbox(tmp_path: Path) -> None:
    dev = _fake_dev(
        tmp_path, "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia0", "nvidia1", "nvidia2"
    )
    binds = gpu_binds((1,), dev=dev)
    assert str(dev / "nvidia1") in binds.devices
    assert str(dev / "nvidia0") not in binds.devices and str(dev / "nvidia2") not in binds.devices
    assert {str(dev / "nvidiactl"), str(dev / "nvidia-uvm")} <= set(binds.devices)
    spec = SandboxSpec(
        code_dir=tmp_path,
        writable=(tmp_path,),
        devices=binds.devices,
        system=binds.read_only,
        library_path=("/opt/driver/lib",),
    )
    argv = sandbox_argv(spec, ["python"])
    for node in binds.devices:
        at = argv.index(node)
        assert argv[at - 1] == "--dev-bind" and argv[at + 1] == node
    assert argv[argv.index("LD_LIBRARY_PATH") + 1] == "/opt/driver/lib"


def test_an_agent_whose_gpu_compute_has_no_devices_here_does_not_start(tmp_path: Path) -> None:
    if Path("/dev/nvidiactl").exists():
        pytest.skip("this machine has NVIDIA devices")
    (tmp_path / "federation.yaml").write_text(
        "name: gpus\n"
        "orchestrator: {storage: {root: storage/o}, compute: {name: o-cpu}}\n"
        "silos:\n"
        "  - name: silo-a\n"
        "    storage: {root: storage/a}\n"
        "    compute: {name: a-cpu}\n"
        "    computes: [{name: a-gpu, kind: gpu, gpus: [0]}]\n"
    )
    ws = provision(tmp_path / "federation.yaml", tmp_path / "ws")
    with pytest.raises(ConfigError, match="compute 'a-gpu' declares GPUs \\[0\\]"):
        Agent(open_workspace(ws.root).kit("silo-a"))
