"""Kernel-enforced limits for a job worker's process tree: one control group per tree.

Task code nobody in the silo wrote runs as a tree of processes (ranks, DataLoader workers,
whatever it forks); its limits must hold however it behaves, so the kernel enforces them:
memory, pids and cpu of a control group, on cgroup v2 (production hosts) or v1. The
worker's command is prefixed by a shell that joins the group before it runs anything, so
no early fork escapes. Where no group can be created the worker sets rlimits on itself
(:func:`apply_rlimits`, per process and weaker) and :attr:`Limiter.reason` says why.

Groups live in ``<parent>/fedsilo-<owner>-<pid>/<group>``; ``<parent>`` is the agent's own
cgroup where possible, which keeps the agent's container limits above its jobs.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import resource
import shlex
import signal
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from fedsilo.errors import FedsiloError

__all__ = ["Breach", "Enforcement", "JobGroup", "Limiter", "Limits", "apply_rlimits"]

_log = logging.getLogger("fedsilo.agent")

#: The variable through which a worker learns the rlimits to set on itself.
RLIMITS_VARIABLE = "FEDSILO_RLIMITS"
#: Exit code of the launch prefix when the process could not join its group.
JOIN_FAILED = 125
_PERIOD_US = 100_000
_KILL_WAIT_S = 5.0
#: How far below its limit a group's peak may stay when a charge fails (a huge page).
_PEAK_SLACK = 4 * 2**20
_OWNER = re.compile(r"[a-z0-9-]+")
_NAME = re.compile(r"[A-Za-z0-9._-]+")


class Enforcement(StrEnum):
    """How limits are enforced: a cgroup per worker tree (v2 or v1), or rlimits per process."""

    CGROUP_V2 = "cgroup-v2"
    CGROUP_V1 = "cgroup-v1"
    RLIMITS = "rlimits"


@dataclass(frozen=True)
class Limits:
    """The limits of one worker tree; ``None`` means no limit.

    ``memory_bytes`` covers the whole tree (per process under rlimits, as address space);
    ``processes`` counts threads too, as the kernel does; ``cpu_cores`` is a CPU quota in
    cores (1.5 = 150 % of one core), enforced only by cgroups; ``file_bytes`` is the largest
    file a process may write (RLIMIT_FSIZE: no cgroup limits file size), enforced everywhere.
    """

    memory_bytes: int | None = None
    processes: int | None = None
    cpu_cores: float | None = None
    file_bytes: int | None = None

    def __post_init__(self) -> None:
        for field, value in asdict(self).items():
            if value is not None and value <= 0:
                raise ValueError(f"limit {field} must be positive, not {value}")


class Breach(StrEnum):
    """A limit a worker tree ran into, as the kernel counted it."""

    MEMORY = "memory"
    PROCESSES = "processes"


class JobGroup(Protocol):
    """One worker tree's confinement; ``folders`` are its cgroup folders (none for rlimits)."""

    name: str
    limits: Limits
    enforcement: Enforcement
    folders: tuple[Path, ...]

    def launch_prefix(self) -> list[str]:
        """The argv to put before the worker's command so it runs inside the group."""

    def environment(self) -> dict[str, str]:
        """Variables the worker needs (the rlimits it must set on itself)."""

    def breach(self) -> Breach | None:
        """A limit the tree hit since the group was created (cheap, fit for polling)."""

    def memory_peak(self) -> int | None:
        """The tree's highest memory use in bytes, when the kernel reports it."""

    def pids(self) -> list[int]:
        """The processes now in the group."""

    def kill(self) -> None:
        """SIGKILL every process of the group and return once it is empty (at most ~5 s)."""

    def close(self) -> None:
        """Kill the tree and remove the group; idempotent."""


def _write(path: Path, value: str) -> None:
    # Plain open(..., "w"): what cgroupfs accepts, and what a fake tree in a test accepts.
    with path.open("w") as file:
        file.write(value)


def _try_write(path: Path, value: str) -> bool:
    with contextlib.suppress(OSError):
        _write(path, value)
        return True
    return False


def _set_limit(path: Path, value: str) -> None:
    """Write one limit; a failure is an error, so that no limit is silently dropped."""
    try:
        _write(path, value)
    except OSError as exc:
        raise FedsiloError(f"cannot set {path} to {value}: {exc.strerror or exc}") from exc


def _counter(path: Path, key: str) -> int:
    """The value of ``key`` in a flat keyed file such as ``memory.events``; 0 if absent."""
    with contextlib.suppress(OSError, ValueError):
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    return 0


def _int(path: Path) -> int:
    """The number a one-value kernel file holds; 0 if absent or unreadable."""
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text())
    return 0


def _rmdir(path: Path) -> None:
    """Remove a cgroup folder; the kernel may say busy for a moment after its last exit."""
    deadline = time.monotonic() + 1.0
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                _log.warning("could not remove control group %s: %s", path, exc.strerror or exc)
                return
            time.sleep(0.02)


class _CgroupGroup:
    """What v1 and v2 groups share: joining, listing, killing and removing their folders."""

    enforcement: Enforcement

    def __init__(self, name: str, limits: Limits, folders: tuple[Path, ...]) -> None:
        self.name = name
        self.limits = limits
        self.folders = folders
        self.closed = False

    def launch_prefix(self) -> list[str]:
        lines = []
        for folder in self.folders:
            procs = shlex.quote(str(folder / "cgroup.procs"))
            lines.append(
                f"echo $$ > {procs} || {{ echo fedsilo-limits: cannot join the control group"
                f" {procs} >&2; exit {JOIN_FAILED}; }}"
            )
        return ["/bin/sh", "-c", "\n".join([*lines, 'exec "$@"']), "fedsilo-limits"]

    def environment(self) -> dict[str, str]:
        if self.limits.file_bytes is None:
            return {}
        return {RLIMITS_VARIABLE: json.dumps({"file_bytes": self.limits.file_bytes})}

    def pids(self) -> list[int]:
        try:
            text = (self.folders[0] / "cgroup.procs").read_text()
        except OSError:
            return []
        return sorted(int(line) for line in text.split())

    def kill(self) -> None:
        deadline = time.monotonic() + _KILL_WAIT_S
        while self.pids():
            if time.monotonic() > deadline:
                _log.warning("control group %s outlived 5 s of SIGKILL", self.folders[0])
                return
            self._kill_once()
            time.sleep(0.01)

    def _kill_once(self) -> None:
        # Frozen, the tree cannot fork between our reading its pids and killing them.
        frozen = self._freeze(True)
        try:
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        finally:
            if frozen:
                self._freeze(False)

    def _freeze(self, on: bool) -> bool:
        """Freeze (waiting up to 1 s until frozen) or thaw; False without a freezer."""
        return False

    @staticmethod
    def _wait_until(path: Path, line: str) -> None:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if line in path.read_text().splitlines():
                    return
            time.sleep(0.001)

    def close(self) -> None:
        if self.closed:
            return
        self.kill()
        for folder in reversed(self.folders):
            _rmdir(folder)
        self.closed = True


class _V1Group(_CgroupGroup):
    """A group on cgroup v1: one folder per controller (memory, pids, then cpu, freezer)."""

    enforcement = Enforcement.CGROUP_V1

    def __init__(self, name: str, limits: Limits, folders: dict[str, Path]) -> None:
        super().__init__(name, limits, tuple(folders.values()))
        self._memory = folders["memory"]
        self._pids = folders["pids"]
        self._freezer = folders.get("freezer")

    def breach(self) -> Breach | None:
        if _counter(self._memory / "memory.oom_control", "oom_kill") and self._hit_memory_limit():
            return Breach.MEMORY
        if _counter(self._pids / "pids.events", "max"):
            return Breach.PROCESSES
        return None

    def _hit_memory_limit(self) -> bool:
        # An OOM kill may come from the host's OOM killer; it was this group's limit if a
        # charge failed here (failcnt, which Linux 6.18 leaves at 0 for v1) or use peaked at it.
        if _int(self._memory / "memory.failcnt") or _int(self._memory / "memory.memsw.failcnt"):
            return True
        limit = self.limits.memory_bytes
        return limit is not None and (self.memory_peak() or 0) >= limit - _PEAK_SLACK

    def memory_peak(self) -> int | None:
        return _int(self._memory / "memory.max_usage_in_bytes") or None

    def _freeze(self, on: bool) -> bool:
        state = "FROZEN" if on else "THAWED"
        if self._freezer is None or not _try_write(self._freezer / "freezer.state", state):
            return False
        if on:
            self._wait_until(self._freezer / "freezer.state", state)
        return True


class _V2Group(_CgroupGroup):
    """A group on cgroup v2: one folder holding every controller."""

    enforcement = Enforcement.CGROUP_V2

    def breach(self) -> Breach | None:
        # oom_kill counts kills by any OOM killer, the host's too; max and oom count the
        # times this group's own limit was reached.
        events = self.folders[0] / "memory.events"
        killed = _counter(events, "oom_kill") or _counter(events, "oom_group_kill")
        if killed and (_counter(events, "oom") or _counter(events, "max")):
            return Breach.MEMORY
        if _counter(self.folders[0] / "pids.events", "max"):
            return Breach.PROCESSES
        return None

    def memory_peak(self) -> int | None:
        return _int(self.folders[0] / "memory.peak") or None

    def _kill_once(self) -> None:
        # cgroup.kill (Linux 5.14) kills the whole tree atomically, forks in flight included.
        if not _try_write(self.folders[0] / "cgroup.kill", "1"):
            super()._kill_once()

    def _freeze(self, on: bool) -> bool:
        if not _try_write(self.folders[0] / "cgroup.freeze", "1" if on else "0"):
            return False
        if on:
            self._wait_until(self.folders[0] / "cgroup.events", "frozen 1")
        return True


class _RlimitGroup:
    """No group at all: the worker sets rlimits on itself; the caller kills its process group."""

    enforcement = Enforcement.RLIMITS
    folders: tuple[Path, ...] = ()

    def __init__(self, name: str, limits: Limits) -> None:
        self.name = name
        self.limits = limits
        self.closed = False

    def launch_prefix(self) -> list[str]:
        return []

    def environment(self) -> dict[str, str]:
        values = {key: value for key, value in asdict(self.limits).items() if value is not None}
        return {RLIMITS_VARIABLE: json.dumps(values)}

    def breach(self) -> Breach | None:
        return None

    def memory_peak(self) -> int | None:
        return None

    def pids(self) -> list[int]:
        return []

    def kill(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True


def _own_cgroups(proc_cgroup: Path) -> dict[str, tuple[str, str]]:
    """Controller -> (its hierarchy's controller list, path) from /proc/self/cgroup; v2 is ''."""
    own: dict[str, tuple[str, str]] = {}
    for line in proc_cgroup.read_text().splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(","):
                own[controller] = (parts[1], parts[2])
    return own


def _enable_controllers(subtree_control: Path) -> bool:
    """Give a v2 cgroup's children memory and pids, and cpu if it can; True with cpu."""
    # The kernel checks every name before it applies any: one unavailable, none applied.
    if _try_write(subtree_control, "+memory +pids +cpu"):
        return True
    _write(subtree_control, "+memory +pids")
    return False


def _v2_prepare(base: Path, folder: str) -> tuple[Path, bool]:
    """Create ``base/folder``, whose children get memory and pids (and cpu where possible)."""
    cpu = _enable_controllers(base / "cgroup.subtree_control")
    target = base / folder
    target.mkdir(exist_ok=True)
    try:
        return target, _enable_controllers(target / "cgroup.subtree_control") and cpu
    except OSError:
        _rmdir(target)
        raise


class Limiter:
    """Creates and removes the control groups of one agent; :meth:`detect` makes one."""

    def __init__(
        self, enforcement: Enforcement, reason: str | None, bases: dict[str, Path], *, cpu: bool
    ) -> None:
        self.enforcement = enforcement
        self.reason = reason
        self._bases = bases
        self._cpu = cpu
        self._groups: dict[str, _V1Group | _V2Group | _RlimitGroup] = {}

    @classmethod
    def _fallback(cls, reason: str) -> Limiter:
        return cls(Enforcement.RLIMITS, reason, {}, cpu=False)

    @classmethod
    def detect(
        cls,
        owner: str,
        *,
        sysfs: Path = Path("/sys/fs/cgroup"),
        proc_cgroup: Path = Path("/proc/self/cgroup"),
        parent: str | None = None,
    ) -> Limiter:
        """Find where this process may create groups, or fall back to rlimits saying why.

        ``owner`` (``[a-z0-9-]+``) and this process's pid name the folder its groups live
        in, so two agents never share one; ``parent`` is a cgroup path from the silo's
        configuration (``limits.cgroup_parent``), otherwise it is found. Never raises for
        an unusable cgroup setup.
        """
        if not _OWNER.fullmatch(owner):
            raise ValueError(f"owner {owner!r} must match [a-z0-9-]+")
        if parent is not None and ".." in parent.split("/"):
            raise ValueError(f"cgroup parent {parent!r} may not contain '..'")
        folder = f"fedsilo-{owner}-{os.getpid()}"
        try:
            own = _own_cgroups(proc_cgroup)
            v2 = sysfs / "cgroup.controllers"
            available = v2.read_text().split() if v2.exists() else []
        except OSError as exc:
            return cls._fallback(f"cannot read the cgroup setup: {exc}")
        if "memory" in available and "pids" in available:
            return cls._detect_v2(sysfs, folder, own.get("", ("", "/"))[1], parent)
        if all((sysfs / name / "cgroup.procs").is_file() for name in ("memory", "pids")):
            return cls._detect_v1(sysfs, folder, own, parent)
        return cls._fallback(
            f"no cgroup hierarchy with the memory and pids controllers is mounted at {sysfs}; "
            "mount cgroup v2 there (or the v1 memory and pids controllers)"
        )

    @classmethod
    def _detect_v2(cls, sysfs: Path, folder: str, own: str, parent: str | None) -> Limiter:
        if parent is not None:
            candidates = [parent]
        else:
            candidates = [own, str(Path(own).parent)] + (["/"] if os.geteuid() == 0 else [])
        tried = []
        for candidate in dict.fromkeys(candidates):
            try:
                target, cpu = _v2_prepare(sysfs / candidate.strip("/"), folder)
            except OSError as exc:
                tried.append(f"{candidate}: {exc.strerror or exc}")
                continue
            return cls(Enforcement.CGROUP_V2, None, {"unified": target}, cpu=cpu)
        return cls._fallback(
            f"cannot create control groups with memory and pids under {sysfs} "
            f"(tried {'; '.join(tried)}); run the agent as root, in a systemd unit with "
            "Delegate=yes, or set limits.cgroup_parent to a cgroup delegated to it"
        )

    @classmethod
    def _detect_v1(
        cls, sysfs: Path, folder: str, own: dict[str, tuple[str, str]], parent: str | None
    ) -> Limiter:
        bases: dict[str, Path] = {}
        for controller in ("memory", "pids", "cpu", "freezer"):
            combined, path = own.get(controller, (controller, "/"))
            mounts = [sysfs / controller, sysfs / combined]
            mount = next((m for m in mounts if (m / "cgroup.procs").is_file()), None)
            if mount is None:
                continue  # only cpu and freezer can be missing: detect checked the others
            base = mount / (parent if parent is not None else path).strip("/")
            if parent is None and not base.is_dir():
                base = mount  # a container without a cgroup namespace: the mount is its own
            try:
                (base / folder).mkdir(exist_ok=True)
            except OSError as exc:
                if controller in ("cpu", "freezer"):
                    continue
                for made in bases.values():
                    _rmdir(made)
                return cls._fallback(
                    f"cannot create the control group {base / folder}: {exc.strerror or exc}; "
                    "run the agent as root or set limits.cgroup_parent to a cgroup it may write"
                )
            bases[controller] = base / folder
        return cls(Enforcement.CGROUP_V1, None, bases, cpu="cpu" in bases)

    def group(self, name: str, limits: Limits) -> JobGroup:
        """Create the group ``name`` (``[A-Za-z0-9._-]+``) with ``limits`` written.

        A limit that cannot be written is a :class:`FedsiloError` naming the file and
        the value, and the group is removed: no limit is silently dropped.
        """
        if not _NAME.fullmatch(name) or name in (".", ".."):
            raise ValueError(f"group name {name!r} must match [A-Za-z0-9._-]+")
        live = self._groups.get(name)
        if live is not None and not live.closed:
            raise ValueError(f"a group named {name!r} is already live")
        if self.enforcement is Enforcement.RLIMITS:
            if limits.cpu_cores is not None:
                _log.warning("group %s: cpu_cores is not enforced without cgroups", name)
            self._groups[name] = _RlimitGroup(name, limits)
            return self._groups[name]
        if limits.cpu_cores is not None and not self._cpu:
            raise FedsiloError(
                f"cannot limit group {name} to {limits.cpu_cores} CPU cores: "
                "the cpu controller is not available to this agent"
            )
        folders: dict[str, Path] = {}
        try:
            for controller, base in self._bases.items():
                (base / name).mkdir()
                folders[controller] = base / name
            if self.enforcement is Enforcement.CGROUP_V1:
                group: _V1Group | _V2Group = _V1Group(name, limits, folders)
                self._write_v1(folders, limits)
            else:
                group = _V2Group(name, limits, (folders["unified"],))
                self._write_v2(folders["unified"], limits)
        except (OSError, FedsiloError) as exc:
            for folder in reversed(folders.values()):
                _rmdir(folder)
            if isinstance(exc, FedsiloError):
                raise
            raise FedsiloError(f"cannot create control group {name}: {exc}") from exc
        self._groups[name] = group
        return group

    @staticmethod
    def _write_v1(folders: dict[str, Path], limits: Limits) -> None:
        if limits.memory_bytes is not None:
            memory = folders["memory"]
            _set_limit(memory / "memory.limit_in_bytes", str(limits.memory_bytes))
            if (memory / "memory.memsw.limit_in_bytes").exists():  # swap is accounted
                _set_limit(memory / "memory.memsw.limit_in_bytes", str(limits.memory_bytes))
        if limits.processes is not None:
            _set_limit(folders["pids"] / "pids.max", str(limits.processes))
        if limits.cpu_cores is not None:
            _set_limit(folders["cpu"] / "cpu.cfs_period_us", str(_PERIOD_US))
            _set_limit(folders["cpu"] / "cpu.cfs_quota_us", str(_quota(limits.cpu_cores)))

    @staticmethod
    def _write_v2(folder: Path, limits: Limits) -> None:
        if limits.memory_bytes is not None:
            _set_limit(folder / "memory.max", str(limits.memory_bytes))
        if (folder / "memory.swap.max").exists():
            _set_limit(folder / "memory.swap.max", "0")
        if (folder / "memory.oom.group").exists():  # the kernel kills the whole tree at once
            _set_limit(folder / "memory.oom.group", "1")
        if limits.processes is not None:
            _set_limit(folder / "pids.max", str(limits.processes))
        if limits.cpu_cores is not None:
            _set_limit(folder / "cpu.max", f"{_quota(limits.cpu_cores)} {_PERIOD_US}")

    def close(self) -> None:
        """Close every live group and remove this agent's folders; idempotent."""
        for group in self._groups.values():
            group.close()
        self._groups.clear()
        for base in self._bases.values():
            _rmdir(base)


def _quota(cores: float) -> int:
    return max(1000, round(cores * _PERIOD_US))  # the kernel's smallest quota is 1 ms


def apply_rlimits(environ: Mapping[str, str] = os.environ) -> None:
    """Set on this process the rlimits named in ``FEDSILO_RLIMITS``, if that is set.

    Called first thing by the job worker (before importing torch): RLIMIT_AS from
    ``memory_bytes`` (address space, per process), RLIMIT_NPROC from ``processes`` (per
    user, as the kernel counts it), RLIMIT_FSIZE from ``file_bytes`` (a larger write fails
    with EFBIG: Python ignores SIGXFSZ). Soft and hard limits are both set, never above the
    current hard limit, so task code cannot raise them again.
    """
    raw = environ.get(RLIMITS_VARIABLE)
    if raw is None:
        return
    try:
        values = json.loads(raw)
    except ValueError as exc:
        raise FedsiloError(f"{RLIMITS_VARIABLE} is not JSON: {raw!r}") from exc
    if not isinstance(values, dict):
        raise FedsiloError(f"{RLIMITS_VARIABLE} must be a JSON object, not {raw!r}")
    for key, limit in (
        ("memory_bytes", resource.RLIMIT_AS),
        ("processes", resource.RLIMIT_NPROC),
        ("file_bytes", resource.RLIMIT_FSIZE),
    ):
        value = values.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise FedsiloError(f"{RLIMITS_VARIABLE}: {key} must be a positive integer")
        hard = resource.getrlimit(limit)[1]
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(limit, (value, value))
