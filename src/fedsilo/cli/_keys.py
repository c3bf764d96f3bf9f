"""``fedsilo keys``: Ed25519 code-signing keys."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedsilo.cli._common import console
from fedsilo.jobs import (
    key_id,
    load_private_key,
    new_signing_key,
    parse_public_key,
    public_key_line,
)

keys_app = typer.Typer(name="keys", help="Create and show code-signing keys.", no_args_is_help=True)


def new(
    path: Annotated[Path, typer.Argument(help="Where to write the private key (0600).")],
    comment: Annotated[str, typer.Option(help="A note stored in the public key line.")] = "",
) -> None:
    """Create an Ed25519 key pair: PATH (private) and PATH.pub (to put in silo policies)."""
    line = new_signing_key(path, comment=comment)
    console.print(f"wrote {path} (private, 0600) and {path}.pub; key id {key_id(line.split()[1])}")
    console.print("a silo trusts it once its policy lists it under trusted_keys:")
    console.print(f"  {line}", highlight=False, soft_wrap=True)


def show(path: Annotated[Path, typer.Argument(help="A private key or a .pub file.")]) -> None:
    """Print the public key line and key id of a key file."""
    text = path.read_text(errors="replace")
    if "PRIVATE KEY" in text:
        line = public_key_line(load_private_key(path).public_key())
    else:
        line = text.strip()
    console.print(
        f"{line}\nkey id {key_id(parse_public_key(line, where=str(path)))}",
        highlight=False,
        soft_wrap=True,
    )


keys_app.command("new")(new)
keys_app.command("show")(show)


def register(app: typer.Typer) -> None:
    """Add the ``keys`` group to the root app."""
    app.add_typer(keys_app)
