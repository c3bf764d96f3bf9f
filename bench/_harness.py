"""What the benchmarks over the real processes share: a K-silo federation, the records.

Not a benchmark itself: ``round_overhead.py`` and ``secure_aggregation.py`` import it
(run them from the repository root, ``python bench/NAME.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from fedsilo.api import JobState, OrchestratorClient
from fedsilo.config import Workspace, open_workspace
from fedsilo.jobs import load_job, load_private_key
from fedsilo.orchestrator._db import RoundRow, Store, TaskRow
from fedsilo.provisioning import provision
from fedsilo.runtime import free_port_block

__all__ = ["JobRecord", "free_port", "job_record", "provision_bench", "run_job", "write_task"]


def free_port(silos: int = 30) -> int:
    """An orchestrator port followed by a free approval port for each of ``silos`` silos."""
    return free_port_block(silos + 1)


def provision_bench(tmp: Path, silos: int) -> tuple[Workspace, list[str]]:
    """A provisioned federation of ``silos`` silos named s000, s001, ... in ``tmp/ws``."""
    names = [f"s{i:03d}" for i in range(silos)]
    spec = tmp / "federation.yaml"
    spec.write_text(
        f"name: bench\norchestrator:\n  port: {free_port(silos)}\n"
        "  storage: {root: storage/orchestrator}\n  compute: {name: orch}\nsilos:\n"
        + "".join(
            f"  - {{name: {n}, storage: {{root: storage/{n}}}, compute: {{name: {n}-cpu}}}}\n"
            for n in names
        )
    )
    provision(spec, tmp / "ws")
    return open_workspace(tmp / "ws"), names


def write_task(folder: Path, task: str) -> Path:
    """Write ``task`` as ``folder/task/task.py``; return the code folder."""
    code = folder / "task"
    code.mkdir(parents=True, exist_ok=True)
    (code / "task.py").write_text(task)
    return code


def run_job(ws: Workspace, job_file: Path, timeout: float = 1800) -> str:
    """Submit a job signed with the submitter's key, wait for it; return its id."""
    kit = ws.kit(ws.submitter_name)
    spec, code_dir = load_job(job_file)
    with OrchestratorClient(kit, timeout=120) as client:
        job_id = client.submit(spec, code_dir, signing_key=load_private_key(kit.signing_key_file))
        info = client.wait(job_id, timeout=timeout)
    if info.state is not JobState.SUCCEEDED:
        raise SystemExit(f"job {job_id} {info.state.value}: {info.error}")
    return job_id


@dataclass(frozen=True)
class JobRecord:
    """A finished job as the orchestrator recorded it."""

    created_at: float
    finished_at: float
    rounds: dict[int, RoundRow]
    compute: dict[tuple[str, int], float]  # (task kind, round) -> the slowest silo's compute

    def round_seconds(self, n: int) -> float:
        row = self.rounds[n]
        assert row.finished_at is not None
        return row.finished_at - row.started_at


def job_record(ws: Workspace, job_id: str) -> JobRecord:
    """Read a job's rounds and its tasks' compute times from the orchestrator's database."""
    store = Store(f"sqlite:///{ws.kit('orchestrator').storage_path / 'orchestrator.db'}")
    try:
        job = store.job(job_id)
        assert job is not None
        rounds = {r.round: r for r in store.rounds(job_id)}
        with store.session() as s:
            tasks = list(s.scalars(select(TaskRow).where(TaskRow.job_id == job_id)))
    finally:
        store.close()
    compute: dict[tuple[str, int], float] = {}
    for t in tasks:
        if t.result_json and t.kind in ("prepare", "fit", "evaluate"):
            seconds = float(json.loads(t.result_json).get("compute_seconds", 0.0))
            key = (t.kind, t.round)
            compute[key] = max(compute.get(key, 0.0), seconds)
    assert job.finished_at is not None
    return JobRecord(
        created_at=job.created_at, finished_at=job.finished_at, rounds=rounds, compute=compute
    )
