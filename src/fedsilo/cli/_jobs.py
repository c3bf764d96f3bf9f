"""``fedsilo submit | job | model | sim``: FL jobs from the submitter's side."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from fedsilo.api import JobInfo, JobState, OrchestratorClient, RoundInfo
from fedsilo.cli import _hints as hints
from fedsilo.cli._common import KitOption, WorkspaceOption, caller_kit, console, submitter_kit
from fedsilo.cli._learn import MetricOption, PlotOption, SweepOption, TrackFlag, sweep_job
from fedsilo.cli._tables import Footnotes, print_table, table
from fedsilo.config import Role
from fedsilo.jobs import load_job, load_private_key

job_app = typer.Typer(name="job", help="Look at and control FL jobs.", no_args_is_help=True)
model_app = typer.Typer(name="model", help="Fetch trained models.", no_args_is_help=True)

# the kits that read jobs: each sees those the orchestrator shows it (docs/access.md)
_READERS = (Role.SUBMITTER, Role.ADMIN, Role.SILO)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def progress_bar() -> Progress:
    """The progress display used while waiting for a job."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def follow(client: OrchestratorClient, job_id: str, *, show: bool) -> JobInfo:
    """Wait for a job, with a progress bar of its rounds when ``show``."""
    if not show:
        return client.wait(job_id)
    with progress_bar() as bar:
        task = bar.add_task(job_id, total=None, detail="")

        def update(info: JobInfo) -> None:
            done = sum(1 for r in info.history if r.round >= 1 and r.evaluate)
            acc = info.history[-1].evaluate_aggregate.get("accuracy") if info.history else None
            detail = info.detail or info.state.value
            if acc is not None:
                detail += f"  accuracy {acc:.3f}"
            bar.update(task, total=info.rounds, completed=done, detail=detail)

        return client.wait(job_id, on_update=update)


def submit(
    job_file: Annotated[Path, typer.Argument(help="The job spec (YAML).")],
    workspace: WorkspaceOption = Path("."),
    kit: KitOption = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the job to finish.")] = False,
    sign_with: Annotated[
        Path | None,
        typer.Option("--sign-with", help="Sign with this Ed25519 key (default: the kit's)."),
    ] = None,
    no_sign: Annotated[
        bool, typer.Option("--no-sign", help="Submit unsigned code (most silos refuse it).")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Pack the job's code with a sha256 manifest, sign it, and submit it."""
    spec, code_dir = load_job(job_file)
    submitter = submitter_kit(workspace, kit)
    key = None
    if not no_sign:
        key_file = sign_with or submitter.signing_key_file
        if sign_with is not None or key_file.exists():
            key = load_private_key(key_file)
    with OrchestratorClient(submitter) as client:
        job_id = client.submit(spec, code_dir, signing_key=key)
        if not wait:
            if as_json:
                typer.echo(json.dumps({"id": job_id, "state": "queued"}))
            else:
                hint = hints.job_show(job_id, workspace, kit)
                console.print(
                    Text.assemble("submitted job ", (job_id, "bold"), "; follow it with: ", hint),
                    soft_wrap=True,
                )
            return
        info = follow(client, job_id, show=not as_json)
    _render(info, as_json)
    if info.state is not JobState.SUCCEEDED:
        raise typer.Exit(1)


def _round_table(history: list[RoundInfo], notes: Footnotes) -> Table:
    """Each round's metrics per silo and their aggregate; an empty cell's reason in
    ``notes``."""
    silos = sorted({s for r in history for s in (*r.evaluate, *r.train)})
    metrics = sorted({k for r in history for m in r.evaluate.values() for k in m} - {"num_samples"})
    private = any(r.privacy or any("epsilon" in m for m in r.train.values()) for r in history)
    shown = table(
        "evaluation of the global model after each round",
        "round",
        "silo",
        *metrics,
        "train loss",
        *(("privacy",) if private else ()),
        wrap=("privacy",),
    )
    for column in shown.columns:
        if column.header not in ("silo", "privacy"):
            column.justify = "right"
    for r in history:
        missed = {note.silo for note in r.notes if note.kind == "missed"}
        for silo in silos:
            ev = r.evaluate.get(silo)
            train = r.train.get(silo)
            row = [str(r.round), silo]
            row += [_cell(ev, m, _why_no_metric(silo, ev, missed), notes) for m in metrics]
            row.append(_cell(train, "loss", _why_no_loss(r, silo, train, missed), notes))
            if private:
                row.append(f"ε {train['epsilon']:.3g}" if train and "epsilon" in train else "")
            shown.add_row(*row)
        row = [str(r.round), "[bold]all[/]"]
        for m in metrics:
            value = r.evaluate_aggregate.get(m)
            row.append(
                notes.dash("no silo reported it") if value is None else f"[bold]{_num(value)}[/]"
            )
        row.append("")
        if private:
            row.append(_privacy_note(r.privacy))
        shown.add_row(*row, end_section=True)
    return shown


def _cell(report: dict[str, float] | None, name: str, why: str, notes: Footnotes) -> str:
    value = None if report is None else report.get(name)
    return notes.dash(why) if value is None else _num(value)


def _why_no_metric(silo: str, report: dict[str, float] | None, missed: set[str]) -> str:
    if silo in missed:
        return "the round closed without this silo (its note below says why)"
    if report is None:
        return "no evaluation from this silo in this round (not sent yet, or not in it)"
    return "the silo's evaluate() returned no such metric"


def _why_no_loss(r: RoundInfo, silo: str, report: dict[str, float] | None, missed: set[str]) -> str:
    if r.round == 0:
        return "round 0 evaluates the initial model: nothing is trained"
    if silo in missed:
        return "the round closed without this silo (its note below says why)"
    if report is None:
        return "no training report from this silo in this round (not sent yet, or not in it)"
    return "the silo's train() returned no loss"


def _privacy_note(privacy: dict[str, float]) -> str:
    """The federation's privacy in a round: central epsilon, silos in the secure sum."""
    parts = []
    if "central_epsilon" in privacy:
        parts.append(f"central ε {privacy['central_epsilon']:.3g}")
    if "secure_aggregation_silos" in privacy:
        dropped = int(privacy.get("secure_aggregation_dropped", 0))
        parts.append(
            f"secure sum of {int(privacy['secure_aggregation_silos'])}"
            + (f", {dropped} dropped" if dropped else "")
        )
    return "; ".join(parts)


def _num(value: float) -> str:
    """A metric for a table: a count as a whole number, anything else to 4 decimals."""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4f}"


def _render(info: JobInfo, as_json: bool) -> None:
    if as_json:
        typer.echo(info.model_dump_json(indent=2))
        return
    console.print(
        f"job [bold]{info.id}[/] ({info.name}) by {info.submitter}: "
        f"[bold]{info.state.value}[/], round {info.current_round}/{info.rounds}, "
        f"silos {', '.join(info.silos)}"
    )
    # texts of silos and the orchestrator are printed as they are, never read as markup
    if info.error:
        console.print(Text.assemble(("error: ", "red"), info.error), highlight=False)
    elif info.detail and not info.state.finished:
        console.print(Text(info.detail))
    if info.outputs:
        leaving = ", ".join(
            f"{name} ({level or 'as its inputs'})" for name, level in info.outputs.items()
        )
        console.print(f"outputs {leaving}", highlight=False)
    if info.shared_with:
        readers = "every submitter" if "*" in info.shared_with else ", ".join(info.shared_with)
        console.print(f"shared with {readers}", highlight=False)
    if info.view == "summary":
        console.print(
            "metric values are the owner's and its readers' to see; this kit sees who took "
            "part in each round",
            highlight=False,
        )
        for r in info.history:
            took_part = sorted(set(r.train) | set(r.evaluate))
            console.print(
                f"round {r.round}: {', '.join(took_part) or 'no silo reported yet'}",
                highlight=False,
            )
    elif info.history:
        notes = Footnotes()
        print_table(console, _round_table(info.history, notes), notes)
    for r in info.history:  # what the orchestrator noticed of the silos' updates
        for note in r.notes:
            console.print(
                Text.assemble((f"round {r.round}, {note.kind}: ", "yellow"), note.text),
                highlight=False,
            )


def show(
    job_id: Annotated[str, typer.Argument(help="The job's id, as submit printed it.")],
    workspace: WorkspaceOption = Path("."),
    kit: KitOption = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the job to finish.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """A job's state and its per-round, per-silo metrics (the owner's and its readers' view;
    the federation's administrator and the job's silos see it without metric values)."""
    with OrchestratorClient(caller_kit(workspace, kit, *_READERS)) as client:
        info = follow(client, job_id, show=not as_json) if wait else client.job(job_id)
    _render(info, as_json)


def list_jobs(
    workspace: WorkspaceOption = Path("."),
    kit: KitOption = None,
    as_json: JsonFlag = False,
) -> None:
    """The recent jobs this kit may see: a submitter its own and those shared with it, the
    federation's administrator every job, a silo the jobs that run in it."""
    with OrchestratorClient(caller_kit(workspace, kit, *_READERS)) as client:
        jobs = client.jobs()
    if as_json:
        typer.echo(json.dumps([j.model_dump(mode="json", exclude={"history"}) for j in jobs]))
        return
    if not jobs:
        console.print("no jobs this kit may see (a submitter sees its own and those shared)")
        return
    console.print(_jobs_table(jobs))


def _jobs_table(jobs: list[JobInfo]) -> Table:
    """One job a row; its id whole (the name is its first part), its error wrapped."""
    shown = table("jobs", "job", "owner", "state", "round", "error", wrap=("error",))
    for j in jobs:
        shown.add_row(
            j.id, j.submitter, j.state.value, f"{j.current_round}/{j.rounds}", Text(j.error or "")
        )
    return shown


def cancel(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    workspace: WorkspaceOption = Path("."),
    kit: KitOption = None,
) -> None:
    """Cancel a running job (its owner, or the federation's administrator)."""
    with OrchestratorClient(caller_kit(workspace, kit, Role.SUBMITTER, Role.ADMIN)) as client:
        cancelled = client.cancel(job_id)
    console.print(f"job {job_id}: " + ("cancelled" if cancelled else "was not running"))


def model_get(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write it.")] = Path(
        "model.safetensors"
    ),
    workspace: WorkspaceOption = Path("."),
    kit: KitOption = None,
) -> None:
    """Fetch a finished job's final global model as a safetensors file."""
    with OrchestratorClient(submitter_kit(workspace, kit)) as client:
        digest = client.download_model(job_id, output)
    console.print(f"wrote {output} (sha256 {digest})")


def sim(
    job_file: Annotated[Path, typer.Argument(help="The job spec (YAML).")],
    workspace: WorkspaceOption = Path("."),
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write the final model here.")
    ] = None,
    sweep: SweepOption = None,
    metric: MetricOption = None,
    plot: PlotOption = None,
    track: TrackFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Run the job in this one process, no servers: each silo's data from its catalog.

    Each silo's torch runs on the threads its compute would grant the job under
    `fedsilo up`, so the model equals the local federation's.

    With --sweep KEY=V1,V2,... it runs once per value and writes a table and a PNG plot
    of the final metric against the value.
    """
    from fedsilo.pipelines import simulate, workspace_inputs, workspace_threads
    from fedsilo.tensors import save_parameters
    from fedsilo.tracking import Tracker, track_simulation

    if sweep is not None:
        if output is not None:
            raise typer.BadParameter("a sweep trains several models; drop -o", param_hint="-o")
        sweep_job(
            job_file, workspace, sweep, metric=metric, plot=plot, as_json=as_json, track=track
        )
        return
    for given, name in ((metric, "--metric"), (plot, "--plot")):
        if given is not None:
            raise typer.BadParameter("only used with --sweep KEY=V1,V2,...", param_hint=name)
    spec, code_dir = load_job(job_file)
    inputs = workspace_inputs(workspace, spec)
    with tempfile.TemporaryDirectory(prefix="fedsilo-sim-") as tmp:

        def on_round(info: RoundInfo) -> None:
            if not as_json:
                agg = ", ".join(
                    f"{k} {v:.4f}" for k, v in info.evaluate_aggregate.items() if k != "num_samples"
                )
                console.print(f"round {info.round}: {agg}")

        result = simulate(
            spec,
            code_dir,
            inputs,
            work_root=Path(tmp),
            on_round=on_round,
            threads=workspace_threads(workspace, spec),
        )
    if output is not None:
        save_parameters(result.parameters, output)
    tracked = track_simulation(Tracker.for_workspace(workspace), spec, result) if track else None
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "rounds": [r.model_dump(mode="json") for r in result.history],
                    "final": result.final_metrics,
                    "seconds": result.seconds,
                    "tracked": None if tracked is None else tracked.job_id,
                },
                indent=2,
            )
        )
    else:
        notes = Footnotes()
        print_table(console, _round_table(result.history, notes), notes)
        console.print(
            f"simulated {spec.rounds} rounds over {len(spec.silos)} silos "
            f"in {result.seconds:.1f} s" + (f"; model in {output}" if output else "")
        )
        if tracked is not None:
            console.print(
                f"tracked in MLflow as job {tracked.job_id}; see it with: "
                + hints.tracking_ui(workspace),
                highlight=False,
                soft_wrap=True,
            )


job_app.command("show")(show)
job_app.command("list")(list_jobs)
job_app.command("cancel")(cancel)
model_app.command("get")(model_get)


def register(app: typer.Typer) -> None:
    """Add the job commands to the root app."""
    app.command()(submit)
    app.command()(sim)
    app.add_typer(job_app)
    app.add_typer(model_app)
