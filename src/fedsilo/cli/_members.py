"""``fedsilo members``: the federation's members, changed while it runs (its administrator)."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Annotated

import typer

from fedsilo.cli import _hints as hints
from fedsilo.cli import _tables as tables
from fedsilo.cli._common import KitOption, WorkspaceOption, console
from fedsilo.config import Kit, Role, load_kit, open_workspace
from fedsilo.errors import ConfigError

members_app = typer.Typer(
    name="members",
    help="List the federation's members; add, renew, revoke or remove one while it runs.",
    no_args_is_help=True,
)

NameArgument = Annotated[str, typer.Argument(help="The member's name.")]
CertArgument = Annotated[
    Path,
    typer.Argument(
        help="The participant's certificate (PEM), or the reply file fedsilo ca sign wrote."
    ),
]


def admin_kit(workspace: Path, kit: Path | None) -> Kit:
    """``--kit`` (an administrator's), else the workspace's first administrator's kit."""
    if kit is not None:
        loaded = load_kit(kit)
    else:
        ws = open_workspace(workspace)
        admins = ws.federation.admins
        if not admins:
            raise ConfigError(
                f"federation '{ws.federation.name}' has no administrator: name one under "
                "admins: in federation.yaml (and provision), or give an administrator's --kit",
                file=str(ws.root / "federation.yaml"),
            )
        loaded = ws.kit(admins[0])
    # a submitter's kit may be the administrator's too: the orchestrator knows, and says
    if loaded.role not in (Role.ADMIN, Role.SUBMITTER):
        raise ConfigError(
            f"the kit of '{loaded.name}' is a {loaded.role} kit; changing the federation's "
            "members needs its administrator's kit (--kit)",
            file=str(loaded.kit_dir),
        )
    return loaded


def _certificate(path: Path) -> tuple[str, str | None]:
    """The certificate PEM in ``path`` and the compute a reply names, if it is a reply."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the certificate: {exc}", file=str(path)) from None
    if text.lstrip().startswith("-----BEGIN CERTIFICATE-----"):
        return text, None
    from fedsilo.provisioning._enroll import reply_member

    return reply_member(path)


def expiry(stamp: float | None) -> str:
    """When a certificate expires, in words: ``2028-12-01 (727 days)``."""
    if stamp is None:
        return "not yet seen"
    day = dt.datetime.fromtimestamp(stamp, dt.UTC).strftime("%Y-%m-%d")
    left = (stamp - time.time()) / 86400
    return f"{day} (expired)" if left < 0 else f"{day} ({left:.0f} days)"


def list_command(
    workspace: WorkspaceOption = Path("."),
    kit: KitOption = None,
    removed: Annotated[bool, typer.Option("--removed", help="Show removed members too.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every member: its role, compute, who added it, and its certificates' expiry."""
    from fedsilo.api import OrchestratorClient

    with OrchestratorClient(admin_kit(workspace, kit)) as client:
        members = client.members(removed=removed)
    if as_json:
        console.print_json(json.dumps([m.model_dump(mode="json") for m in members]))
        return
    table = tables.table("members", "member", "roles", "added by", "certificates")
    for m in members:
        certs = "\n".join(
            f"{c.fingerprint[:12]} "
            + (f"revoked by {c.revoked_by}" if c.revoked_by else expiry(c.not_after))
            for c in m.certificates
        )
        roles = ", ".join(m.roles) + (f"\ncompute {m.compute}" if m.compute else "")
        added = m.added_by + (f"\nremoved by {m.removed_by}" if m.removed_by else "")
        table.add_row(m.name, roles, added, certs or "none")
    tables.print_table(console, table)


def add(
    certificate: CertArgument,
    compute: Annotated[
        str | None, typer.Option("--compute", help="A silo's compute name (from a reply: kept).")
    ] = None,
    workspace: WorkspaceOption = Path("."),
    kit: KitOption = None,
) -> None:
    """Admit the participant CERTIFICATE names (signed by the federation's CA)."""
    from fedsilo.api import OrchestratorClient

    pem, replied = _certificate(certificate)
    with OrchestratorClient(admin_kit(workspace, kit)) as client:
        member = client.add_member(pem, compute=compute or replied)
    console.print(
        f"added {member.role} '{member.name}' to the federation; it may connect now",
        highlight=False,
    )


def renew(
    name: NameArgument,
    certificate: CertArgument,
    workspace: WorkspaceOption = Path("."),
    kit: KitOption = None,
) -> None:
    """Give member NAME a new certificate; the old one stays valid until it expires or is
    revoked, so the member switches without a pause."""
    from fedsilo.api import OrchestratorClient

    pem, _ = _certificate(certificate)
    with OrchestratorClient(admin_kit(workspace, kit)) as client:
        current = next((m for m in client.members() if m.name == name), None)
        before = {c.fingerprint for c in current.certificates} if current else set()
        member = client.renew_member(name, pem)
    console.print(f"'{member.name}' may connect with its new certificate now", highlight=False)
    old = [
        c.fingerprint
        for c in member.certificates
        if c.revoked_at is None and c.fingerprint in before
    ]
    for fingerprint in old:
        revoke_old = hints.command(
            "members",
            "revoke",
            name,
            "--fingerprint",
            fingerprint[:16],
            *hints.kit_argv(workspace, kit),
        )
        console.print(
            f"once it runs with the new one, revoke the old: {revoke_old}",
            highlight=False,
            soft_wrap=True,
        )


def revoke(
    name: NameArgument,
    fingerprint: Annotated[
        str | None,
        typer.Option("--fingerprint", help="One certificate (its fingerprint or a prefix)."),
    ] = None,
    workspace: WorkspaceOption = Path("."),
    kit: KitOption = None,
) -> None:
    """Revoke member NAME's certificate (all of them without --fingerprint): it is refused
    from its next request on, and a silo's open tasks fail naming it."""
    from fedsilo.api import OrchestratorClient

    with OrchestratorClient(admin_kit(workspace, kit)) as client:
        member = client.revoke_member(name, fingerprint)
    left = [c for c in member.certificates if c.revoked_at is None]
    console.print(f"revoked; '{name}' holds {len(left)} unrevoked certificate(s)", highlight=False)


def remove(
    name: NameArgument,
    workspace: WorkspaceOption = Path("."),
    kit: KitOption = None,
) -> None:
    """Remove member NAME: it is refused from its next request on; a silo's open tasks fail
    naming it. Its records and every other member's stay."""
    from fedsilo.api import OrchestratorClient

    with OrchestratorClient(admin_kit(workspace, kit)) as client:
        member = client.remove_member(name)
    console.print(f"removed {member.role} '{member.name}' from the federation", highlight=False)


members_app.command("list")(list_command)
members_app.command("add")(add)
members_app.command("renew")(renew)
members_app.command("revoke")(revoke)
members_app.command("remove")(remove)


def register(app: typer.Typer) -> None:
    """Add the ``members`` group to the root app."""
    app.add_typer(members_app)
