"""``fedsilo validate`` and ``fedsilo provision``: check a federation spec, make its kits."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fedsilo.config import ORCHESTRATOR_NAME, Role, load_federation
from fedsilo.errors import ConfigError
from fedsilo.provisioning import provision


def validate(
    spec_file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE", help="A federation spec, a job spec or a silo's policy (YAML)."
        ),
    ],
) -> None:
    """Check a federation spec, a job spec or a policy; print what is wrong, with the file,
    line and field."""
    kind = _kind_of(spec_file)
    if kind == "job":
        from fedsilo.jobs import load_job

        job, code_dir = load_job(spec_file)
        count = len(job.silos)
        typer.echo(
            f"ok: job '{job.name}', {job.rounds} round{'' if job.rounds == 1 else 's'} in "
            f"{count} silo{'' if count == 1 else 's'}, code in {code_dir}"
        )
        return
    if kind == "policy":
        from fedsilo.approval import load_policy

        policy = load_policy(spec_file)
        count = len(policy.rules)
        typer.echo(
            f"ok: policy with {count} rule{'' if count == 1 else 's'}, "
            f"{len(policy.trusted_keys)} trusted key(s), default {policy.default.value}"
        )
        return
    spec = load_federation(spec_file)
    count = len(spec.silos)
    typer.echo(f"ok: federation '{spec.name}', {count} silo{'' if count == 1 else 's'}")


def _kind_of(path: Path) -> str:
    """``job``, ``policy`` or ``federation``, from the file's top-level keys.

    A file that cannot be read as a mapping is checked as a federation spec, whose loader
    says what is wrong with it.
    """
    from fedsilo.config._yamlio import load_yaml_mapping

    try:
        data, _ = load_yaml_mapping(path)
    except ConfigError:
        return "federation"
    keys = set(data)
    if keys & {"code", "rounds", "entrypoint", "inputs"}:
        return "job"
    if keys & {"rules", "trusted_keys", "default"} and not keys & {"silos", "orchestrator"}:
        return "policy"
    return "federation"


def provision_command(
    federation: Annotated[Path, typer.Argument(help="The federation spec (YAML).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The workspace folder to create.")],
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace the CA and kits of an existing workspace."),
    ] = False,
) -> None:
    """Create the federation CA and one kit per participant in a new workspace."""
    workspace = provision(federation, out, force=force)
    spec = workspace.federation
    table = Table(title=f"kits of federation '{spec.name}' in {workspace.root}")
    table.add_column("participant")
    table.add_column("role")
    table.add_column("kit")
    rows = [(ORCHESTRATOR_NAME, Role.ORCHESTRATOR.value)]
    rows += [(name, Role.SILO.value) for name in workspace.silo_names]
    rows += [
        (name, "submitter, admin" if name in spec.admins else Role.SUBMITTER.value)
        for name in spec.submitters
    ]
    rows += [(name, Role.ADMIN.value) for name in spec.admin_only]
    for name, roles in rows:
        table.add_row(name, str(roles), str(workspace.kit_dir(name)))
    console = Console()
    console.print(table)
    console.print(
        f"Give each kit only to its participant; the CA key stays in {workspace.root / 'ca'}.",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Add ``validate`` and ``provision`` to the root app."""
    app.command("validate")(validate)
    app.command("provision")(provision_command)
