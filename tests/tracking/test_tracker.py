"""FL jobs in the workspace's MLflow store: the documented keys, runs and artifacts."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import typer
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from fedsilo.api import RoundInfo
from fedsilo.cli import _tracking
from fedsilo.tracking import Tracker, TrackingError, track_history, workspace_store
from fedsilo.tracking._mlflow import mlflow_client

SILOS = ("silo-a", "silo-b")


def _history(rounds: int = 2) -> list[RoundInfo]:
    out = []
    for n in range(1, rounds + 1):
        evaluate = {
            s: {"accuracy": 0.5 + 0.1 * n + i / 100, "loss": 1.0 / n} for i, s in enumerate(SILOS)
        }
        out.append(
            RoundInfo(
                round=n,
                train={s: {"loss": 2.0 / n, "num_samples": 100.0} for s in SILOS},
                evaluate=evaluate,
                evaluate_aggregate={"accuracy": 0.5 + 0.1 * n, "loss": 1.0 / n},
            )
        )
    return out


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A workspace whose store holds one finished job with a model; its parent run id."""
    workspace = tmp_path_factory.mktemp("ws")
    model = workspace / "model.safetensors"
    model.write_bytes(b"\x00" * 64)
    tracker = Tracker.for_workspace(workspace)
    params = {"rounds": 2, "hyperparameters": {"lr": 0.1, "epochs": 1}, "silos": list(SILOS)}
    run = track_history(tracker, "job-1", "digits", params, _history(), model)
    return workspace, run.run_id


@pytest.fixture(scope="module")
def client(tracked: tuple[Path, str]) -> MlflowClient:
    uri, _, _ = workspace_store(tracked[0])
    return mlflow_client(uri)


def _children(client: MlflowClient, run: Run) -> list[Run]:
    return list(
        client.search_runs(
            [run.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'",
        )
    )


def test_the_store_lives_in_the_workspace(tracked: tuple[Path, str]) -> None:
    workspace, _ = tracked
    assert (workspace / "tracking" / "mlflow.db").is_file()
    assert any((workspace / "tracking" / "artifacts").rglob("model.safetensors"))
    assert not (Path.cwd() / "mlruns").exists()


def test_one_parent_run_per_job_with_the_documented_keys(
    tracked: tuple[Path, str], client: MlflowClient
) -> None:
    _, run_id = tracked
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["fedsilo.job_id"] == "job-1"
    assert run.data.params["hyperparameters.lr"] == "0.1"
    assert run.data.tags["fedsilo.rounds"] == "2"
    # one metric per name and silo, a round a step: curves, not a key per round
    assert set(run.data.metrics) == {
        f"{who}/{metric}" for who in (*SILOS, "aggregate") for metric in ("accuracy", "loss")
    } | {f"{silo}/train_{metric}" for silo in SILOS for metric in ("loss", "num_samples")}
    curve = client.get_metric_history(run_id, "silo-a/accuracy")
    assert [(m.step, round(m.value, 4)) for m in curve] == [(1, 0.6), (2, 0.7)]
    curve = client.get_metric_history(run_id, "silo-b/accuracy")
    assert [(m.step, round(m.value, 4)) for m in curve] == [(1, 0.61), (2, 0.71)]
    curve = client.get_metric_history(run_id, "aggregate/accuracy")
    assert [(m.step, round(m.value, 4)) for m in curve] == [(1, 0.6), (2, 0.7)]
    curve = client.get_metric_history(run_id, "silo-a/train_loss")
    assert [(m.step, m.value) for m in curve] == [(1, 2.0), (2, 1.0)]
    curve = client.get_metric_history(run_id, "aggregate/loss")
    assert [m.step for m in curve] == [1, 2]


def test_the_experiment_is_marked_as_model_training(
    tracked: tuple[Path, str], client: MlflowClient
) -> None:
    experiment = client.get_experiment(client.get_run(tracked[1]).info.experiment_id)
    assert experiment.name == "digits"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_an_experiment_from_before_is_marked_but_another_kind_is_kept(tmp_path: Path) -> None:
    tracker = Tracker.for_workspace(tmp_path)
    old = tracker.client.create_experiment("old")
    chosen = tracker.client.create_experiment("chosen", tags={"mlflow.experimentKind": "automl"})
    for name in ("old", "chosen"):
        tracker.finish(tracker.start_job(f"{name}-1", name, {}), "succeeded")
    kind = "mlflow.experimentKind"
    kinds = {e: tracker.client.get_experiment(e).tags[kind] for e in (old, chosen)}
    assert kinds == {old: "custom_model_development", chosen: "automl"}


def test_one_child_run_per_silo_with_its_curves(
    tracked: tuple[Path, str], client: MlflowClient
) -> None:
    parent = client.get_run(tracked[1])
    children = _children(client, parent)
    assert sorted(c.info.run_name for c in children) == list(SILOS)
    for child in children:
        assert child.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "accuracy")]
        assert sorted(steps) == [1, 2]


def test_the_model_is_an_artifact(tracked: tuple[Path, str], client: MlflowClient) -> None:
    files = client.list_artifacts(tracked[1], "model")
    assert [f.path for f in files] == ["model/model.safetensors"]
    assert files[0].file_size == 64


def test_the_model_is_the_runs_output_so_mlflow_calls_it_a_training_run(
    tracked: tuple[Path, str], client: MlflowClient
) -> None:
    # MLflow's UI files a run without a model output under "Evaluation runs"
    [output] = client.get_run(tracked[1]).outputs.model_outputs
    assert output.step == 2  # the last round
    model = client.get_logged_model(output.model_id)
    assert (model.name, model.source_run_id, str(model.status)) == ("job-1", tracked[1], "READY")
    assert model.tags["fedsilo.artifact"] == "model/model.safetensors"
    assert model.tags["fedsilo.job_id"] == "job-1"


def test_epsilon_and_failures_are_recorded(tmp_path: Path) -> None:
    tracker = Tracker.for_workspace(tmp_path)
    run = tracker.start_job("job-2", "digits-dp", {})
    tracker.log_round(run, 1, {"silo-a": {"accuracy": 0.4}}, {"accuracy": 0.4}, {"silo-a": 1.5})
    tracker.finish(run, "failed")
    got = tracker.client.get_run(run.run_id)
    assert got.info.status == "FAILED"
    assert got.data.metrics["silo-a/epsilon"] == 1.5
    assert [m.step for m in tracker.client.get_metric_history(run.run_id, "silo-a/epsilon")] == [1]
    with pytest.raises(TrackingError, match="unknown final state"):
        tracker.finish(run, "exploded")


def test_a_resumed_job_goes_on_in_its_run(tmp_path: Path) -> None:
    """An orchestrator that stopped mid-job left its run RUNNING; the one that resumes the
    job logs the rounds after into the same run and the same silo runs."""
    first = Tracker.for_workspace(tmp_path)
    run = first.start_job("job-r", "digits", {"rounds": 3}, submitter="alice")
    first.log_round(run, 1, {"silo-a": {"accuracy": 0.4}}, {"accuracy": 0.4})
    again = Tracker.for_workspace(tmp_path)  # a new process, the same store
    resumed = again.start_job("job-r", "digits", {"rounds": 3}, submitter="alice")
    assert (resumed.run_id, resumed.silo_runs, resumed.rounds) == (
        run.run_id,
        run.silo_runs,
        1,
    )
    again.log_round(resumed, 2, {"silo-a": {"accuracy": 0.6}}, {"accuracy": 0.6})
    again.finish(resumed, "succeeded")
    history = again.client.get_metric_history(run.run_id, "silo-a/accuracy")
    assert [(m.step, m.value) for m in history] == [(1, 0.4), (2, 0.6)]
    assert [j.job_id for j in again.jobs()] == ["job-r"]
    assert again.client.get_run(run.run_id).info.status == "FINISHED"


def test_several_jobs_tracked_from_threads_in_one_process(tmp_path: Path) -> None:
    tracker = Tracker.for_workspace(tmp_path)
    errors: list[BaseException] = []

    def job(i: int) -> None:
        try:
            track_history(tracker, f"job-{i}", "digits" if i % 2 else "other", {}, _history(3))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=job, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    jobs = tracker.jobs()
    assert sorted(j.job_id for j in jobs) == [f"job-{i}" for i in range(4)]
    assert all(j.rounds == 3 and j.status == "FINISHED" for j in jobs)
    assert jobs[0].final["accuracy"] == pytest.approx(0.8)


def test_cli_lists_tracked_jobs(tracked: tuple[Path, str], tmp_path: Path) -> None:
    app = typer.Typer()
    _tracking.register(app)
    runner = CliRunner()
    result = runner.invoke(app, ["tracking", "runs", str(tracked[0]), "--json"])
    assert result.exit_code == 0, result.output
    [job] = json.loads(result.output)
    assert job["job_id"] == "job-1" and job["rounds"] == 2
    result = runner.invoke(app, ["tracking", "runs", str(tracked[0])])
    assert "job-1" in result.output and "accuracy" in result.output
    result = runner.invoke(app, ["tracking", "runs", str(tmp_path), "--json"])
    assert json.loads(result.output) == []
    assert not (tmp_path / "tracking").exists()


def test_jobs_reads_the_rounds_of_a_store_written_before_the_rounds_tag(tmp_path: Path) -> None:
    from mlflow.entities import Metric

    tracker = Tracker.for_workspace(tmp_path)
    run = tracker.start_job("job-old", "digits", {})
    keys = ("iteration_1/aggregate/accuracy", "iteration_3/silo-a/loss", "silo-a/accuracy")
    tracker.client.log_batch(run.run_id, metrics=[Metric(k, 0.5, 0, 0) for k in keys])
    tracker.finish(run, "succeeded")
    [job] = tracker.jobs()
    assert job.rounds == 3


def test_importing_tracking_does_not_import_mlflow() -> None:
    code = "import sys, fedsilo.tracking; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
