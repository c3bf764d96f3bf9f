"""Secure aggregation's round time over plain FedAvg's, over the real processes.

Provisions a K-silo federation on loopback, starts it with ``fedsilo.runtime.up``, and
runs the same FL job with and without ``privacy.secure_aggregation``, alternating, on a
model of P float32 parameters whose task changes every weight a little (and optionally
sleeps ``--compute`` seconds, a stand-in for training). Per job it reads the
orchestrator's records: each round's wall time (round 1 left out as a warm-up) and, for
the secure job, the one-off setup (keys and shares) between the initial model and round 1.

Usage: python bench/secure_aggregation.py [--silos 10] [--params 1000000] [--rounds 11]
       [--pairs 3] [--compute 0 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from _harness import job_record, provision_bench, run_job, write_task

from fedsilo.config import Workspace
from fedsilo.runtime import down, up

TASK = """
import time

import torch
from torch import nn


def model(ctx):
    return nn.Linear(int(ctx.hyperparameters.extra["params"]), 1, bias=False)


def train(model, ctx):
    time.sleep(float(ctx.hyperparameters.extra.get("compute", 0)))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 1e-3)
    return {"num_samples": 100}


def evaluate(model, ctx):
    return {"num_samples": 100}
"""


def _job(
    ws: Workspace,
    folder: Path,
    names: list[str],
    args: argparse.Namespace,
    compute: float,
    secure: bool,
) -> dict[str, Any]:
    job = folder / "job.yaml"
    job.write_text(
        f"name: bench\ncode: task\nsilos: [{', '.join(names)}]\nrounds: {args.rounds}\n"
        f"hyperparameters: {{extra: {{params: {args.params}, compute: {compute}}}}}\n"
        + ("privacy: {secure_aggregation: {}}\n" if secure else "")
    )
    record = job_record(ws, run_job(ws, job))
    rounds = [record.round_seconds(n) for n in range(2, args.rounds + 1)]
    setup = record.rounds[1].started_at - (record.rounds[0].finished_at or 0.0)
    return {
        "round_median_s": statistics.median(rounds),
        "setup_s": setup,
        "rounds_s": [round(r, 3) for r in rounds],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--silos", type=int, default=10)
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--compute", type=float, nargs="+", default=[0.0, 1.0])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedsilo-bench-secagg-") as tmp:
        folder = Path(tmp)
        ws, names = provision_bench(folder, args.silos)
        write_task(folder, TASK)
        up(ws.root, timeout=300)
        try:
            for compute in args.compute:
                runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
                for _ in range(args.pairs):
                    for secure in (False, True):
                        runs[secure].append(_job(ws, folder, names, args, compute, secure))
                plain = statistics.median(r["round_median_s"] for r in runs[False])
                masked = statistics.median(r["round_median_s"] for r in runs[True])
                result = {
                    "silos": args.silos,
                    "params": args.params,
                    "compute_s": compute,
                    "rounds_measured_per_job": args.rounds - 1,
                    "jobs_each": args.pairs,
                    "plain_round_s": plain,
                    "secure_round_s": masked,
                    "ratio": masked / plain,
                    "secure_setup_s": statistics.median(r["setup_s"] for r in runs[True]),
                    "every_job": {"plain": runs[False], "secure": runs[True]},
                }
                print(json.dumps(result), flush=True)
        finally:
            down(ws.root)


if __name__ == "__main__":
    main()
