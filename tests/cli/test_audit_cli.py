"""``fedsilo audit show`` and ``fedsilo audit verify`` on a provisioned workspace."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from fedsilo.audit import AuditLog, audit_path
from fedsilo.cli import _audit
from fedsilo.config import Workspace
from fedsilo.errors import ConfigError
from fedsilo.provisioning import provision

SPEC = """\
name: demo
orchestrator:
  storage: {root: storage/orchestrator}
  compute: {name: orchestrator-cpu}
silos:
  - name: silo-a
    storage: {root: storage/silo-a}
    compute: {name: silo-a-cpu}
  - name: silo-b
    storage: {root: storage/silo-b}
    compute: {name: silo-b-cpu}
submitters: [submitter]
"""


@pytest.fixture
def app() -> typer.Typer:
    root = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
    _audit.register(root)
    return root


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    spec = tmp_path / "federation.yaml"
    spec.write_text(SPEC)
    ws = provision(spec, tmp_path / "ws")
    silo = AuditLog(audit_path(ws.kit("silo-a").storage_path), actor="silo-a")
    for i in range(8):
        silo.append("job.offered", job_id=f"job-{i}", author="submitter")
    silo.append("job.refused", job_id="job-8", rule="no-network", reason="[bold]wants net[/]")
    orchestrator = AuditLog(audit_path(ws.kit("orchestrator").storage_path), actor="orchestrator")
    orchestrator.append("job.submitted", job_id="job-0", submitter="submitter")
    return ws


def _invoke(app: typer.Typer, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", **(env or {})})


def _silo_log(ws: Workspace, name: str = "silo-a") -> Path:
    return audit_path(ws.kit(name).storage_path)


def test_show_prints_a_table_and_filters(app: typer.Typer, workspace: Workspace) -> None:
    ws = str(workspace.root)
    table = _invoke(app, "audit", "show", "--silo", "silo-a", "-w", ws)
    assert table.exit_code == 0, table.output
    row = next(line for line in table.output.splitlines() if "job.refused" in line)
    assert " 9 " in row and "silo-a" in row
    assert "rule=no-network" in row and "reason=[bold]wants net[/]" in row

    refused = _invoke(app, "audit", "show", "--silo", "silo-a", "-w", ws, "--event",
                      "job.refused", "--json")  # fmt: skip
    assert refused.exit_code == 0, refused.output
    entries = [json.loads(line) for line in refused.output.splitlines()]
    assert [(e["seq"], e["event"], e["data"]["job_id"]) for e in entries] == [
        (9, "job.refused", "job-8")
    ]

    last = _invoke(app, "audit", "show", "--silo", "silo-a", "--tail", "3", "--json",
                   env={"FEDSILO_WORKSPACE": ws})  # fmt: skip
    assert [json.loads(line)["seq"] for line in last.output.splitlines()] == [7, 8, 9]

    orch = _invoke(app, "audit", "show", "--orchestrator", "-w", ws, "--json")
    assert [json.loads(line)["event"] for line in orch.output.splitlines()] == ["job.submitted"]

    empty = _invoke(app, "audit", "show", "--silo", "silo-b", "-w", ws, "--json")
    assert empty.exit_code == 0 and empty.output == ""


def test_verify_reports_every_participant(app: typer.Typer, workspace: Workspace) -> None:
    result = _invoke(app, "audit", "verify", "-w", str(workspace.root))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "orchestrator: ok: 1 entries, chain intact",
        "silo-a: ok: 9 entries, chain intact",
        "silo-b: ok: 0 entries, chain intact",
    ]
    one = _invoke(app, "audit", "verify", "--silo", "silo-a", "-w", str(workspace.root))
    assert one.exit_code == 0 and one.output.strip() == "ok: 9 entries, chain intact"


def test_verify_names_an_edited_line_and_exits_1(app: typer.Typer, workspace: Workspace) -> None:
    log = _silo_log(workspace)
    lines = log.read_bytes().splitlines(keepends=True)
    lines[6] = lines[6].replace(b'"job-6"', b'"job-x"')
    log.write_bytes(b"".join(lines))

    one = _invoke(app, "audit", "verify", "--silo", "silo-a", "-w", str(workspace.root))
    assert one.exit_code == 1
    assert one.output.strip() == f"TAMPERED: line 7 was edited ({log})"

    every = _invoke(app, "audit", "verify", "-w", str(workspace.root))
    assert every.exit_code == 1
    assert "silo-a: TAMPERED: line 7 was edited" in every.output
    assert "silo-b: ok: 0 entries, chain intact" in every.output

    as_json = _invoke(app, "audit", "verify", "-w", str(workspace.root), "--json")
    assert as_json.exit_code == 1
    rows = {row["participant"]: row for row in json.loads(as_json.output)}
    assert rows["silo-a"]["first_bad_line"] == 7 and rows["silo-a"]["ok"] is False
    assert rows["orchestrator"]["ok"] is True and rows["orchestrator"]["entries"] == 1


def test_verify_catches_lines_cut_from_the_end_when_told_the_count(
    app: typer.Typer, workspace: Workspace
) -> None:
    log = _silo_log(workspace)
    log.write_bytes(b"".join(log.read_bytes().splitlines(keepends=True)[:5]))
    ws = str(workspace.root)
    assert _invoke(app, "audit", "verify", "--silo", "silo-a", "-w", ws).exit_code == 0
    cut = _invoke(app, "audit", "verify", "--silo", "silo-a", "-w", ws, "--expect-at-least", "9")
    assert cut.exit_code == 1
    assert "the log has 5 entries, fewer than the 9 expected" in cut.output
    every = _invoke(app, "audit", "verify", "-w", ws, "--expect-at-least", "9")
    assert every.exit_code == 2 and "--expect-at-least" in every.output


def test_a_participant_on_its_own_machine_uses_its_kit(
    app: typer.Typer, workspace: Workspace, tmp_path: Path
) -> None:
    kit = tmp_path / "silo-a-machine" / "kit"
    shutil.copytree(workspace.kit_dir("silo-a"), kit)
    shown = _invoke(app, "audit", "show", "--kit", str(kit), "--json", "-w", str(tmp_path))
    assert shown.exit_code == 0, shown.output
    assert len(shown.output.splitlines()) == 9
    verified = _invoke(app, "audit", "verify", "--kit", str(kit))
    assert verified.output.strip() == "ok: 9 entries, chain intact"
    mismatch = _invoke(app, "audit", "show", "--kit", str(kit), "--silo", "silo-b")
    assert isinstance(mismatch.exception, ConfigError)
    assert "belongs to 'silo-a', not to silo 'silo-b'" in str(mismatch.exception)


def test_usage_errors(app: typer.Typer, workspace: Workspace) -> None:
    ws = str(workspace.root)
    nothing = _invoke(app, "audit", "show", "-w", ws)
    assert nothing.exit_code == 2 and "--orchestrator" in nothing.output
    both = _invoke(app, "audit", "verify", "--silo", "silo-a", "--orchestrator", "-w", ws)
    assert both.exit_code == 2 and "not both" in both.output
    not_silo = _invoke(app, "audit", "show", "--silo", "orchestrator", "-w", ws)
    assert isinstance(not_silo.exception, ConfigError)
    assert "not a silo" in str(not_silo.exception)
    submitter = _invoke(app, "audit", "verify", "--kit", str(workspace.kit_dir("submitter")))
    assert isinstance(submitter.exception, ConfigError)
    assert "keeps no audit log" in str(submitter.exception)
