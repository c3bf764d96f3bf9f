"""``fedsilo status``'s computes table: each silo's computes, the limits of one job, the queue."""

from __future__ import annotations

from rich.console import Console

from fedsilo.api import ComputeReport, SiloReport, SiloStatus, StatusReport
from fedsilo.cli._runtime import _computes_table

GIB = 2**30


def _render(report: StatusReport) -> str:
    table = _computes_table(report)
    assert table is not None
    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


def _silo(name: str, *computes: ComputeReport) -> SiloStatus:
    report = SiloReport(sandbox="bubblewrap", enforcement="cgroup-v2", computes=computes)
    return SiloStatus(name=name, online=True, report=report)


def test_each_compute_shows_its_capacity_its_limits_and_its_queue() -> None:
    gpu = ComputeReport(
        name="dgx",
        kind="gpu",
        threads=32,
        gpus=(0, 1, 2, 3),
        memory=256 * GIB,
        job_threads=16,
        job_gpus=2,
        job_memory=64 * GIB,
        processes=512,
        cpu=8.0,
        disk=100 * GIB,
        max_step_seconds=8 * 3600,
        threads_used=16,
        gpus_used=2,
        memory_used=64 * GIB,
        running=("job-1",),
        queued=("job-2", "job-3"),
    )
    cpu = ComputeReport(
        name="local",
        kind="cpu",
        threads=2,
        memory=4 * GIB,
        job_threads=2,
        job_gpus=0,
        job_memory=3 * GIB,
        processes=256,
    )
    text = _render(
        StatusReport(federation="f", silos=[_silo("silo-a", gpu), _silo("silo-b", cpu)], jobs=[])
    )
    assert "dgx (gpu)" in text and "local (cpu)" in text
    assert "16/32" in text and "2/4 [0, 1, 2, 3]" in text
    assert "16 threads, 64 GiB, 2 GPUs" in text
    assert "512 processes, cpu 8, disk 100 GiB, 8 h" in text
    assert "job-1; queued: job-2, job-3" in text
    assert "256 processes, no time limit" in text


def test_no_table_when_no_silo_reported_its_computes() -> None:
    silos = [SiloStatus(name="silo-a", online=False)]
    assert _computes_table(StatusReport(federation="f", silos=silos, jobs=[])) is None
