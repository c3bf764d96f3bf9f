"""Round overhead, job start overhead and idle agent memory over the real processes.

For each silo count K, provisions a K-silo federation on loopback, starts it with
``fedsilo.runtime.up`` (orchestrator + K agents, mutual TLS), runs an FL job whose task
does no work, and reads the orchestrator's own records:

* round overhead = round wall time - the slowest silo's compute in that round
  (compute = time the silo's job worker spent in task code, reported by the agent);
* job start overhead = submit -> round 1 begun, less the slowest silo's preprocessing
  (which is the worker's start and its imports);
* idle agent memory = resident set size of each agent process before any job;
* federation memory = the peak, while the job runs, of the proportional set size (shared
  pages divided among the processes sharing them) summed over the orchestrator, every
  agent and approval endpoint and every job worker: what the whole federation takes of
  the machine's memory.

Usage: python bench/round_overhead.py [--silos 3 10 30] [--rounds 20] [--params N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from _harness import job_record, provision_bench, run_job, write_task

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


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _pss_mb(pids: Iterable[int]) -> float:
    total = 0
    for pid in pids:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue  # the process ended between the listing and the read
        for line in rollup.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1])
    return total / 1024


class _MemorySampler(threading.Thread):
    """Samples the federation's summed PSS every ``interval`` seconds; keeps the peak."""

    def __init__(self, roots: list[int], interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.roots, self.interval = roots, interval
        self.peak_mb = 0.0
        self.peak_processes = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            pids = [d for root in self.roots for d in _descendants(root)]
            total = _pss_mb(pids)
            if total > self.peak_mb:
                self.peak_mb, self.peak_processes = total, len(pids)
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def run(silos: int, rounds: int, params: int, tmp: Path) -> dict[str, object]:
    ws, names = provision_bench(tmp, silos)
    write_task(tmp, TASK)
    job = tmp / "job.yaml"
    job.write_text(
        f"name: bench\ncode: task\nsilos: [{', '.join(names)}]\nrounds: {rounds}\n"
        f"hyperparameters: {{extra: {{params: {params}}}}}\n"
    )
    t0 = time.perf_counter()
    up(ws.root, timeout=300)
    up_seconds = time.perf_counter() - t0
    time.sleep(2.0)
    participants = processes(ws.root)
    agent_mb = [_rss_mb(p.pid) for p in participants if p.role == "silo"]
    sampler = _MemorySampler([p.pid for p in participants])
    sampler.start()
    try:
        job_id = run_job(ws, job, timeout=1800)
    finally:
        sampler.stop()
        down(ws.root)
    record = job_record(ws, job_id)
    measured = range(2, rounds + 1)  # round 1 is a warm-up
    overheads = [record.round_seconds(n) - record.compute[("fit", n)] for n in measured]
    round_seconds = [record.round_seconds(n) for n in measured]
    start_overhead = (record.rounds[1].started_at - record.created_at) - record.compute[
        ("prepare", 0)
    ]
    return {
        "silos": silos,
        "rounds_measured": len(overheads),
        "params": params,
        "round_overhead_median_s": statistics.median(overheads),
        "round_overhead_mean_s": statistics.fmean(overheads),
        "round_overhead_max_s": max(overheads),
        "round_median_s": statistics.median(round_seconds),
        "job_start_overhead_s": start_overhead,
        "slowest_preprocess_s": record.compute[("prepare", 0)],
        "agent_rss_mb_max": max(agent_mb),
        "agent_rss_mb_mean": statistics.fmean(agent_mb),
        "up_seconds": up_seconds,
        "federation_pss_mb_peak": sampler.peak_mb,
        "processes_at_peak": sampler.peak_processes,
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
