"""``fedsilo approval``: run a silo's approval endpoint, and decide the jobs it holds."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fedsilo.approval import (
    AdminClient,
    ApprovalAnswer,
    ApprovalRequest,
    OutputRef,
    QueueEntry,
    QueueState,
)
from fedsilo.cli import _tables as tables
from fedsilo.cli._common import (
    SiloKitOption,
    SiloOption,
    WorkspaceOption,
    console,
    silo_kit,
)
from fedsilo.config import format_bytes
from fedsilo.jobs import SHARE_WITH_ALL

approval_app = typer.Typer(
    name="approval",
    help="Run a silo's approval endpoint; list, approve or reject the jobs it holds.",
    no_args_is_help=True,
)

RequestArgument = Annotated[
    str,
    typer.Argument(help="The request id, or its first characters (see `approval list`)."),
]
ReasonOption = Annotated[
    str | None, typer.Option("--reason", help="Why; recorded in the audit log and the answer.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]

SHOWN_TENSORS = 40
SHOWN_FILES = 200


def _when(stamp: float | None, missing: str = "not yet") -> str:
    if stamp is None:
        return missing
    return dt.datetime.fromtimestamp(stamp).isoformat(sep=" ", timespec="seconds")


def _decided(entry: QueueEntry) -> str:
    if entry.decided_by is None:
        return "not yet: held for a person"
    return f"by {entry.decided_by} at {_when(entry.decided_at)}"


def _print_answer(answer: ApprovalAnswer, as_json: bool) -> None:
    if as_json:
        typer.echo(answer.model_dump_json(indent=2))
        return
    until = f" until {_when(answer.expires_at)}" if answer.expires_at is not None else ""
    typer.echo(
        f"request {answer.request_id}: {answer.decision.value} by {answer.decided_by}{until} "
        f"(rule '{answer.rule}'): {answer.reason}"
    )


def serve_command(
    kit: Annotated[Path, typer.Option("--kit", help="The silo's kit folder.")],
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn's log level.")] = "info",
) -> None:
    """Serve the silo's approval endpoint (HTTPS, mutual TLS) until interrupted."""
    from fedsilo.approval._server import serve

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    serve(kit, log_level=log_level)


def list_command(
    silo: SiloOption = None,
    workspace: WorkspaceOption = Path("."),
    kit: SiloKitOption = None,
    every: Annotated[
        bool, typer.Option("--all", help="Every request, not only the held ones.")
    ] = False,
    wide: tables.WideFlag = False,
    as_json: JsonOption = False,
) -> None:
    """List the jobs a silo holds for a person (with --all: decided ones too).

    Request ids show their first 12 characters, which approval show, approve and reject
    take as they are (--wide prints them whole)."""
    kit_of_silo = silo_kit(silo, workspace, kit)
    with AdminClient(kit_of_silo) as client:
        entries = client.list(None if every else QueueState.HELD)
    if as_json:
        typer.echo(json.dumps([e.model_dump(mode="json") for e in entries], indent=2))
        return
    title = "requests" if every else "requests held for a person"
    console.print(_requests_table(f"{title} in silo '{kit_of_silo.name}'", entries, wide))


def _requests_table(title: str, entries: list[QueueEntry], wide: bool) -> Table:
    """One request a row: its id cut to a prefix the commands take (whole with ``wide``)."""
    shown = tables.table(
        title, "request", "job", "author", "state", "rule", "asked", "decided by", wrap=("rule",)
    )
    for e in entries:
        shown.add_row(
            tables.short(e.request_id, wide),
            e.job_id,
            e.author,
            e.state.value,
            e.rule,
            _when(e.created_at),
            e.decided_by or "nobody yet",
        )
    return shown


def show(
    request_id: RequestArgument,
    silo: SiloOption = None,
    workspace: WorkspaceOption = Path("."),
    kit: SiloKitOption = None,
    wide: Annotated[
        bool, typer.Option("--wide", help="Every file's sha256 whole, however wide the lines.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Show one request: the job, its code (files, and the diff against the code this silo
    approved last for a job of that name), its inputs and outputs (what and how big)."""
    kit_of_silo = silo_kit(silo, workspace, kit)
    with AdminClient(kit_of_silo) as client:
        entry = client.show(request_id)
    if as_json:
        typer.echo(entry.model_dump_json(indent=2))
        return
    _print_entry(entry, wide)


def _print_entry(entry: QueueEntry, wide: bool = False) -> None:
    r = entry.request
    signed = f"{r.signing.value}" + (f" (key {r.signing_key})" if r.signing_key else "")
    lines = [
        f"request      {entry.request_id}",
        f"state        {entry.state.value} (rule '{entry.rule}'): {entry.reason}",
        f"decided      {_decided(entry)}",
        f"expires      {_when(entry.expires_at, 'never')}",
        f"job          {r.job_name} ({r.job_id}) by {r.author}",
        f"results to   {_readers(r)}",
        f"code         {signed}",
        f"bundle       sha256 {tables.short(r.bundle_digest, wide)}",
        f"compute      {r.compute} of silo {r.silo}",
    ]
    if len(set(r.computes.values())) > 1:
        steps = ", ".join(f"{step} on {name}" for step, name in sorted(r.computes.items()))
        lines.append(f"steps        {steps}")
    for step, granted in sorted(r.resources.items()):
        lines.append(f"resources    {step}: {granted.describe()} on {granted.compute}")
    for i in r.inputs:
        level = i.classification.value if i.classification else "unknown"
        size = f", {format_bytes(i.bytes)}" if i.bytes is not None else ""
        lines.append(f"input        {i.storage}:{i.dataset} ({level}{size})")
    if r.rounds:
        lines.append(f"rounds       {r.rounds}")
    for o in r.outputs:
        lines.extend(_output_lines(o, r))
    for d in r.declassifications:
        lines.append(f"declassify   {d.output}: {d.from_.value} -> {d.to.value}")
    if r.privacy.target_epsilon is not None:
        lines.append(f"privacy      epsilon {r.privacy.target_epsilon:g}")
    if r.privacy.secure_aggregation:
        lines.append("privacy      secure aggregation: the update leaves masked")
    lines.extend(_code_lines(r, wide))
    typer.echo("\n".join(lines))


def _readers(r: ApprovalRequest) -> str:
    """Who may read the job's results and model at the orchestrator."""
    if SHARE_WITH_ALL in r.readers:
        return f"{r.author} and every submitter of the federation"
    if not r.readers:
        return f"{r.author} only"
    return ", ".join((r.author, *r.readers))


def _output_lines(o: OutputRef, r: ApprovalRequest) -> list[str]:
    """One output: where it goes and as what, then what it is and how big."""
    lines = [f"output       {o.name} -> {o.destination} ({o.classification.value})"]
    pad = " " * 13
    if o.name == "model":
        if o.model is None:
            lines.append(
                f"{pad}model parameters, not declared: the bundle has no MODEL.json, and "
                "the silo will send no parameters"
            )
            return lines
        m = o.model
        uploads = f"; it leaves {r.rounds + 1} times (built, then each round)" if r.rounds else ""
        lines.append(
            f"{pad}model parameters: {m.parameters:,} values in {len(m.tensors)} tensors, "
            f"{format_bytes(m.bytes)} an upload{uploads}"
        )
        width = max((len(t.name) for t in m.tensors[:SHOWN_TENSORS]), default=0)
        for t in m.tensors[:SHOWN_TENSORS]:
            lines.append(f"{pad}  {t.name:<{width}}  {t.describe():<24} {format_bytes(t.bytes)}")
        if len(m.tensors) > SHOWN_TENSORS:
            lines.append(
                f"{pad}  ... and {len(m.tensors) - SHOWN_TENSORS} more tensors "
                "(--json, or MODEL.json in the code, lists every one)"
            )
    elif o.name == "metrics":
        size = f", at most {format_bytes(o.bytes)} a report" if o.bytes is not None else ""
        named = ", ".join(o.metric_names or ()) or "(none declared)"
        lines.append(f"{pad}metrics named: {named}, with num_samples and epsilon{size}")
    elif o.bytes is not None:
        lines.append(f"{pad}{format_bytes(o.bytes)} an upload")
    return lines


def _code_lines(r: ApprovalRequest, wide: bool) -> list[str]:
    """Every file of the code, then how it differs from the code approved last."""
    lines: list[str] = []
    total = sum(f.bytes for f in r.files)
    count = len(r.files) + r.files_not_listed
    unlisted = f" (and {r.files_not_listed} files not listed)" if r.files_not_listed else ""
    lines.append(f"files        {len(r.files)} files, {format_bytes(total)}{unlisted}")
    if r.files and not wide:
        lines.append("  (sha256 of each: its first 12 digits; --wide or --json: whole)")
    for f in r.files[:SHOWN_FILES]:
        lines.append(f"  {format_bytes(f.bytes):>10}  {tables.short(f.sha256, wide)}  {f.path}")
    hidden = count - min(len(r.files), SHOWN_FILES)
    if hidden:
        lines.append(f"  ... and {hidden} more files (--json lists {len(r.files)})")
    c = r.code_change
    if c.first:
        lines.append(
            f"changes      silo {r.silo} approved no job named '{r.job_name}' before: "
            "every file is new"
        )
    elif not c.changed:
        lines.append(
            f"changes      none: the code is the code approved last for '{r.job_name}' "
            f"(job {c.previous_job_id})"
        )
    else:
        lines.append(
            f"changes      against the code approved last for '{r.job_name}' (job "
            f"{c.previous_job_id}):"
        )
        for word, paths in (("added", c.added), ("removed", c.removed), ("changed", c.modified)):
            if paths:
                lines.append(f"  {word:<8} {', '.join(paths)}")
    if c.diff:
        lines.append("diff")
        lines.append(c.diff.rstrip("\n"))
    return lines


def approve(
    request_id: RequestArgument,
    silo: SiloOption = None,
    workspace: WorkspaceOption = Path("."),
    kit: SiloKitOption = None,
    reason: ReasonOption = None,
    expires_in: Annotated[
        float | None,
        typer.Option("--expires-in", min=0.0, help="Hours after which the approval lapses."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Approve a held job, as the silo's administrator."""
    kit_of_silo = silo_kit(silo, workspace, kit)
    with AdminClient(kit_of_silo) as client:
        answer = client.approve(request_id, reason=reason, expires_in_hours=expires_in)
    _print_answer(answer, as_json)


def reject(
    request_id: RequestArgument,
    silo: SiloOption = None,
    workspace: WorkspaceOption = Path("."),
    kit: SiloKitOption = None,
    reason: ReasonOption = None,
    as_json: JsonOption = False,
) -> None:
    """Reject a held job, as the silo's administrator."""
    kit_of_silo = silo_kit(silo, workspace, kit)
    with AdminClient(kit_of_silo) as client:
        answer = client.reject(request_id, reason=reason)
    _print_answer(answer, as_json)


approval_app.command("serve")(serve_command)
approval_app.command("list")(list_command)
approval_app.command("show")(show)
approval_app.command("approve")(approve)
approval_app.command("reject")(reject)


def register(app: typer.Typer) -> None:
    """Add the ``approval`` command group to the root app."""
    app.add_typer(approval_app, name="approval")
