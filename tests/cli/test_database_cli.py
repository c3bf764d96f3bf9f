"""``fedsilo orchestrator db status | upgrade`` on an orchestrator kit's own database."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from fedsilo.cli._app import _register, app
from fedsilo.config import open_workspace
from fedsilo.errors import ConfigError
from fedsilo.orchestrator._migrations import VERSION_TABLE, revisions
from fedsilo.provisioning import provision
from tests.integration.conftest import write_federation
from tests.orchestrator.test_migrations import _previous_release

HEAD = revisions()[-1][0]


def test_status_then_upgrade_of_a_previous_release_database(tmp_path: Path) -> None:
    root = tmp_path / "fed"
    provision(write_federation(tmp_path, "fed"), root)
    kit = open_workspace(root).kit("orchestrator")
    url = f"sqlite:///{kit.storage_path / 'orchestrator.db'}"
    kit.storage_path.mkdir(parents=True, exist_ok=True)
    _previous_release(url)
    _register()
    runner = CliRunner()
    where = ["--kit", str(kit.kit_dir)]

    done = runner.invoke(app, ["orchestrator", "db", "status", *where, "--json"])
    assert done.exit_code == 0, done.output
    found = json.loads(done.output)
    assert (found["state"], found["revision"], found["head"]) == ("unrecorded", "0001", HEAD)
    after_first = [revision for revision, _ in revisions()[1:]]
    assert [change["revision"] for change in found["pending"]] == after_first

    done = runner.invoke(app, ["orchestrator", "db", "upgrade", *where], terminal_width=200)
    assert done.exit_code == 0, done.output
    assert f"upgraded in place from revision 0001 to {HEAD}" in done.output

    done = runner.invoke(app, ["orchestrator", "db", "status", *where], terminal_width=200)
    assert done.exit_code == 0 and f"schema: current, revision {HEAD}" in done.output
    done = runner.invoke(app, ["orchestrator", "db", "upgrade", *where], terminal_width=200)
    assert "nothing to do" in done.output

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '0099'"))
    engine.dispose()
    for command in ("status", "upgrade"):
        done = runner.invoke(app, ["orchestrator", "db", command, *where])
        assert isinstance(done.exception, ConfigError), done.output
        assert "newer than this fedsilo" in str(done.exception)
