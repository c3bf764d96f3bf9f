"""``fedsilo quickstart --json``: the first command a new user runs meets its targets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedsilo.tracking import Tracker

pytestmark = pytest.mark.integration


def test_quickstart_runs_a_real_federation_and_meets_its_targets(tmp_path: Path) -> None:
    workspace = tmp_path / "qs"
    done = subprocess.run(
        [sys.executable, "-m", "fedsilo", "quickstart", "--json", "-w", str(workspace)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    for key in ("fl_accuracy", "central_accuracy", "single_silo_accuracy", "rounds", "seconds"):
        assert key in result
    assert result["rounds"] >= 5
    assert result["fl_accuracy"] >= 0.90
    assert result["central_accuracy"] - result["fl_accuracy"] <= 0.03
    assert result["seconds"] < 120
    # the federation was stopped and its processes are gone; the model was fetched
    assert not (workspace / "run" / "processes.json").exists()
    assert (workspace / "model.safetensors").stat().st_size > 0
    # each silo's share is registered as sensitive data in its own catalog
    listing = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedsilo",
            "data",
            "list",
            "--silo",
            "silo-b",
            "-w",
            str(workspace),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    records = {r["name"]: r["classification"] for r in json.loads(listing.stdout)}
    assert records == {"digits-train": "sensitive", "digits-test": "sensitive"}
    # the job is in MLflow, complete, before the federation stopped: the orchestrator's
    # store holds its finished run with the federation's accuracy as one curve over rounds
    tracker = Tracker.for_workspace(workspace)
    [job] = tracker.jobs()
    assert (job.job_id, job.status, job.rounds) == (result["job_id"], "FINISHED", result["rounds"])
    assert job.final["accuracy"] == pytest.approx(result["fl_accuracy"])
    curve = tracker.client.get_metric_history(job.run_id, "aggregate/accuracy")
    assert [m.step for m in curve] == list(range(1, result["rounds"] + 1))
    run = tracker.client.get_run(job.run_id)
    assert len(run.outputs.model_outputs) == 1
    assert not any(key.startswith("iteration_") for key in run.data.metrics)
    experiment = tracker.client.get_experiment(run.info.experiment_id)
    assert experiment.name == "submitter/digits"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
