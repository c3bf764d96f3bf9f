"""FL wall-clock over the slowest silo's compute, on a real example through the real processes.

Provisions the example's federation, prepares its data with ``fedsilo example NAME
prepare``, starts it with ``fedsilo.runtime.up`` and runs the job. From the orchestrator's
records:

* rounds ratio = the sum of the rounds' wall times ÷ the sum, round by round, of the
  slowest silo's compute in that round (the time its job worker spent in task code:
  evaluating the previous model and training);
* job ratio = submit to the job's end ÷ (the slowest silo's preparation + the rounds'
  slowest compute + the slowest final evaluation): everything the federation adds,
  worker start included.

Usage: python bench/example_overhead.py pneumonia examples/pneumonia/job.yaml
       [--federation examples/pneumonia/federation.yaml]   (needs FEDSILO_DATA)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from _harness import free_port, job_record, run_job

from fedsilo.config import open_workspace
from fedsilo.provisioning import provision
from fedsilo.runtime import down, up


def _free_port_federation(federation: Path, out: Path) -> Path:
    """The example's federation.yaml with a free orchestrator port, so runs do not clash."""
    spec = yaml.safe_load(federation.read_text())
    spec["orchestrator"]["port"] = free_port()
    path = out / "federation.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run(example: str, job: Path, federation: Path, tmp: Path) -> dict[str, object]:
    ws_root = tmp / "ws"
    provision(_free_port_federation(federation, tmp), ws_root)
    subprocess.run(
        [sys.executable, "-m", "fedsilo", "example", example, "prepare", str(ws_root), "--json"],
        check=True,
        capture_output=True,
    )
    ws = open_workspace(ws_root)
    up(ws_root, timeout=300)
    try:
        job_id = run_job(ws, job.resolve(), timeout=3600)
    finally:
        down(ws_root)
    record = job_record(ws, job_id)
    rounds = sorted(n for n in record.rounds if n >= 1)
    round_wall = sum(record.round_seconds(n) for n in rounds)
    round_compute = sum(record.compute[("fit", n)] for n in rounds)
    evaluations = [v for (kind, _), v in record.compute.items() if kind == "evaluate"]
    evaluate = max(evaluations, default=0.0)
    job_compute = record.compute[("prepare", 0)] + round_compute + evaluate
    job_wall = record.finished_at - record.created_at
    return {
        "example": example,
        "job": str(job),
        "rounds": len(rounds),
        "rounds_wall_s": round_wall,
        "rounds_slowest_compute_s": round_compute,
        "rounds_ratio": round_wall / round_compute,
        "job_wall_s": job_wall,
        "job_slowest_compute_s": job_compute,
        "job_ratio": job_wall / job_compute,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("example")
    parser.add_argument("job", type=Path)
    parser.add_argument("--federation", type=Path)
    args = parser.parse_args()
    federation = args.federation or args.job.parent / "federation.yaml"
    with tempfile.TemporaryDirectory(prefix="fedsilo-bench-example-") as tmp:
        print(json.dumps(run(args.example, args.job, federation, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
