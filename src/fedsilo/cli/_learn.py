"""``fedsilo baseline | sweep``: FL next to centralized training, and one setting swept."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fedsilo.cli import _hints as hints
from fedsilo.cli import _tables as tables
from fedsilo.cli._common import WorkspaceOption, console
from fedsilo.jobs import load_job

if TYPE_CHECKING:
    from fedsilo.pipelines import SweepRow

JobFile = Annotated[Path, typer.Argument(help="The job spec (YAML).")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
SeedsOption = Annotated[
    int,
    typer.Option(
        "--seeds",
        min=1,
        help="Train every model with this many seeds (the job's seed, then the next ones) "
        "and report each metric's mean and standard deviation.",
    ),
]


def baseline(
    job_file: JobFile,
    workspace: WorkspaceOption = Path("."),
    seeds: SeedsOption = 1,
    as_json: JsonFlag = False,
) -> None:
    """Train the job federated, on all data pooled, and on each silo's data alone.

    Every model is evaluated on the same pooled test data; each silo's data is read from
    its catalog in the workspace (local development only). With --seeds N every model
    is trained N times and each cell reads mean ± standard deviation.
    """
    from fedsilo.pipelines import run_baselines, workspace_inputs

    spec, code_dir = load_job(job_file)
    inputs = workspace_inputs(workspace, spec)
    if not as_json:
        console.print(
            f"training {spec.name}: FL, Central-all and Central-1/k for each of "
            f"{len(spec.silos)} silos, {spec.rounds} rounds each"
            + (f", {seeds} seeds" if seeds > 1 else "")
        )
    with tempfile.TemporaryDirectory(prefix="fedsilo-baseline-") as tmp:
        report = run_baselines(spec, code_dir, inputs, work_root=Path(tmp), seeds=seeds)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
        return
    metrics = report.metric_names
    over = f", mean ± std over seeds {', '.join(map(str, report.seeds))}" if report.runs else ""
    shown = tables.table(
        f"{report.job}: FL vs centralized ({report.rounds} rounds, pooled test data{over})",
        "model",
        *metrics,
        "wall-clock s",
        "compute s",
        wrap=tuple(metrics),
    )
    for column in shown.columns[1:]:
        column.justify = "right"
    notes = tables.Footnotes()
    for row in report.rows:
        values = [_cell(row.metrics.get(m), row.spread.get(m), notes) for m in metrics]
        shown.add_row(row.label, *values, f"{row.seconds:.2f}", f"{row.compute_seconds:.2f}")
    tables.print_table(console, shown, notes)


def _cell(value: float | None, spread: float | None, notes: tables.Footnotes) -> str:
    if value is None:
        return notes.dash("this model's evaluate() returned no such metric")
    return f"{value:.4f}" if spread is None else f"{value:.4f} ± {spread:.4f}"


SweepOption = Annotated[
    str | None,
    typer.Option(
        "--sweep",
        help="KEY=V1,V2,...: run the job once per value of this dotted job-spec key "
        "(e.g. hyperparameters.lr=0.01,0.1) and compare the final models.",
    ),
]
MetricOption = Annotated[
    str | None,
    typer.Option(
        "--metric", help="With --sweep: the metric to compare and plot (default: accuracy)."
    ),
]
PlotOption = Annotated[
    Path | None,
    typer.Option(
        "--plot",
        help="With --sweep: where to write the PNG plot (default: ./JOB-sweep-KEY.png).",
    ),
]
TrackFlag = Annotated[
    bool,
    typer.Option(
        "--track",
        help="Log the simulation (each variant, with --sweep) to the workspace's MLflow store.",
    ),
]


def sweep_job(
    job_file: Path,
    workspace: Path,
    setting: str,
    *,
    metric: str | None,
    plot: Path | None,
    as_json: bool,
    track: bool = False,
) -> None:
    """Run and render a sweep: the one code path of ``sim --sweep`` and ``sweep --set``.

    Every value, and the plot's path, is checked before the first variant runs.
    """
    from fedsilo.pipelines import default_plot_path, parse_sweep, run_sweep, workspace_inputs
    from fedsilo.tracking import Tracker

    spec, code_dir = load_job(job_file)
    key, values = parse_sweep(setting)
    target = plot if plot is not None else default_plot_path(spec.name, key)
    inputs = workspace_inputs(workspace, spec)

    def on_row(row: SweepRow) -> None:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in row.metrics.items() if k != "num_samples")
        console.print(f"{key}={row.value}: {shown} ({row.seconds:.1f} s)", highlight=False)

    if not as_json:
        console.print(f"sweeping {key} over {', '.join(values)}: {len(values)} simulations")
    with tempfile.TemporaryDirectory(prefix="fedsilo-sweep-") as tmp:
        result = run_sweep(
            spec,
            code_dir,
            inputs,
            key,
            values,
            work_root=Path(tmp),
            metric=metric,
            plot=target,
            on_row=None if as_json else on_row,
            tracker=Tracker.for_workspace(workspace) if track else None,
        )
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
        return
    names = sorted({k for r in result.rows for k in r.metrics} - {"num_samples"})
    shown = tables.table(f"{result.job}: sweep over {result.key}", result.key, *names, "seconds")
    for column in shown.columns[1:]:
        column.justify = "right"
        if column.header == result.metric:
            column.header = f"[bold]{result.metric}[/]"
    notes = tables.Footnotes()
    for row in result.rows:
        cells = [
            f"{row.metrics[n]:.4f}"
            if n in row.metrics
            else notes.dash("the final model's evaluate() returned no such metric")
            for n in names
        ]
        shown.add_row(row.value, *cells, f"{row.seconds:.2f}")
    tables.print_table(console, shown, notes)
    console.print(f"plot of final {result.metric} against {result.key} in {result.plot}")
    if track:
        console.print(
            f"each variant tracked in MLflow; list them with: {hints.tracking_runs(workspace)}",
            highlight=False,
            soft_wrap=True,
        )


def sweep(
    job_file: JobFile,
    setting: Annotated[
        str,
        typer.Option(
            "--set",
            "--sweep",
            help="KEY=V1,V2,...: a dotted key of the job spec and the values to try.",
        ),
    ],
    workspace: WorkspaceOption = Path("."),
    metric: MetricOption = None,
    plot: PlotOption = None,
    track: TrackFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Simulate the job once per value of one setting: the same as fedsilo sim --sweep."""
    sweep_job(job_file, workspace, setting, metric=metric, plot=plot, as_json=as_json, track=track)


def register(app: typer.Typer) -> None:
    """Add ``baseline`` and ``sweep`` to the root app."""
    app.command()(baseline)
    app.command()(sweep)
