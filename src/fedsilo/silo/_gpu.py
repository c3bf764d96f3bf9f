"""NVIDIA GPUs for job code in the sandbox: which device nodes and driver files to bind.

A compute with ``gpus`` gives each job the device nodes of the GPUs it was granted, the
driver's control nodes, and the driver's user-space libraries, all read-only where they
can be; ``CUDA_VISIBLE_DEVICES`` names the granted devices. A compute that declares GPUs
on a machine without them is refused when the agent starts, never at a job's first round.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from pathlib import Path

from fedsilo.errors import ConfigError

__all__ = ["GpuBinds", "check_gpus", "gpu_binds"]

#: Control nodes every CUDA process opens (``nvidia-uvm``: unified memory).
_CONTROL = ("nvidiactl", "nvidia-uvm")
#: Nodes bound when they exist (tools, modesetting, capabilities for MIG).
_OPTIONAL = ("nvidia-uvm-tools", "nvidia-modeset")
#: The driver's user-space libraries CUDA and NVML load by name.
_DRIVER_LIBRARIES = ("libcuda.so.1", "libnvidia-ml.so.1", "libnvidia-ptxjitcompiler.so.1")
#: Folders already in every sandbox (``/usr`` is bound read-only).
_BOUND = ("/usr/",)


class GpuBinds:
    """What a sandbox needs for some GPUs: device nodes, read-only paths, library folders."""

    def __init__(
        self, devices: tuple[str, ...], read_only: tuple[str, ...], library_dirs: tuple[str, ...]
    ) -> None:
        self.devices = devices
        self.read_only = read_only
        self.library_dirs = library_dirs


def _missing_nodes(indices: Iterable[int], dev: Path) -> list[str]:
    wanted = [*_CONTROL, *(f"nvidia{i}" for i in indices)]
    return [str(dev / name) for name in wanted if not (dev / name).exists()]


def check_gpus(
    silo: str, compute: str, indices: tuple[int, ...], *, dev: Path = Path("/dev")
) -> None:
    """Raise :class:`ConfigError` unless this machine has the NVIDIA devices ``indices``."""
    missing = _missing_nodes(indices, dev)
    if missing:
        raise ConfigError(
            f"silo '{silo}': compute '{compute}' declares GPUs {list(indices)}, but this "
            f"machine has no {', '.join(missing)}; load the NVIDIA driver (nvidia-smi must "
            "list the devices, and nvidia-modprobe -u -c=0 creates nvidia-uvm), or remove "
            "'gpus' from the compute",
            field=f"silos.{silo}.compute.gpus",
        )


def _driver_library_dirs() -> tuple[str, ...]:
    """Folders holding the driver's libraries, from the dynamic linker's cache."""
    try:
        done = subprocess.run(
            ["ldconfig", "-p"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ()
    found: list[str] = []
    for line in done.stdout.splitlines():
        name, _, path = line.strip().partition(" => ")
        if name.split(" ", 1)[0] in _DRIVER_LIBRARIES and path:
            folder = os.path.dirname(os.path.realpath(path))
            if folder not in found:
                found.append(folder)
    return tuple(found)


def gpu_binds(devices: tuple[int, ...], *, dev: Path = Path("/dev")) -> GpuBinds:
    """The device nodes of ``devices`` and the driver's files a CUDA process needs.

    The dynamic linker's cache (``/etc/ld.so.cache``) and the driver's library folders
    outside ``/usr`` are bound read-only, and named in ``library_dirs`` for the worker's
    library path; ``/sys`` is bound read-only for NCCL's topology detection.
    """
    nodes = [*_CONTROL, *(f"nvidia{i}" for i in devices)]
    nodes += [name for name in _OPTIONAL if (dev / name).exists()]
    caps = dev / "nvidia-caps"
    paths = [str(dev / name) for name in nodes]
    if caps.is_dir():
        paths.append(str(caps))
    libraries = tuple(d for d in _driver_library_dirs() if not d.startswith(_BOUND))
    read_only = tuple(p for p in ("/etc/ld.so.cache", "/sys") if os.path.exists(p))
    return GpuBinds(tuple(paths), read_only + libraries, libraries)
