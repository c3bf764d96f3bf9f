"""``run_baselines``: FL next to Central-all and Central-1/k on the digits quickstart data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fedsilo.cli import _learn
from fedsilo.errors import ConfigError
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


def test_cli_prints_the_table(one_round_job_file: Path, workspace: Path) -> None:
    job_file = one_round_job_file
    app = typer.Typer()
    _learn.register(app)
    result = CliRunner().invoke(app, ["baseline", str(job_file), "-w", str(workspace)])
    assert result.exit_code == 0, result.output
    for text in ("FL", "Central-all", "Central-1/k (silo-b)", "mean", "accuracy", "compute s"):
        assert text in result.output
    result = CliRunner().invoke(app, ["baseline", str(job_file), "-w", str(workspace), "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["rows"]) == 2 + len(SILOS) + 1


@pytest.fixture(scope="module")
def seeded(
    job: tuple[JobSpec, Path],
    silo_inputs: dict[str, dict[str, Path]],
    tmp_path_factory: pytest.TempPathFactory,
) -> BaselineReport:
    spec, code_dir = job
    hyperparameters = spec.hyperparameters.model_copy(update={"seed": 5})
    spec = spec.model_copy(update={"hyperparameters": hyperparameters, "rounds": 1})
    root = tmp_path_factory.mktemp("seeds")
    return run_baselines(spec, code_dir, silo_inputs, work_root=root, seeds=3)


def test_several_seeds_report_the_mean_and_spread_of_each_seed_s_run(
    seeded: BaselineReport,
) -> None:
    assert seeded.seeds == (5, 6, 7)
    assert [run.seeds for run in seeded.runs] == [(5,), (6,), (7,)]
    for index, row in enumerate(seeded.rows):
        same = [run.rows[index] for run in seeded.runs]
        assert {r.label for r in same} == {row.label}
        accuracies = [r.metrics["accuracy"] for r in same]
        mean = sum(accuracies) / 3
        assert row.metrics["accuracy"] == pytest.approx(mean)
        deviation = (sum((a - mean) ** 2 for a in accuracies) / 2) ** 0.5
        assert row.spread["accuracy"] == pytest.approx(deviation)
        assert "num_samples" not in row.spread
        assert row.seconds == pytest.approx(sum(r.seconds for r in same) / 3)
    # The seeds train different models: a spread of zero everywhere would mean the seed
    # never reached the task.
    assert any(row.spread["loss"] > 0 for row in seeded.rows)


def test_one_seed_gives_the_same_report_as_the_job_s_own_seed(
    job: tuple[JobSpec, Path], silo_inputs: dict[str, dict[str, Path]], tmp_path: Path
) -> None:
    spec, code_dir = job
    spec = spec.model_copy(update={"rounds": 1})
    once = run_baselines(spec, code_dir, silo_inputs, work_root=tmp_path / "a")
    again = run_baselines(spec, code_dir, silo_inputs, work_root=tmp_path / "b", seeds=1)
    assert once.runs == again.runs == ()
    assert once.seeds == again.seeds == (0,)
    assert [r.metrics for r in once.rows] == [r.metrics for r in again.rows]
    assert all(r.spread == {} for r in once.rows)


def test_seeds_below_one_or_past_the_largest_seed_are_refused(
    job: tuple[JobSpec, Path], silo_inputs: dict[str, dict[str, Path]], tmp_path: Path
) -> None:
    spec, code_dir = job
    with pytest.raises(ConfigError, match="seeds is 0"):
        run_baselines(spec, code_dir, silo_inputs, work_root=tmp_path, seeds=0)
    last = spec.hyperparameters.model_copy(update={"seed": 2**31 - 1})
    with pytest.raises(ConfigError, match="largest seed") as caught:
        run_baselines(
            spec.model_copy(update={"hyperparameters": last}),
            code_dir,
            silo_inputs,
            work_root=tmp_path,
            seeds=2,
        )
    assert caught.value.field == "hyperparameters.seed"


def test_cli_prints_mean_and_spread_over_seeds(one_round_job_file: Path, workspace: Path) -> None:
    job_file = one_round_job_file
    app = typer.Typer()
    _learn.register(app)
    args = ["baseline", str(job_file), "-w", str(workspace), "--seeds", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    words = " ".join(result.output.split())
    assert "mean ± std over seeds 0, 1" in words, result.output
    assert "±" in result.output
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["seeds"] == [0, 1]
    assert [run["seeds"] for run in data["runs"]] == [[0], [1]]
    assert set(data["rows"][0]["spread"]) >= {"accuracy", "loss"}
