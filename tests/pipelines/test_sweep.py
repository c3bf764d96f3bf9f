"""Sweeps: one setting of the job spec varied, each variant simulated, the result plotted."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fedsilo.cli import _jobs
from fedsilo.errors import ConfigError
from fedsilo.jobs import JobSpec
from fedsilo.pipelines import (
    SweepResult,
    SweepRow,
    check_plot_path,
    default_plot_path,
    override_spec,
    parse_sweep,
    plot_sweep,
    run_sweep,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def plotted(
    job: tuple[JobSpec, Path],
    silo_inputs: dict[str, dict[str, Path]],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[SweepResult, list[SweepRow]]:
    """A 2-round sweep over the learning rate with its plot, and the rows seen as they came."""
    spec, code_dir = job
    short = spec.model_copy(update={"rounds": 2})
    seen: list[SweepRow] = []
    result = run_sweep(
        short,
        code_dir,
        silo_inputs,
        "hyperparameters.lr",
        ["0.01", "0.1"],
        work_root=tmp_path_factory.mktemp("sweep"),
        plot=tmp_path_factory.mktemp("plot") / "new" / "lr.png",
        on_row=seen.append,
    )
    return result, seen


@pytest.fixture(scope="module")
def swept(plotted: tuple[SweepResult, list[SweepRow]]) -> SweepResult:
    return plotted[0]


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


def test_each_variant_is_reported_as_it_finishes(
    plotted: tuple[SweepResult, list[SweepRow]],
) -> None:
    result, seen = plotted
    assert seen == result.rows


def test_run_sweep_writes_the_plot_it_was_given(swept: SweepResult) -> None:
    assert swept.plot is not None and swept.plot.name == "lr.png"
    _assert_png(swept.plot)
    assert swept.as_dict()["plot"] == str(swept.plot)


def test_the_plot_is_a_real_png(swept: SweepResult, tmp_path: Path) -> None:
    out = plot_sweep(swept, tmp_path / "plots" / "lr.png")
    _assert_png(out)
    _assert_png(plot_sweep(swept, tmp_path / "loss.png", "loss"))


@pytest.mark.parametrize(
    ("key", "values", "log"),
    [
        ("hyperparameters.lr", ["0.05", "0.1", "0.2"], True),  # a learning rate: always log
        ("strategy.server_lr", ["0.001", "0.01"], True),
        ("hyperparameters.extra.learning_rate", ["1e-4", "3e-4"], True),
        ("strategy.proximal_mu", ["0.001", "0.01", "0.1"], True),  # two decades
        ("strategy.proximal_mu", ["0.01", "0.1"], False),
        ("rounds", ["1", "2", "5"], False),
        ("hyperparameters.extra.flr", ["0.1", "0.2"], False),  # not a learning rate's name
        ("hyperparameters.lr", ["0", "0.1"], False),  # zero has no place on a log axis
    ],
)
def test_learning_rates_get_a_log_axis_ticked_at_the_values_tried(
    swept: SweepResult, key: str, values: list[str], log: bool
) -> None:
    from fedsilo.pipelines._sweep import sweep_figure

    rows = [SweepRow(v, {"accuracy": 0.5 + i / 10}, 1.0) for i, v in enumerate(values)]
    figure = sweep_figure(swept._replace(key=key, rows=rows))
    axes = figure.axes[0]
    assert axes.get_xscale() == ("log" if log else "linear")
    assert axes.get_xlabel() == (f"{key} (log scale)" if log else key)
    if log:
        assert [t.get_text() for t in axes.get_xticklabels()] == values
        assert list(axes.get_xticks()) == pytest.approx([float(v) for v in values])


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
        (
            "privacy.local.target_epsilon",
            "4",
            lambda s: s.privacy.local is not None and s.privacy.local.target_epsilon == 4.0,
        ),
        ("privacy.central.noise_multiplier", "0.5", lambda s: s.privacy.central is not None),
        ("strategy.name", "median", lambda s: s.strategy.name == "median"),
        ("strategy.name", "fedadam", lambda s: getattr(s.strategy, "server_lr", 0) == 0.01),
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


def test_explicit_aggregation_weights_can_be_swept(job: tuple[JobSpec, Path]) -> None:
    spec, _ = job
    explicit = override_spec(
        spec,
        "strategy",
        "{name: fedavg, weighting: explicit, weights: {silo-a: 1, silo-b: 1, silo-c: 1}}",
    )
    heavier = override_spec(explicit, "strategy.weights.silo-a", "4")
    assert getattr(heavier.strategy, "weights", None) == {"silo-a": 4, "silo-b": 1, "silo-c": 1}


def test_a_bad_key_fails_before_anything_runs(
    job: tuple[JobSpec, Path], silo_inputs: dict[str, dict[str, Path]], tmp_path: Path
) -> None:
    spec, code_dir = job
    with pytest.raises(ConfigError, match=r"hyperparameters\.lrr"):
        run_sweep(spec, code_dir, silo_inputs, "hyperparameters.lrr", ["1"], work_root=tmp_path)
    assert not any(tmp_path.iterdir())


def test_a_bad_later_value_fails_before_the_first_variant_runs(
    job: tuple[JobSpec, Path], silo_inputs: dict[str, dict[str, Path]], tmp_path: Path
) -> None:
    spec, code_dir = job
    seen: list[SweepRow] = []
    with pytest.raises(ConfigError, match=r"cannot set 'hyperparameters.lr' to '0'"):
        run_sweep(
            spec,
            code_dir,
            silo_inputs,
            "hyperparameters.lr",
            ["0.1", "0.2", "0"],
            work_root=tmp_path / "work",
            plot=tmp_path / "lr.png",
            on_row=seen.append,
        )
    assert seen == []
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("name", "words"), [("lr.svg", "ending in .png"), ("folder.png", "is a folder")]
)
def test_a_plot_path_that_cannot_take_the_png_fails_before_anything_runs(
    job: tuple[JobSpec, Path],
    silo_inputs: dict[str, dict[str, Path]],
    tmp_path: Path,
    name: str,
    words: str,
) -> None:
    spec, code_dir = job
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ConfigError, match=words):
        run_sweep(
            spec,
            code_dir,
            silo_inputs,
            "rounds",
            ["1"],
            work_root=tmp_path / "work",
            plot=tmp_path / name,
        )
    assert not (tmp_path / "work").exists()


def test_a_plot_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(ConfigError, match="not a writable folder"):
        check_plot_path(tmp_path / "notes.txt" / "sub" / "p.png")
    check_plot_path(tmp_path / "new" / "sub" / "p.png")
    assert not (tmp_path / "new").exists()


def test_the_default_plot_path_names_job_and_key() -> None:
    assert default_plot_path("digits", "hyperparameters.lr") == Path(
        "digits-sweep-hyperparameters.lr.png"
    )
    assert default_plot_path("d", "strategy.weights.silo a", Path("out")) == Path(
        "out/d-sweep-strategy.weights.silo_a.png"
    )


def test_parse_sweep() -> None:
    assert parse_sweep("hyperparameters.lr=0.01, 0.1") == ("hyperparameters.lr", ["0.01", "0.1"])
    for bad in ("hyperparameters.lr", "=1,2", "rounds=1,,2"):
        with pytest.raises(ConfigError, match="KEY=V1,V2"):
            parse_sweep(bad)
    with pytest.raises(ConfigError, match=r"lists 0\.1 more than once"):
        parse_sweep("hyperparameters.lr=0.1,0.2,0.1")


def test_cli_sim_sweeps_and_plots(
    one_round_job_file: Path, workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_file = one_round_job_file
    app = typer.Typer()
    _jobs.register(app)
    args = ["sim", str(job_file), "-w", str(workspace), "--sweep", "rounds=1,2"]
    result = CliRunner().invoke(app, [*args, "--plot", str(tmp_path / "r.png"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [r["value"] for r in data["rows"]] == ["1", "2"]
    _assert_png(tmp_path / "r.png")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, [*args, "--metric", "loss"])
    assert result.exit_code == 0, result.output
    assert "sweep over rounds" in result.output
    _assert_png(tmp_path / "digits-sweep-rounds.png")
