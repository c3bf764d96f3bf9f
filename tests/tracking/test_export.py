"""``fedsilo tracking export``: each submitter gets exactly the runs it may read, whole.

One store is written through :class:`Tracker` as the orchestrator writes it (two owners,
a job shared with one other submitter, one shared with everyone, a simulation with no
owner) and shared by the tests, since every new MLflow store costs a second or so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from fedsilo.cli import _tracking
from fedsilo.errors import WorkspaceError
from fedsilo.tracking import (
    ExportResult,
    JobRun,
    Tracker,
    TrackingError,
    export_runs,
    store_in,
    track_history,
    ui_command,
)
from fedsilo.tracking._mlflow import mlflow_client

SILOS = ("silo-a", "silo-b")
ROUNDS = 3
JOBS = {  # job id: (owner, job name, share_with)
    "digits-a1": ("alice", "digits", ()),
    "shared-a2": ("alice", "shared", ("carol",)),
    "digits-b1": ("bob", "digits", ("*",)),
    "private-b2": ("bob", "private", ()),
}
READS = {
    "alice": {"digits-a1", "shared-a2", "digits-b1"},
    "bob": {"digits-b1", "private-b2"},
    "carol": {"shared-a2", "digits-b1"},
}  # erin, whom no job names, gets what is shared with everyone (the re-export test)


def _start(tracker: Tracker, job_id: str) -> JobRun:
    owner, name, readers = JOBS.get(job_id, ("erin", "late", ()))
    params = {"name": name, "rounds": ROUNDS, "hyperparameters": {"lr": 0.1}}
    return tracker.start_job(job_id, name, params, submitter=owner, readers=readers)


def _round(tracker: Tracker, run: JobRun, n: int) -> None:
    per_silo = {s: {"loss": 1.0 / n + i, "accuracy": 0.5 + n / 10 + i} for i, s in enumerate(SILOS)}
    tracker.log_round(run, n, per_silo, {"accuracy": 0.6 + n / 10}, {s: 0.5 * n for s in SILOS})


def _finish(tracker: Tracker, run: JobRun, model: Path) -> None:
    tracker.log_model(run, model)
    tracker.finish(run, "succeeded")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "0123abcd"
    path.write_bytes(b"a global model")
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, model: Path) -> Tracker:
    """The orchestrator's store: every job of JOBS run to the end, and one simulation."""
    tracker = Tracker.in_folder(tmp_path_factory.mktemp("orchestrator") / "tracking")
    for job_id in JOBS:
        run = _start(tracker, job_id)
        for n in range(1, ROUNDS + 1):
            _round(tracker, run, n)
        _finish(tracker, run, model)
    track_history(tracker, "digits-sim-1", "digits", {"rounds": 0}, [])
    return tracker


@pytest.fixture(scope="module")
def exports(
    source: Tracker, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, ExportResult]]:
    """Each reader's export, made once."""
    out = {}
    for reader in READS:
        folder = tmp_path_factory.mktemp("exports") / reader
        out[reader] = (folder, export_runs(source, reader, folder))
    return out


def _folder(tracker: Tracker) -> Path:
    """The folder of a store kept in one (its database's folder)."""
    return Path(tracker.tracking_uri.removeprefix("sqlite:///")).parent


def _client(folder: Path) -> MlflowClient:
    return mlflow_client(store_in(folder)[0])


def _runs(client: MlflowClient) -> list[Run]:
    experiments = [e.experiment_id for e in client.search_experiments()]
    return list(client.search_runs(experiments, max_results=1000))


def _jobs(client: MlflowClient) -> dict[str, Run]:
    """The job (parent) runs of a store by job id; a job copied twice fails the test."""
    runs = [r for r in _runs(client) if r.data.tags.get("fedsilo.kind") == "job"]
    by_id = {r.data.tags["fedsilo.job_id"]: r for r in runs}
    assert len(by_id) == len(runs), "a job has more than one run"
    return by_id


def _children(client: MlflowClient, run: Run) -> dict[str, Run]:
    runs = [r for r in _runs(client) if r.data.tags.get("mlflow.parentRunId") == run.info.run_id]
    by_silo = {r.data.tags["fedsilo.silo"]: r for r in runs}
    assert len(by_silo) == len(runs), "a silo has more than one run"
    return by_silo


def _history(client: MlflowClient, run: Run, key: str) -> list[tuple[int, float, int]]:
    return sorted(
        (m.step, m.value, m.timestamp) for m in client.get_metric_history(run.info.run_id, key)
    )


def test_the_orchestrator_writes_each_job_to_its_owners_experiment(source: Tracker) -> None:
    client = source.client
    jobs = _jobs(client)
    for job_id, (owner, name, readers) in JOBS.items():
        run = jobs[job_id]
        assert client.get_experiment(run.info.experiment_id).name == f"{owner}/{name}"
        assert run.data.tags["fedsilo.submitter"] == owner
        assert run.data.tags["fedsilo.readers"] == ",".join(readers)
    # two owners' jobs of one name never share an experiment; a simulation keeps its name
    assert jobs["digits-a1"].info.experiment_id != jobs["digits-b1"].info.experiment_id
    assert client.get_experiment(jobs["digits-sim-1"].info.experiment_id).name == "digits"
    assert "fedsilo.submitter" not in jobs["digits-sim-1"].data.tags


@pytest.mark.parametrize("reader", sorted(READS))
def test_an_export_holds_exactly_the_runs_its_reader_may_read_whole(
    reader: str, source: Tracker, exports: dict[str, tuple[Path, ExportResult]]
) -> None:
    folder, result = exports[reader]
    assert set(result.added) == READS[reader]
    assert not result.updated and not result.unchanged
    client = _client(folder)
    copies = _jobs(client)
    assert set(copies) == READS[reader]
    originals = _jobs(source.client)
    for job_id, copy in copies.items():
        original = originals[job_id]
        owner, name, _ = JOBS[job_id]
        assert client.get_experiment(copy.info.experiment_id).name == f"{owner}/{name}"
        assert copy.data.params == original.data.params
        assert copy.data.tags["fedsilo.exported_from"] == original.info.run_id
        for tag in ("fedsilo.submitter", "fedsilo.readers", "fedsilo.state", "mlflow.runName"):
            assert copy.data.tags[tag] == original.data.tags[tag]
        assert (copy.info.status, copy.info.start_time, copy.info.end_time) == (
            original.info.status,
            original.info.start_time,
            original.info.end_time,
        )
        assert set(copy.data.metrics) == set(original.data.metrics)
        for key in ("aggregate/accuracy", "silo-b/loss", "silo-a/epsilon"):
            assert _history(client, copy, key) == _history(source.client, original, key)
        assert [s for s, *_ in _history(client, copy, "aggregate/accuracy")] == [1, 2, 3]
        assert [a.path for a in client.list_artifacts(copy.info.run_id, "model")] == [
            "model/0123abcd"
        ]
        local = client.download_artifacts(copy.info.run_id, "model/0123abcd", str(folder.parent))
        [output] = copy.outputs.model_outputs  # a training run in the export's UI too
        [source_output] = original.outputs.model_outputs
        assert output.step == source_output.step == ROUNDS
        model = client.get_logged_model(output.model_id)
        assert (model.name, model.source_run_id) == (job_id, copy.info.run_id)
        assert model.tags["fedsilo.artifact"] == "model/0123abcd"
        assert model.tags["fedsilo.exported_from"] == source_output.model_id
        experiment = client.get_experiment(copy.info.experiment_id)
        assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
        assert Path(local).read_bytes() == b"a global model"
        children = _children(client, copy)
        assert set(children) == set(SILOS)
        for silo, child in children.items():
            source_child = _children(source.client, original)[silo]
            assert child.info.status == "FINISHED"
            assert _history(client, child, "loss") == _history(source.client, source_child, "loss")


def test_exporting_again_adds_new_runs_and_completes_running_ones_without_copies(
    source: Tracker, model: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "erin"
    first = export_runs(source, "erin", folder)
    assert first.added == ("digits-b1",)  # nothing names erin yet: only what is for all

    late = _start(source, "late-e1")
    _round(source, late, 1)
    second = export_runs(source, "erin", folder)
    assert (second.added, second.updated, second.unchanged) == (("late-e1",), (), ("digits-b1",))
    client = _client(folder)
    running = _jobs(client)["late-e1"]
    assert running.info.status == "RUNNING"
    assert [s for s, *_ in _history(client, running, "aggregate/accuracy")] == [1]

    for n in range(2, ROUNDS + 1):
        _round(source, late, n)
    _finish(source, late, model)
    third = export_runs(source, "erin", folder)
    assert (third.added, third.updated, third.unchanged) == ((), ("late-e1",), ("digits-b1",))
    copies = _jobs(client)
    assert set(copies) == {"digits-b1", "late-e1"}
    done = copies["late-e1"]
    original = _jobs(source.client)["late-e1"]
    assert done.info.status == "FINISHED"
    for key in ("aggregate/accuracy", "silo-a/loss"):
        assert _history(client, done, key) == _history(source.client, original, key)
        assert len(_history(client, done, key)) == ROUNDS  # round 1 not logged twice
    assert set(_children(client, done)) == set(SILOS)
    assert len(_runs(client)) == 2 * (1 + len(SILOS))
    assert len(done.outputs.model_outputs) == 1  # the model came with the job's end

    fourth = export_runs(source, "erin", folder)
    assert (fourth.added, fourth.updated) == ((), ())
    assert set(fourth.unchanged) == {"digits-b1", "late-e1"}
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert len(client.search_logged_models(experiments)) == 2  # one model a job, never twice


def test_an_export_refuses_a_folder_that_is_not_its_readers_earlier_export(
    source: Tracker, exports: dict[str, tuple[Path, ExportResult]], tmp_path: Path
) -> None:
    alices, _ = exports["alice"]
    with pytest.raises(TrackingError, match="holds the tracking export for 'alice', not for 'bob'"):
        export_runs(source, "bob", alices)
    with pytest.raises(TrackingError, match="is not empty and is not an earlier export"):
        export_runs(source, "alice", _folder(source))  # never into the orchestrator's store
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(TrackingError, match="is not empty"):
        export_runs(source, "alice", tmp_path)
    assert set(_jobs(_client(alices))) == READS["alice"]


def test_the_ui_serves_an_export_folder(
    exports: dict[str, tuple[Path, ExportResult]], tmp_path: Path
) -> None:
    folder, _ = exports["carol"]
    command = ui_command(store=folder, port=5124)
    assert f"sqlite:///{folder}/mlflow.db" in command.argv
    assert (folder / "artifacts").as_uri() in command.argv
    with pytest.raises(WorkspaceError, match="holds no tracking store"):
        ui_command(store=tmp_path)


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    root = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
    _tracking.register(root)
    return root


def test_the_cli_exports_and_lists_a_readers_runs(
    app: typer.Typer, source: Tracker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _folder(source)
    target = tmp_path / "carol"
    runner = CliRunner()
    args = ["tracking", "export", "--for", "carol", "--to", str(target), "--store", str(store)]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.output)["added"]) == READS["carol"]

    again = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert again.exit_code == 0, again.output
    assert "jobs 0 added, 0 updated, 2 unchanged" in again.output
    assert f"fedsilo tracking ui --store {target}" in again.output

    monkeypatch.chdir(tmp_path)
    listed = runner.invoke(app, ["tracking", "runs", "--store", "carol", "--json"])
    assert listed.exit_code == 0, listed.output
    assert {j["job_id"] for j in json.loads(listed.output)} == READS["carol"]

    both = runner.invoke(app, ["tracking", "runs", str(tmp_path), "--store", str(target)])
    assert both.exit_code == 2
    assert "not both" in both.output
