"""``fedsilo sim --sweep``: a workspace set up through the CLI, one simulation per value, a PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

import fedsilo.quickstart
from fedsilo.cli import _data, _federation, _jobs, _learn
from fedsilo.errors import ConfigError
from fedsilo.quickstart._quickstart import _split_digits

SILOS = ("silo-a", "silo-b")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

FEDERATION = """\
name: sweeps
orchestrator:
  storage: {root: storage/orchestrator}
  compute: {name: orchestrator-cpu}
silos:
  - name: silo-a
    storage: {root: storage/silo-a}
    compute: {name: silo-a-cpu}
  - name: silo-b
    storage: {root: storage/silo-b}
    compute: {name: silo-b-cpu}
submitters: [submitter]
"""

JOB = """\
name: digits
code: {code}
silos: [silo-a, silo-b]
inputs: {{train: digits-train, test: digits-test}}
rounds: 1
strategy: {{name: fedavg, weighting: explicit, weights: {{silo-a: 1, silo-b: 1}}}}
hyperparameters: {{lr: 0.1, epochs: 1, batch_size: 32, seed: 0}}
"""


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    """The root app's provisioning, data, job and learning commands."""
    root = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
    for module in (_federation, _data, _jobs, _learn):
        module.register(root)
    return root


def _invoke(app: typer.Typer, *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def setup(app: typer.Typer, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 2-silo workspace provisioned and filled through the CLI, and a job file for it."""
    base = tmp_path_factory.mktemp("sim-sweep")
    (base / "federation.yaml").write_text(FEDERATION)
    workspace = base / "ws"
    done = _invoke(app, "provision", str(base / "federation.yaml"), "--out", str(workspace))
    assert done.exit_code == 0, done.output
    shards = _split_digits(base / "digits")
    for silo in SILOS:
        for role in ("train", "test"):
            added = _invoke(
                app,
                "data", "add", str(shards[silo][role]), "--silo", silo,
                "--name", f"digits-{role}", "--classification", "sensitive",
                "-w", str(workspace),
            )  # fmt: skip
            assert added.exit_code == 0, added.output
    job_file = base / "job.yaml"
    code = Path(fedsilo.quickstart.__file__).parent / "task"
    job_file.write_text(JOB.format(code=code))
    return workspace, job_file


def _assert_png(path: Path) -> None:
    from matplotlib.image import imread

    assert path.read_bytes().startswith(PNG_MAGIC)
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_sim_sweep_writes_a_table_and_a_png_at_the_default_path(
    app: typer.Typer,
    setup: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    workspace, job_file = setup
    monkeypatch.chdir(tmp_path)
    result = _invoke(
        app, "sim", str(job_file), "-w", str(workspace), "--sweep", "hyperparameters.lr=0.01,0.5"
    )
    assert result.exit_code == 0, result.output
    plot = tmp_path / "digits-sweep-hyperparameters.lr.png"
    _assert_png(plot)
    assert "sweep over hyperparameters.lr" in result.output
    assert (
        "hyperparameters.lr=0.01:" in result.output and "hyperparameters.lr=0.5:" in result.output
    )
    assert str(plot.name) in result.output


def test_sim_sweep_json_over_aggregation_weights(
    app: typer.Typer, setup: tuple[Path, Path], tmp_path: Path
) -> None:
    workspace, job_file = setup
    plot = tmp_path / "plots" / "weights.png"
    result = _invoke(
        app,
        "sim", str(job_file), "-w", str(workspace), "--sweep", "strategy.weights.silo-a=1,4",
        "--metric", "loss", "--plot", str(plot), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["key"] == "strategy.weights.silo-a" and data["metric"] == "loss"
    assert [row["value"] for row in data["rows"]] == ["1", "4"]
    losses = [row["metrics"]["loss"] for row in data["rows"]]
    assert losses[0] != losses[1]  # the weight reached the aggregation
    assert data["plot"] == str(plot)
    _assert_png(plot)


def test_the_sweep_alias_runs_the_same_code_path(
    app: typer.Typer, setup: tuple[Path, Path], tmp_path: Path
) -> None:
    workspace, job_file = setup
    plot = tmp_path / "rounds.png"
    result = _invoke(
        app, "sweep", str(job_file), "-w", str(workspace), "--set", "rounds=1,2",
        "--plot", str(plot), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [row["value"] for row in json.loads(result.output)["rows"]] == ["1", "2"]
    _assert_png(plot)


@pytest.mark.parametrize(
    ("setting", "plot", "words"),
    [
        ("hyperparameters.lr=0.1,-1", "lr.png", "cannot set 'hyperparameters.lr' to '-1'"),
        ("hyperparameters.lrr=0.1", "lr.png", "unknown key 'lrr'"),
        ("rounds=1,2,1", "r.png", "lists 1 more than once"),
        ("hyperparameters.lr=0.1", "lr.jpg", "ending in .png"),
    ],
)
def test_a_bad_value_or_plot_path_fails_before_the_first_variant_runs(
    app: typer.Typer,
    setup: tuple[Path, Path],
    tmp_path: Path,
    setting: str,
    plot: str,
    words: str,
) -> None:
    workspace, job_file = setup
    args = ["sim", str(job_file), "-w", str(workspace), "--sweep", setting]
    result = _invoke(app, *args, "--plot", str(tmp_path / plot))
    assert isinstance(result.exception, ConfigError), result.output
    assert words in str(result.exception)
    assert "=0.1:" not in result.output  # no variant finished
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "extra", [["--sweep", "rounds=1,2", "-o", "m.safetensors"], ["--plot", "p.png"]]
)
def test_options_that_need_or_exclude_a_sweep_are_usage_errors(
    app: typer.Typer, setup: tuple[Path, Path], extra: list[str]
) -> None:
    workspace, job_file = setup
    result = _invoke(app, "sim", str(job_file), "-w", str(workspace), *extra)
    assert result.exit_code == 2
    assert "sweep" in result.output


def test_track_logs_the_simulation_and_each_variant_to_the_workspace_store(
    app: typer.Typer, setup: tuple[Path, Path], tmp_path: Path
) -> None:
    from fedsilo.tracking import Tracker

    workspace, job_file = setup
    result = _invoke(app, "sim", str(job_file), "-w", str(workspace), "--track", "--json")
    assert result.exit_code == 0, result.output
    job_id = json.loads(result.stdout)["tracked"]
    assert job_id.startswith("digits-sim-")
    swept = _invoke(
        app,
        "sim", str(job_file), "-w", str(workspace), "--sweep", "hyperparameters.lr=0.05,0.2",
        "--plot", str(tmp_path / "lr.png"), "--track",
    )  # fmt: skip
    assert swept.exit_code == 0, swept.output
    tracker = Tracker.for_workspace(workspace)
    jobs = {j.job_id: j for j in tracker.jobs()}
    assert jobs[job_id].status == "FINISHED" and jobs[job_id].rounds == 1
    runs = tracker.client.search_runs(
        [tracker.client.get_experiment_by_name("digits").experiment_id],
        filter_string="tags.`fedsilo.kind` = 'job'",
    )
    by_value = {r.data.tags["fedsilo.sweep"]: r for r in runs if "fedsilo.sweep" in r.data.tags}
    assert sorted(by_value) == ["hyperparameters.lr=0.05", "hyperparameters.lr=0.2"]
    for tag, run in by_value.items():
        assert run.data.params["hyperparameters.lr"] == tag.split("=")[1]
        assert run.data.tags["fedsilo.runtime"] == "simulation"
        curve = tracker.client.get_metric_history(run.info.run_id, "aggregate/accuracy")
        assert [m.step for m in curve] == [1]
