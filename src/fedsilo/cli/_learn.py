"""``fedsilo baseline | sweep``: FL next to centralized training, and one setting swept."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fedsilo.cli._common import WorkspaceOption, console
from fedsilo.jobs import load_job

JobFile = Annotated[Path, typer.Argument(help="The job spec (YAML).")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def baseline(
    job_file: JobFile, workspace: WorkspaceOption = Path("."), as_json: JsonFlag = False
) -> None:
    """Train the job federated, on all data pooled, and on each silo's data alone.

    Every model is evaluated on the same pooled test data; each silo's data is read from
    its catalog in the workspace (local development only).
    """
    from fedsilo.pipelines import run_baselines, workspace_inputs

    spec, code_dir = load_job(job_file)
    inputs = workspace_inputs(workspace, spec)
    if not as_json:
        console.print(
            f"training {spec.name}: FL, Central-all and Central-1/k for each of "
            f"{len(spec.silos)} silos, {spec.rounds} rounds each"
        )
    with tempfile.TemporaryDirectory(prefix="fedsilo-baseline-") as tmp:
        report = run_baselines(spec, code_dir, inputs, work_root=Path(tmp))
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
        return
    metrics = report.metric_names
    table = Table(
        title=f"{report.job}: FL vs centralized ({report.rounds} rounds, pooled test data)"
    )
    table.add_column("model")
    for name in (*metrics, "wall-clock s", "compute s"):
        table.add_column(name, justify="right")
    for row in report.rows:
        values = [f"{row.metrics[m]:.4f}" if m in row.metrics else "-" for m in metrics]
        table.add_row(row.label, *values, f"{row.seconds:.2f}", f"{row.compute_seconds:.2f}")
    console.print(table)


def sweep(
    job_file: JobFile,
    setting: Annotated[
        str,
        typer.Option(
            "--set", help="KEY=V1,V2,...: a dotted key of the job spec and the values to try."
        ),
    ],
    workspace: WorkspaceOption = Path("."),
    metric: Annotated[
        str | None, typer.Option("--metric", help="The metric to compare (default: accuracy).")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write a PNG of the metric against the value.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Simulate the job once per value of one setting and compare the final models."""
    from fedsilo.pipelines import parse_sweep, plot_sweep, run_sweep, workspace_inputs

    spec, code_dir = load_job(job_file)
    key, values = parse_sweep(setting)
    inputs = workspace_inputs(workspace, spec)
    with tempfile.TemporaryDirectory(prefix="fedsilo-sweep-") as tmp:
        result = run_sweep(spec, code_dir, inputs, key, values, work_root=Path(tmp), metric=metric)
    if plot is not None:
        plot_sweep(result, plot)
    if as_json:
        typer.echo(json.dumps({**result.as_dict(), "plot": str(plot) if plot else None}, indent=2))
        return
    names = sorted({k for r in result.rows for k in r.metrics} - {"num_samples"})
    table = Table(title=f"{result.job}: sweep over {result.key}")
    table.add_column(result.key)
    for name in (*names, "seconds"):
        table.add_column(f"[bold]{name}[/]" if name == result.metric else name, justify="right")
    for row in result.rows:
        values_ = [f"{row.metrics[n]:.4f}" if n in row.metrics else "-" for n in names]
        table.add_row(row.value, *values_, f"{row.seconds:.2f}")
    console.print(table)
    if plot is not None:
        console.print(f"plot of {result.metric} in {plot}")


def register(app: typer.Typer) -> None:
    """Add ``baseline`` and ``sweep`` to the root app."""
    app.command()(baseline)
    app.command()(sweep)
