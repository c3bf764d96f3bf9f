"""``run_baselines``: FL next to Central-all and Central-1/k on the digits quickstart data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fedsilo.cli import _learn
from fedsilo.jobs import JobSpec
from fedsilo.pipelines import BaselineKind, BaselineReport, run_baselines
from fedsilo.quickstart._quickstart import SILOS

TOLERANCE = 0.02


@pytest.fixture(scope="module")
def report(
    job: tuple[JobSpec, Path],
    silo_inputs: dict[str, dict[str, Path]],
    tmp_path_factory: pytest.TempPathFactory,
) -> BaselineReport:
    spec, code_dir = job
    return run_baselines(spec, code_dir, silo_inputs, work_root=tmp_path_factory.mktemp("bl"))


def test_every_model_of_the_comparison_is_reported(report: BaselineReport) -> None:
    labels = [row.label for row in report.rows]
    assert labels == [
        "FL",
        "Central-all",
        *(f"Central-1/k ({silo})" for silo in SILOS),
        "Central-1/k mean",
    ]
    assert report.metric_names == ["accuracy", "loss"]
    for row in report.rows:
        assert set(row.metrics) >= {"accuracy", "loss"}
        assert 0.0 <= row.metrics["accuracy"] <= 1.0
        assert row.seconds > 0
        assert row.compute_seconds > 0


def test_all_models_are_evaluated_on_the_same_pooled_test_data(report: BaselineReport) -> None:
    evaluated = {row.metrics["num_samples"] for row in report.rows if row.silo is not None}
    evaluated.add(report.row(BaselineKind.FL).metrics["num_samples"])
    evaluated.add(report.row(BaselineKind.CENTRAL_ALL).metrics["num_samples"])
    assert len(evaluated) == 1


def test_training_on_all_data_beats_training_on_one_share(report: BaselineReport) -> None:
    everything = report.row(BaselineKind.CENTRAL_ALL).metrics["accuracy"]
    for silo in SILOS:
        alone = report.row(BaselineKind.CENTRAL_ONE, silo).metrics["accuracy"]
        assert everything >= alone - TOLERANCE, silo


def test_fl_compute_time_adds_up_the_silos(report: BaselineReport) -> None:
    fl = report.row(BaselineKind.FL)
    assert fl.compute_seconds <= fl.seconds
    mean = report.row(BaselineKind.CENTRAL_ONE_MEAN)
    singles = [report.row(BaselineKind.CENTRAL_ONE, s).metrics["accuracy"] for s in SILOS]
    assert mean.metrics["accuracy"] == pytest.approx(sum(singles) / len(singles))


def test_the_report_is_json_ready(report: BaselineReport) -> None:
    data = json.loads(json.dumps(report.as_dict()))
    assert [r["kind"] for r in data["rows"]][:2] == ["FL", "Central-all"]
    assert data["rounds"] == 3


def test_cli_prints_the_table(job: tuple[JobSpec, Path], workspace: Path, tmp_path: Path) -> None:
    _, code_dir = job
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        f"name: digits\ncode: {code_dir}\nsilos: [{', '.join(SILOS)}]\n"
        "inputs: {train: digits-train, test: digits-test}\nrounds: 1\n"
    )
    app = typer.Typer()
    _learn.register(app)
    result = CliRunner().invoke(app, ["baseline", str(job_file), "-w", str(workspace)])
    assert result.exit_code == 0, result.output
    for text in ("FL", "Central-all", "Central-1/k (silo-b)", "mean", "accuracy", "compute s"):
        assert text in result.output
    result = CliRunner().invoke(app, ["baseline", str(job_file), "-w", str(workspace), "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["rows"]) == 2 + len(SILOS) + 1
