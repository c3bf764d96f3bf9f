"""``fedsilo quickstart --json``: the first command a new user runs meets its targets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
