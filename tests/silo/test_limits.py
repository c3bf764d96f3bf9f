"""Control groups per worker tree: real kernel limits, and detection on fake hierarchies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsilo.errors import FedsiloError
from fedsilo.silo._limits import Breach, Enforcement, JobGroup, Limiter, Limits, apply_rlimits

MIB = 2**20

ALLOCATE = "b = bytearray(600 * 2**20)\nb[::4096] = b'x' * len(range(0, len(b), 4096))"
FORK_LOOP = """
import os, time
end = time.monotonic() + 3
while time.monotonic() < end:
    try:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
    except OSError:
        time.sleep(0.005)
time.sleep(60)
"""
BUSY = "import time\nend = time.monotonic() + 1.5\nwhile time.monotonic() < end:\n    pass"


# --- the real kernel -------------------------------------------------------------------


def _without_cgroups(reason: str) -> None:
    """Skip, or fail when control groups are required here (FEDSILO_REQUIRE_CGROUPS=1)."""
    if os.environ.get("FEDSILO_REQUIRE_CGROUPS") == "1":
        pytest.fail(f"control groups are required (FEDSILO_REQUIRE_CGROUPS=1): {reason}")
    pytest.skip(reason)


@pytest.fixture
def limiter() -> Iterator[Limiter]:
    if os.geteuid() != 0:
        _without_cgroups("creating control groups needs root")
    limiter = Limiter.detect("test-limits")
    if limiter.enforcement is Enforcement.RLIMITS:
        limiter.close()
        _without_cgroups(f"no control groups on this machine: {limiter.reason}")
    try:
        yield limiter
    finally:
        limiter.close()


def test_a_tree_past_its_memory_limit_is_killed_and_reported(limiter: Limiter) -> None:
    group = limiter.group("memory", Limits(memory_bytes=200 * MIB))
    run = subprocess.run(
        [*group.launch_prefix(), sys.executable, "-c", ALLOCATE], capture_output=True, timeout=30
    )
    assert run.returncode in (-9, 137), run.stderr
    assert group.breach() is Breach.MEMORY
    peak = group.memory_peak()
    assert peak is not None and peak <= 200 * MIB


def test_a_fork_bomb_is_held_at_its_process_limit_and_killed(limiter: Limiter) -> None:
    group = limiter.group("forks", Limits(processes=20))
    with subprocess.Popen([*group.launch_prefix(), sys.executable, "-c", FORK_LOOP]) as proc:
        deadline = time.monotonic() + 5
        while group.breach() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert group.breach() is Breach.PROCESSES
        assert 1 < len(group.pids()) <= 20
        started = time.monotonic()
        group.kill()
        assert group.pids() == []
        assert time.monotonic() - started < 5
        assert proc.wait(timeout=5) == -9


def test_a_quiet_job_runs_inside_its_group_which_close_removes(limiter: Limiter) -> None:
    group = limiter.group("quiet", Limits(memory_bytes=512 * MIB, processes=64))
    script = "print(open('/proc/self/cgroup').read(), end='')"
    run = subprocess.run(
        [*group.launch_prefix(), sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    for controller in ("memory", "pids"):
        [line] = [line for line in lines if controller in line.split(":")[1].split(",")]
        assert line.endswith(f"/fedsilo-test-limits-{os.getpid()}/quiet")
    assert group.breach() is None
    assert group.pids() == []
    assert group.folders and all(folder.is_dir() for folder in group.folders)
    group.close()
    assert not any(folder.exists() for folder in group.folders)
    group.close()


def test_a_cpu_quota_slows_a_busy_loop(limiter: Limiter) -> None:
    group = limiter.group("cpu", Limits(cpu_cores=0.5))
    with subprocess.Popen([*group.launch_prefix(), sys.executable, "-c", BUSY]) as proc:
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0
    assert usage.ru_utime + usage.ru_stime < 1.05  # 0.75 s at 0.5 cores; 1.5 s unlimited


# --- fake hierarchies ------------------------------------------------------------------

SERVICE = "/system.slice/fedsilo.service"


def _node(sysfs: Path, path: str, *, busy: bool = False) -> Path:
    """A cgroup folder with what the kernel shows; ``busy`` refuses controller writes."""
    folder = sysfs / path.strip("/")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cgroup.controllers").write_text("cpu memory pids\n")
    (folder / "cgroup.procs").write_text("")
    if busy:  # as the kernel refuses a cgroup that holds processes (EBUSY), even to root
        (folder / "cgroup.subtree_control").mkdir()
    else:
        (folder / "cgroup.subtree_control").write_text("")
    return folder


def _fake_v2(tmp_path: Path, own: str, busy: tuple[str, ...] = ()) -> tuple[Path, Path]:
    sysfs = tmp_path / "cgroup"
    parts = own.strip("/").split("/")
    for depth in range(len(parts) + 1):
        path = "/" + "/".join(parts[:depth])
        _node(sysfs, path, busy=path in busy)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(f"0::{own}\n")
    return sysfs, proc


def _fake_v1(tmp_path: Path, *, cpu: bool = True) -> tuple[Path, Path]:
    sysfs = tmp_path / "cgroup"
    mounts = ["memory", "pids", "freezer", "memory/process_api/abc"]
    for mount in [*mounts, *(["cpu,cpuacct"] if cpu else [])]:
        (sysfs / mount).mkdir(parents=True)
        (sysfs / mount / "cgroup.procs").write_text("")
    if cpu:
        (sysfs / "cpu").symlink_to("cpu,cpuacct")
    _node(sysfs, "unified")  # the empty v2 hierarchy of a hybrid host
    (sysfs / "unified" / "cgroup.controllers").write_text("")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(
        "9:freezer:/\n4:memory:/process_api/abc\n2:cpu,cpuacct:/\n1:pids:/\n0::/\n"
        if cpu
        else "9:freezer:/\n4:memory:/process_api/abc\n1:pids:/\n0::/\n"
    )
    return sysfs, proc


def _folder(sysfs: Path, parent: str) -> Path:
    return sysfs / parent.strip("/") / f"fedsilo-silo-a-{os.getpid()}"


def _join(group: JobGroup) -> subprocess.CompletedProcess[str]:
    argv = [*group.launch_prefix(), sys.executable, "-c", "import os; print(os.getpid())"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def test_v2_prefers_the_agents_own_cgroup(tmp_path: Path) -> None:
    sysfs, proc = _fake_v2(tmp_path, SERVICE)
    limiter = Limiter.detect("silo-a", sysfs=sysfs, proc_cgroup=proc)
    assert limiter.enforcement is Enforcement.CGROUP_V2 and limiter.reason is None
    group = limiter.group("job-1", Limits(memory_bytes=200 * MIB, processes=20, cpu_cores=1.5))
    assert group.folders == (_folder(sysfs, SERVICE) / "job-1",)
    assert (group.folders[0] / "memory.max").read_text() == str(200 * MIB)
    assert (group.folders[0] / "pids.max").read_text() == "20"
    assert (group.folders[0] / "cpu.max").read_text() == "150000 100000"
    for folder in (sysfs / SERVICE.strip("/"), _folder(sysfs, SERVICE)):
        assert (folder / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"


def test_v2_uses_the_parent_of_a_busy_leaf_as_with_delegate_subgroup(tmp_path: Path) -> None:
    sysfs, proc = _fake_v2(tmp_path, f"{SERVICE}/agent", busy=(f"{SERVICE}/agent",))
    limiter = Limiter.detect("silo-a", sysfs=sysfs, proc_cgroup=proc)
    group = limiter.group("job-1", Limits(processes=8))
    assert group.folders == (_folder(sysfs, SERVICE) / "job-1",)
    assert not (group.folders[0] / "memory.max").exists()  # no limit: nothing written


@pytest.mark.skipif(os.geteuid() != 0, reason="the hierarchy root is tried only as root")
def test_v2_falls_back_to_the_root_as_root(tmp_path: Path) -> None:
    sysfs, proc = _fake_v2(tmp_path, f"{SERVICE}/agent", busy=(f"{SERVICE}/agent", SERVICE))
    limiter = Limiter.detect("silo-a", sysfs=sysfs, proc_cgroup=proc)
    assert limiter.group("job-1", Limits()).folders == (_folder(sysfs, "/") / "job-1",)


def test_v2_honours_an_explicit_parent(tmp_path: Path) -> None:
    sysfs, proc = _fake_v2(tmp_path, f"{SERVICE}/agent")
    limiter = Limiter.detect("silo-a", sysfs=sysfs, proc_cgroup=proc, parent="/system.slice")
    assert limiter.group("job-1", Limits()).folders == (_folder(sysfs, "/system.slice") / "job-1",)


def test_v2_with_no_writable_cgroup_falls_back_to_rlimits_saying_why(tmp_path: Path) -> None:
    busy = ("/", "/system.slice", SERVICE, f"{SERVICE}/agent")
    sysfs, proc = _fake_v2(tmp_path, f"{SERVICE}/agent", busy=busy)
    limiter = Limiter.detect("silo-a", sysfs=sysfs, proc_cgroup=proc)
    assert limiter.enforcement is Enforcement.RLIMITS
    assert limiter.reason is not None
    assert f"{SERVICE}/agent" in limiter.reason and "Delegate=yes" in limiter.reason
    group = limiter.group("job-1", Limits(memory_bytes=MIB, processes=4, file_bytes=MIB))
    assert group.launch_prefix() == [] and group.breach() is None and group.pids() == []
    assert json.loads(group.environment()["FEDSILO_RLIMITS"]) == {
        "memory_bytes": MIB,
        "processes": 4,
        "file_bytes": MIB,
    }


def test_no_cgroup_hierarchy_falls_back_to_rlimits(tmp_path: Path) -> None:
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("0::/\n")
    limiter = Limiter.detect("silo-a", sysfs=tmp_path, proc_cgroup=proc)
    assert limiter.enforcement is Enforcement.RLIMITS
    assert limiter.reason is not None and "memory and pids" in limiter.reason


def test_the_launch_prefix_joins_the_group_before_running_the_command(tmp_path: Path) -> None:
    sysfs, proc = _fake_v1(tmp_path)
    group = Limiter.detect("silo-a", sysfs=sysfs, proc_cgroup=proc).group("job", Limits())
    run = _join(group)
    assert run.returncode == 0, run.stderr
    for folder in group.folders:
        assert (folder / "cgroup.procs").read_text().split() == [run.stdout.strip()]


def test_a_failed_join_exits_125_without_running_the_command(tmp_path: Path) -> None:
    sysfs, proc = _fake_v2(tmp_path, SERVICE)
    group = Limiter.detect("silo-a", sysfs=sysfs, proc_cgroup=proc).group("job", Limits())
    (group.folders[0] / "cgroup.procs").mkdir()
    run = _join(group)
    assert run.returncode == 125
    assert run.stdout == "" and "cannot join the control group" in run.stderr


def test_v1_nests_under_the_own_cgroup_of_each_controller(tmp_path: Path) -> None:
    sysfs, proc = _fake_v1(tmp_path)
    limiter = Limiter.detect("silo-a", sysfs=sysfs, proc_cgroup=proc)
    assert limiter.enforcement is Enforcement.CGROUP_V1
    limits = Limits(memory_bytes=200 * MIB, processes=20, cpu_cores=0.5, file_bytes=MIB)
    group = limiter.group("job-1", limits)
    memory, pids, cpu, freezer = group.folders
    assert memory == _folder(sysfs, "/memory/process_api/abc") / "job-1"
    assert (pids, freezer) == (
        _folder(sysfs, "/pids") / "job-1",
        _folder(sysfs, "/freezer") / "job-1",
    )
    assert cpu.resolve() == (_folder(sysfs, "/cpu,cpuacct") / "job-1").resolve()
    assert (memory / "memory.limit_in_bytes").read_text() == str(200 * MIB)
    assert (pids / "pids.max").read_text() == "20"
    assert (cpu / "cpu.cfs_period_us").read_text() == "100000"
    assert (cpu / "cpu.cfs_quota_us").read_text() == "50000"
    assert group.environment() == {"FEDSILO_RLIMITS": json.dumps({"file_bytes": MIB})}


def test_v1_without_a_cpu_controller_refuses_a_cpu_limit(tmp_path: Path) -> None:
    sysfs, proc = _fake_v1(tmp_path, cpu=False)
    limiter = Limiter.detect("silo-a", sysfs=sysfs, proc_cgroup=proc)
    assert limiter.group("job-1", Limits(processes=4)).breach() is None
    with pytest.raises(FedsiloError, match="cpu controller"):
        limiter.group("job-2", Limits(cpu_cores=1.0))
    assert not (_folder(sysfs, "/pids") / "job-2").exists()


def test_breaches_are_read_from_the_kernels_counters(tmp_path: Path) -> None:
    sysfs, proc = _fake_v1(tmp_path)
    limiter = Limiter.detect("silo-a", sysfs=sysfs, proc_cgroup=proc)
    group = limiter.group("job", Limits())
    memory = group.folders[0]
    (memory / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    (memory / "memory.failcnt").write_text("0\n")
    assert group.breach() is None  # the host's OOM killer, not this group's limit
    (memory / "memory.failcnt").write_text("12\n")
    assert group.breach() is Breach.MEMORY

    sysfs2, proc2 = _fake_v2(tmp_path / "v2", SERVICE)
    limiter2 = Limiter.detect("silo-a", sysfs=sysfs2, proc_cgroup=proc2)
    group2 = limiter2.group("job", Limits())
    (group2.folders[0] / "pids.events").write_text("max 3\n")
    assert group2.breach() is Breach.PROCESSES
    (group2.folders[0] / "memory.events").write_text("max 0\noom 0\noom_kill 1\n")
    assert group2.breach() is Breach.PROCESSES  # the host's OOM killer
    (group2.folders[0] / "memory.events").write_text("max 9\noom 1\noom_kill 1\n")
    assert group2.breach() is Breach.MEMORY
    (group2.folders[0] / "memory.peak").write_text(f"{MIB}\n")
    assert group2.memory_peak() == MIB


def test_group_names_are_checked(tmp_path: Path) -> None:
    sysfs, proc = _fake_v2(tmp_path, SERVICE)
    limiter = Limiter.detect("silo-a", sysfs=sysfs, proc_cgroup=proc)
    limiter.group("job", Limits())
    with pytest.raises(ValueError):
        limiter.group("job", Limits())
    with pytest.raises(ValueError):
        limiter.group("../escape", Limits())


# --- rlimits ---------------------------------------------------------------------------

RLIMITED = """
import os, resource, sys
from fedsilo.silo._limits import apply_rlimits
apply_rlimits()
print(resource.getrlimit(resource.RLIMIT_AS)[0])
try:
    bytearray(2 * 2**30)
except MemoryError:
    print("MemoryError")
try:
    with open(sys.argv[1], "wb") as file:
        file.write(b"x" * 2**21)
except OSError as exc:
    print(exc.errno)
"""


def test_apply_rlimits_confines_the_worker_itself(tmp_path: Path) -> None:
    limits = {"memory_bytes": 2**30, "file_bytes": 2**20}
    env = {**os.environ, "FEDSILO_RLIMITS": json.dumps(limits)}
    argv = [sys.executable, "-c", RLIMITED, str(tmp_path / "big")]
    run = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(2**30), "MemoryError", "27"]  # 27: EFBIG
    assert (tmp_path / "big").stat().st_size <= 2**20


def test_apply_rlimits_without_the_variable_changes_nothing() -> None:
    apply_rlimits({})
    with pytest.raises(FedsiloError):
        apply_rlimits({"FEDSILO_RLIMITS": "not json"})
