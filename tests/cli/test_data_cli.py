"""``fedsilo validate``, ``provision`` and ``data``: parse, call the library, render."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from fedsilo.cli import _data, _federation
from fedsilo.errors import ClassificationError, ConfigError, ProvisioningError, WorkspaceError

SPEC = """\
name: demo
orchestrator:
  storage: {root: storage/orchestrator}
  compute: {name: orchestrator-cpu}
silos:
  - name: silo-a
    storage: {root: storage/silo-a}
    compute: {name: silo-a-cpu}
    datasets:
      - {name: digits-train, classification: sensitive}
  - name: silo-b
    storage: {root: storage/silo-b}
    compute: {name: silo-b-cpu}
  - name: silo-c
    storage: {root: storage/silo-c}
    compute: {name: silo-c-cpu}
"""
SECRET = "patient-4711,positive"


@pytest.fixture
def app() -> typer.Typer:
    """A root app holding only this module's command groups, as the real root registers them."""
    root = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
    _federation.register(root)
    _data.register(root)
    return root


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "federation.yaml"
    path.write_text(SPEC)
    return path


@pytest.fixture
def workspace(app: typer.Typer, spec: Path, tmp_path: Path) -> Path:
    out = tmp_path / "ws"
    result = _invoke(app, "provision", str(spec), "--out", str(out))
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def records_file(tmp_path: Path) -> Path:
    path = tmp_path / "records.csv"
    path.write_text(f"id,label\n{SECRET}\n")
    return path


def _invoke(app: typer.Typer, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", **(env or {})})


def test_validate_ok(app: typer.Typer, spec: Path) -> None:
    result = _invoke(app, "validate", str(spec))
    assert result.exit_code == 0
    assert result.output.strip() == "ok: federation 'demo', 3 silos"


def test_validate_raises_the_config_error(app: typer.Typer, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SPEC.replace("silo-c-cpu", "silo-a-cpu"))
    result = _invoke(app, "validate", str(bad))
    assert result.exit_code == 1
    assert isinstance(result.exception, ConfigError)
    assert str(result.exception).startswith(f"{bad}:16: field 'silos.2.compute.name'")


def test_provision_prints_every_kit_and_refuses_to_overwrite(
    app: typer.Typer, spec: Path, workspace: Path
) -> None:
    assert sorted(p.name for p in (workspace / "kits").iterdir()) == [
        "orchestrator",
        "silo-a",
        "silo-b",
        "silo-c",
        "submitter",
    ]
    again = _invoke(app, "provision", str(spec), "--out", str(workspace))
    assert isinstance(again.exception, ProvisioningError)
    forced = _invoke(app, "provision", str(spec), "--out", str(workspace), "--force")
    assert forced.exit_code == 0, forced.output
    for name, role in [
        ("orchestrator", "orchestrator"),
        ("silo-b", "silo"),
        ("submitter", "submitter"),
    ]:
        line = next(line for line in forced.output.splitlines() if f" {name} " in line)
        assert role in line and str(workspace / "kits" / name) in line


def test_data_add_and_list_never_show_contents(
    app: typer.Typer, workspace: Path, records_file: Path
) -> None:
    added = _invoke(
        app,
        "data", "add", "--silo", "silo-b", "--name", "records",
        "--classification", "intermediate", str(records_file), "-w", str(workspace),
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    digest = hashlib.sha256(records_file.read_bytes()).hexdigest()
    assert digest in added.output
    stored = workspace / "storage" / "silo-b" / "data" / "records" / "records.csv"
    assert stored.read_text() == records_file.read_text()

    narrow = {"COLUMNS": "80"}
    table = _invoke(app, "data", "list", "--silo", "silo-b", "-w", str(workspace), env=narrow)
    assert table.exit_code == 0, table.output
    assert max(len(line) for line in table.output.splitlines()) <= 80
    row = next(line for line in table.output.splitlines() if "records" in line)
    assert "intermediate" in row and "file" in row and digest[:12] in row
    assert digest not in table.output
    whole = _invoke(app, "data", "list", "--silo", "silo-b", "-w", str(workspace), "--wide")
    assert digest in whole.output
    assert SECRET not in table.output and SECRET not in added.output

    listed = _invoke(app, "data", "list", "--silo", "silo-b", "-w", str(workspace), "--json")
    records = json.loads(listed.output)
    assert [(r["name"], r["classification"], r["kind"]) for r in records] == [
        ("records", "intermediate", "file")
    ]
    assert records[0]["sha256"] == digest
    assert records[0]["size_bytes"] == records_file.stat().st_size

    other = _invoke(app, "data", "list", "--silo", "silo-c", "-w", str(workspace), "--json")
    assert json.loads(other.output) == []


def test_workspace_comes_from_the_environment(
    app: typer.Typer, workspace: Path, records_file: Path
) -> None:
    env = {"FEDSILO_WORKSPACE": str(workspace)}
    added = _invoke(
        app,
        "data", "add", "--silo", "silo-a", "--name", "rows",
        "--classification", "sensitive", str(records_file), env=env,
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    listed = _invoke(app, "data", "list", "--silo", "silo-a", "--json", env=env)
    assert [r["name"] for r in json.loads(listed.output)] == ["rows"]


def test_a_silo_on_its_own_machine_uses_its_kit(
    app: typer.Typer, workspace: Path, records_file: Path, tmp_path: Path
) -> None:
    kit = tmp_path / "silo-a-machine" / "kit"
    shutil.copytree(workspace / "kits" / "silo-a", kit)
    added = _invoke(
        app,
        "data", "add", "--kit", str(kit), "--name", "rows",
        "--classification", "eyes_on", str(records_file), "-w", str(tmp_path / "nowhere"),
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    assert (workspace / "storage" / "silo-a" / "data" / "rows" / "records.csv").is_file()
    mismatch = _invoke(app, "data", "list", "--kit", str(kit), "--silo", "silo-b")
    assert isinstance(mismatch.exception, ConfigError)
    assert "belongs to 'silo-a', not to silo 'silo-b'" in str(mismatch.exception)


def test_declared_classification_cannot_be_lowered(
    app: typer.Typer, workspace: Path, records_file: Path
) -> None:
    result = _invoke(
        app,
        "data", "add", "--silo", "silo-a", "--name", "digits-train",
        "--classification", "eyes_on", str(records_file), "-w", str(workspace),
    )  # fmt: skip
    assert isinstance(result.exception, ClassificationError)
    assert "'sensitive'" in str(result.exception) and "'eyes_on'" in str(result.exception)
    assert not (workspace / "storage" / "silo-a" / "data" / "digits-train").exists()


def test_usage_errors(app: typer.Typer, workspace: Path, records_file: Path) -> None:
    no_silo = _invoke(app, "data", "list", "-w", str(workspace))
    assert no_silo.exit_code == 2 and "--silo" in no_silo.output
    bad_word = _invoke(
        app,
        "data", "add", "--silo", "silo-a", "--name", "x",
        "--classification", "secret", str(records_file), "-w", str(workspace),
    )  # fmt: skip
    assert bad_word.exit_code == 2 and "secret" in bad_word.output
    orchestrator = _invoke(app, "data", "list", "--silo", "orchestrator", "-w", str(workspace))
    assert isinstance(orchestrator.exception, ConfigError)
    assert "not a silo" in str(orchestrator.exception)
    unknown = _invoke(app, "data", "list", "--silo", "silo-z", "-w", str(workspace))
    assert isinstance(unknown.exception, ConfigError)
    assert "no participant 'silo-z'" in str(unknown.exception)


def test_not_a_workspace(app: typer.Typer, tmp_path: Path) -> None:
    result = _invoke(app, "data", "list", "--silo", "silo-a", "-w", str(tmp_path))
    assert isinstance(result.exception, WorkspaceError)
    assert "fedsilo provision federation.yaml --out DIR" in str(result.exception)


def test_the_fedsilo_command_prints_errors_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SPEC.replace("classification: sensitive", "classification: secret"))
    done = subprocess.run(
        [sys.executable, "-m", "fedsilo", "validate", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "300", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 1
    assert f"error: {bad}:10: field 'silos.0.datasets.0.classification'" in done.stderr
    assert "'secret' is not a classification" in done.stderr
