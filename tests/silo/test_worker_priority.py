"""The job worker yields the CPU to its agent under contention."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fedsilo.silo._protocol import Noop
from fedsilo.silo._worker import NICENESS
from fedsilo.silo._workerproc import WorkerProcess


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="needs POSIX process priorities")
def test_the_job_worker_runs_at_a_lower_priority_than_its_agent(tmp_path: Path) -> None:
    worker = WorkerProcess(silo="silo-a", cwd=tmp_path, log_file=tmp_path / "worker.log")
    try:
        pid = worker.request(Noop()).pid
        agent = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, agent + NICENESS)
    finally:
        worker.stop()
