"""``fedsilo enroll``, ``fedsilo ca`` and ``fedsilo kit``: join a federation with keys made
on one's own machine, sign requests with the federation's CA, move a kit's storage."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fedsilo.cli import _hints as hints
from fedsilo.cli._common import WorkspaceOption, console
from fedsilo.config import Role, open_workspace
from fedsilo.errors import ConfigError
from fedsilo.provisioning._casign import issued, review_request, sign_request
from fedsilo.provisioning._enroll import finish_enrollment, make_request, set_storage

enroll_app = typer.Typer(
    name="enroll",
    help="Join a federation with keys made on this machine: request, then finish the kit.",
    no_args_is_help=True,
)
ca_app = typer.Typer(
    name="ca",
    help="The federation's CA: sign participants' enrollment requests.",
    no_args_is_help=True,
)
kit_app = typer.Typer(name="kit", help="Change a kit on its own machine.", no_args_is_help=True)

ToOption = Annotated[
    Path, typer.Option("--to", help="The folder of this participant's keys and kit.")
]


def request(
    federation: Annotated[str, typer.Option("--federation", help="The federation's name.")],
    name: Annotated[str, typer.Option("--name", help="This participant's name.")],
    role: Annotated[Role, typer.Option("--role", help="What this participant is.")],
    to: ToOption,
    silo_spec: Annotated[
        Path | None,
        typer.Option(
            "--silo-spec",
            help="A silo's spec: one entry of silos: in federation.yaml's format (storage "
            "optional).",
        ),
    ] = None,
    compute: Annotated[
        str | None, typer.Option("--compute", help="A silo's compute (without --silo-spec).")
    ] = None,
    approval_host: Annotated[
        str | None,
        typer.Option("--approval-host", help="Where a silo's approval endpoint listens."),
    ] = None,
    approval_port: Annotated[
        int | None,
        typer.Option("--approval-port", help="Its port (default: the spec's, else 8444)."),
    ] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="The orchestrator's host, for its certificate.")
    ] = None,
    ca: Annotated[
        Path | None,
        typer.Option("--ca", help="The federation's CA certificate, if you have it: pins it."),
    ] = None,
) -> None:
    """Create this participant's private keys in --to and the request to send to the
    federation's administrator."""
    made = make_request(
        to,
        federation=federation,
        name=name,
        role=role,
        silo_spec=silo_spec,
        compute=compute,
        approval_host=approval_host,
        approval_port=approval_port,
        host=host,
        ca_file=ca,
    )
    keys = ", ".join(p.name for p in made.key_files)
    console.print(
        f"wrote the private keys {keys} in {to.absolute()} (mode 0600): they stay on this machine",
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        f"send the request to the federation's administrator: {made.request_file}",
        highlight=False,
        soft_wrap=True,
    )
    console.print("key fingerprints (sha256), for the administrator to compare before signing:")
    for part, fingerprint in made.key_fingerprints.items():
        console.print(f"  {part:<9} {fingerprint}", highlight=False)
    if made.request.signing_key:
        console.print(f"  code signing key: {made.request.signing_key}", highlight=False)
    storage = ("--storage", "PATH") if role in (Role.SILO, Role.ORCHESTRATOR) else ()
    finish = hints.command("enroll", "finish", "REPLY", "--to", to, *storage)
    console.print(f"then, with the reply: {finish}", highlight=False, soft_wrap=True)


def finish(
    reply: Annotated[Path, typer.Argument(help="The reply file fedsilo ca sign wrote.")],
    to: ToOption,
    storage: Annotated[
        Path | None,
        typer.Option(
            "--storage", help="This silo's (or orchestrator's) storage root on this machine."
        ),
    ] = None,
    policy: Annotated[
        Path | None, typer.Option("--policy", help="A silo's approval policy file.")
    ] = None,
) -> None:
    """Check the reply's certificates against this folder's keys and the CA, and write the
    kit in --to."""
    kit = finish_enrollment(reply, to, storage=storage, policy=policy)
    where = f", storage {kit.storage_root}" if kit.storage_root else ""
    console.print(
        f"kit of {kit.role} '{kit.name}' of federation '{kit.federation}' in {kit.kit_dir}"
        f"{where}; orchestrator {kit.orchestrator_url}",
        highlight=False,
        soft_wrap=True,
    )


def sign(
    request_file: Annotated[
        Path, typer.Argument(metavar="REQUEST", help="A participant's request file.")
    ],
    workspace: WorkspaceOption = Path("."),
    yes: Annotated[
        bool, typer.Option("--yes", help="Sign without asking (you checked the request).")
    ] = False,
    to: Annotated[
        Path | None,
        typer.Option("--to", help="Where to write the reply (default: NAME.reply.yaml beside)."),
    ] = None,
) -> None:
    """Show who asks for which role, then sign the request with the workspace's CA and
    write the reply to send back."""
    review = review_request(request_file, workspace)
    asked = review.request
    renewing = review.renewing
    kind = "renewal" if renewing else "enrollment"
    table = Table(title=f"{kind} request {request_file}", show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    if renewing is not None:
        table.add_row("renewal of", f"{asked.role} '{asked.name}' ({renewing.known_as})")
        table.add_row("current certificate", f"valid until {renewing.not_after:%Y-%m-%d}")
        for part, fingerprint in renewing.fingerprints.items():
            table.add_row(f"{part} old cert sha256", fingerprint)
    table.add_row("participant", asked.name)
    table.add_row("role", asked.role.value)
    table.add_row("federation", asked.federation)
    if asked.compute:
        table.add_row("compute", ", ".join((asked.compute, *asked.computes)))
        table.add_row("approval endpoint", f"{asked.approval_host}:{asked.approval_port}")
    for part, fingerprint in review.key_fingerprints.items():
        table.add_row(f"{part} key sha256", fingerprint)
    for part, names in review.server_names.items():
        table.add_row(f"{part} server names", ", ".join(names))
    if asked.signing_key:
        table.add_row("code signing key", asked.signing_key)
    console.print(table)
    if not yes:
        if not sys.stdin.isatty():
            raise ConfigError(
                "not signed: there is no terminal to confirm on; check the request with its "
                "participant (the key fingerprints above), then sign with --yes",
                file=str(request_file),
            )
        what = "the renewal of " if renewing else ""
        if not typer.confirm(f"sign {what}{asked.role} '{asked.name}'?", default=False):
            console.print("not signed")
            raise typer.Exit(1)
    signed = sign_request(request_file, workspace, to=to)
    console.print(
        f"signed; send the reply to '{asked.name}': {signed.reply_file.absolute()}",
        highlight=False,
        soft_wrap=True,
    )
    if asked.role is not Role.ORCHESTRATOR:
        ws = open_workspace(workspace)
        admins = ws.federation.admins
        admin_kit = ws.kit_dir(admins[0]) if admins else "ADMIN_KIT"
        if renewing is None:
            add = hints.command("members", "add", signed.reply_file, "--kit", admin_kit)
            console.print(
                f"to admit it while the federation runs: {add}", highlight=False, soft_wrap=True
            )
        else:
            renew = hints.command(
                "members", "renew", asked.name, signed.reply_file, "--kit", admin_kit
            )
            console.print(
                f"before '{asked.name}' installs the reply, give the orchestrator its new "
                f"certificate: {renew}",
                highlight=False,
                soft_wrap=True,
            )
    if asked.signing_key:
        console.print(
            "silos enrolled from now on trust its code; a silo already running does once "
            "its policy.yaml lists, under trusted_keys:\n"
            f'  "{asked.name}": "{asked.signing_key}"',
            highlight=False,
            soft_wrap=True,
        )


def issued_command(
    workspace: WorkspaceOption = Path("."),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every enrollment the workspace's CA has signed."""
    entries = issued(open_workspace(workspace))
    if as_json:
        console.print_json(json.dumps([e.model_dump(mode="json") for e in entries]))
        return
    table = Table(title="enrollments signed")
    columns = ("participant", "role", "signed", "valid until", "certificate sha256", "renews")
    for column in columns:
        table.add_column(column)
    for e in entries:
        table.add_row(
            e.name,
            e.role.value,
            f"{e.signed_at:%Y-%m-%d}",
            f"{e.not_after:%Y-%m-%d}",
            e.fingerprint[:12],
            e.renews[:12] if e.renews else "",
        )
    console.print(table if entries else "no enrollment signed yet")


def set_storage_command(
    storage: Annotated[Path, typer.Argument(metavar="PATH", help="The new storage root.")],
    kit: Annotated[
        Path, typer.Option("--kit", help="The kit folder (a silo's or the orchestrator's).")
    ],
) -> None:
    """Set the kit's storage root to PATH on this machine (created mode 0700). Data in the
    old root stays there: move it first if the new root should hold it."""
    moved, old = set_storage(kit, storage)
    console.print(
        f"storage root of '{moved.name}': {moved.storage_root} (was {old})",
        highlight=False,
        soft_wrap=True,
    )


enroll_app.command("request")(request)
enroll_app.command("finish")(finish)
ca_app.command("sign")(sign)
ca_app.command("issued")(issued_command)
kit_app.command("set-storage")(set_storage_command)


def register(app: typer.Typer) -> None:
    """Add the ``enroll``, ``ca`` and ``kit`` groups to the root app."""
    for group in (enroll_app, ca_app, kit_app):
        app.add_typer(group)
