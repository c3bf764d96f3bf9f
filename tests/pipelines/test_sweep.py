"""Sweeps: one setting of the job spec varied, each variant simulated, the result plotted."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fedsilo.cli import _learn
from fedsilo.errors import ConfigError
from fedsilo.jobs import JobSpec
from fedsilo.pipelines import SweepResult, override_spec, parse_sweep, plot_sweep, run_sweep
from fedsilo.quickstart._quickstart import SILOS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def swept(
    job: tuple[JobSpec, Path],
    silo_inputs: dict[str, dict[str, Path]],
    tmp_path_factory: pytest.TempPathFactory,
) -> SweepResult:
    spec, code_dir = job
    short = spec.model_copy(update={"rounds": 2})
    return run_sweep(
        short,
        code_dir,
        silo_inputs,
        "hyperparameters.lr",
        ["0.01", "0.1"],
        work_root=tmp_path_factory.mktemp("sweep"),
    )


def _assert_png(path: Path) -> None:
    from matplotlib.image import imread

    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 5_000
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_one_row_per_value_with_the_final_metrics(swept: SweepResult) -> None:
    assert [row.value for row in swept.rows] == ["0.01", "0.1"]
    assert swept.metric == "accuracy"
    for row in swept.rows:
        assert 0.0 <= row.metrics["accuracy"] <= 1.0
        assert row.seconds > 0
    low, high = (row.metrics["loss"] for row in swept.rows)
    assert low != high  # the setting reached the training


def test_the_plot_is_a_real_png(swept: SweepResult, tmp_path: Path) -> None:
    out = plot_sweep(swept, tmp_path / "plots" / "lr.png")
    _assert_png(out)
    _assert_png(plot_sweep(swept, tmp_path / "loss.png", "loss"))


def test_categorical_values_plot_too(swept: SweepResult, tmp_path: Path) -> None:
    rows = [
        row._replace(value=v) for row, v in zip(swept.rows, ("samples", "uniform"), strict=True)
    ]
    _assert_png(plot_sweep(swept._replace(rows=rows), tmp_path / "w.png"))


@pytest.mark.parametrize(
    ("key", "value", "check"),
    [
        ("rounds", "7", lambda s: s.rounds == 7),
        ("hyperparameters.lr", "1e-3", lambda s: s.hyperparameters.lr == 0.001),
        ("hyperparameters.extra.sleep", "0.5", lambda s: s.hyperparameters.extra["sleep"] == 0.5),
        ("strategy.weighting", "uniform", lambda s: s.strategy.weighting == "uniform"),
    ],
)
def test_override_sets_one_setting(
    job: tuple[JobSpec, Path], key: str, value: str, check: Callable[[JobSpec], bool]
) -> None:
    spec, _ = job
    assert check(override_spec(spec, key, value))
    assert override_spec(spec, key, value).name == spec.name


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("hyperparameters.lrr", "0.1", "unknown key 'lrr'"),
        ("learning_rate", "0.1", "unknown key 'learning_rate'"),
        ("hyperparameters.lr", "-1", "hyperparameters.lr"),
        ("hyperparameters.lr.x", "1", "hyperparameters.lr"),
        ("strategy.weights.silo-a", "2", "weights"),
        ("rounds", "many", "rounds"),
    ],
)
def test_a_bad_key_or_value_is_a_config_error_naming_the_key(
    job: tuple[JobSpec, Path], key: str, value: str, words: str
) -> None:
    spec, _ = job
    with pytest.raises(ConfigError) as caught:
        override_spec(spec, key, value)
    assert words in str(caught.value)
    assert caught.value.field is not None and caught.value.field.startswith(key.split(".")[0])


def test_a_bad_key_fails_before_anything_runs(
    job: tuple[JobSpec, Path], silo_inputs: dict[str, dict[str, Path]], tmp_path: Path
) -> None:
    spec, code_dir = job
    with pytest.raises(ConfigError, match=r"hyperparameters\.lrr"):
        run_sweep(spec, code_dir, silo_inputs, "hyperparameters.lrr", ["1"], work_root=tmp_path)
    assert not any(tmp_path.iterdir())


def test_parse_sweep() -> None:
    assert parse_sweep("hyperparameters.lr=0.01, 0.1") == ("hyperparameters.lr", ["0.01", "0.1"])
    for bad in ("hyperparameters.lr", "=1,2", "rounds=1,,2"):
        with pytest.raises(ConfigError, match="KEY=V1,V2"):
            parse_sweep(bad)


def test_cli_sweeps_and_plots(job: tuple[JobSpec, Path], workspace: Path, tmp_path: Path) -> None:
    _, code_dir = job
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        f"name: digits\ncode: {code_dir}\nsilos: [{', '.join(SILOS)}]\n"
        "inputs: {train: digits-train, test: digits-test}\nrounds: 1\n"
    )
    app = typer.Typer()
    _learn.register(app)
    args = ["sweep", str(job_file), "-w", str(workspace), "--set", "rounds=1,2"]
    result = CliRunner().invoke(app, [*args, "--plot", str(tmp_path / "r.png"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [r["value"] for r in data["rows"]] == ["1", "2"]
    _assert_png(tmp_path / "r.png")
    result = CliRunner().invoke(app, [*args, "--metric", "loss"])
    assert result.exit_code == 0, result.output
    assert "sweep over rounds" in result.output
