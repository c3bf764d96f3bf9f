"""Round overhead, job start overhead and idle agent memory over the real processes.

For each silo count K, provisions a K-silo federation on loopback, starts it with
``fedsilo.runtime.up`` (orchestrator + K agents, mutual TLS), runs an FL job whose task
does no work, and reads the orchestrator's own records:

* round overhead = round wall time - the slowest silo's compute in that round
  (compute = time the silo's job worker spent in task code, reported by the agent);
* job start overhead = submit -> round 1 begun, less the slowest silo's preprocessing
  (which is the worker's start and its imports);
* idle agent memory = resident set size of each agent process before any job.

Usage: python bench/round_overhead.py [--silos 3 10 30] [--rounds 20] [--params N]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import time
from pathlib import Path

from fedsilo.api import JobState, OrchestratorClient
from fedsilo.config import open_workspace, provision
from fedsilo.jobs import load_job
from fedsilo.orchestrator._db import Store
from fedsilo.runtime import down, processes, up

TASK = """
import torch
from torch import nn


def model(ctx):
    n = int(ctx.hyperparameters.extra.get("params", 100))
    return nn.Linear(n, 1, bias=False)


def train(model, ctx):
    return {"num_samples": 1}


def evaluate(model, ctx):
    return {"num_samples": 1}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(silos: int, rounds: int, params: int, tmp: Path) -> dict[str, object]:
    names = [f"s{i:03d}" for i in range(silos)]
    spec = tmp / "federation.yaml"
    spec.write_text(
        f"name: bench\norchestrator:\n  port: {_free_port()}\n"
        "  storage: {root: storage/orchestrator}\n  compute: {name: orch}\nsilos:\n"
        + "".join(
            f"  - {{name: {n}, storage: {{root: storage/{n}}}, compute: {{name: {n}-cpu}}}}\n"
            for n in names
        )
    )
    root = tmp / "ws"
    provision(spec, root)
    (tmp / "task").mkdir()
    (tmp / "task" / "task.py").write_text(TASK)
    job = tmp / "job.yaml"
    job.write_text(
        f"name: bench\ncode: task\nsilos: [{', '.join(names)}]\nrounds: {rounds}\n"
        f"hyperparameters: {{extra: {{params: {params}}}}}\n"
    )
    ws = open_workspace(root)
    t0 = time.perf_counter()
    up(root, timeout=300)
    up_seconds = time.perf_counter() - t0
    time.sleep(2.0)
    agent_mb = [_rss_mb(p.pid) for p in processes(root) if p.role == "silo"]
    try:
        job_spec, code_dir = load_job(job)
        with OrchestratorClient(ws.kit(ws.submitter_name), timeout=120) as client:
            job_id = client.submit(job_spec, code_dir)
            info = client.wait(job_id, timeout=900)
        if info.state is not JobState.SUCCEEDED:
            raise SystemExit(f"job {job_id} {info.state.value}: {info.error}")
    finally:
        down(root)
    store = Store(f"sqlite:///{ws.kit('orchestrator').storage_path / 'orchestrator.db'}")
    try:
        job_row = store.job(job_id)
        assert job_row is not None
        round_rows = {r.round: r for r in store.rounds(job_id)}
        from sqlalchemy import select

        from fedsilo.orchestrator._db import TaskRow

        with store.session() as s:
            tasks = list(s.scalars(select(TaskRow).where(TaskRow.job_id == job_id)))
    finally:
        store.close()
    compute: dict[tuple[str, int], float] = {}
    for t in tasks:
        if t.result_json and t.kind in ("prepare", "fit"):
            result = json.loads(t.result_json)
            key = (t.kind, t.round)
            compute[key] = max(compute.get(key, 0.0), float(result.get("compute_seconds", 0.0)))
    overheads = []
    for n in range(2, rounds + 1):  # round 1 is a warm-up
        r = round_rows[n]
        assert r.finished_at is not None
        overheads.append((r.finished_at - r.started_at) - compute[("fit", n)])
    start_overhead = (round_rows[1].started_at - job_row.created_at) - compute[("prepare", 0)]
    return {
        "silos": silos,
        "rounds_measured": len(overheads),
        "params": params,
        "round_overhead_median_s": statistics.median(overheads),
        "round_overhead_mean_s": statistics.fmean(overheads),
        "round_overhead_max_s": max(overheads),
        "job_start_overhead_s": start_overhead,
        "slowest_preprocess_s": compute[("prepare", 0)],
        "agent_rss_mb_max": max(agent_mb),
        "agent_rss_mb_mean": statistics.fmean(agent_mb),
        "up_seconds": up_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--silos", type=int, nargs="+", default=[3, 10, 30])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--params", type=int, default=100)
    args = parser.parse_args()
    for k in args.silos:
        with tempfile.TemporaryDirectory(prefix=f"fedsilo-bench-{k}-") as tmp:
            result = run(k, args.rounds, args.params, Path(tmp))
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
