"""The CLI as a person first meets it: --version, and help that shows no type beside a flag."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path


def fedsilo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedsilo", *args],
        capture_output=True,
        text=True,
        env={"COLUMNS": "100", "PATH": "/usr/bin:/bin"},
    )


def test_version() -> None:
    done = fedsilo("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"fedsilo {version('fedsilo')}"


def _commands() -> list[tuple[str, ...]]:
    from fedsilo.cli._app import _register, app

    _register()
    import typer.main

    root = typer.main.get_command(app)
    found: list[tuple[str, ...]] = [()]
    for name, command in root.commands.items():  # type: ignore[attr-defined]
        found.append((name,))
        for sub in getattr(command, "commands", {}):
            found.append((name, sub))
    return found


def test_help_shows_no_type_beside_a_flag() -> None:
    from typer.testing import CliRunner

    from fedsilo.cli._app import _flags_without_type, app

    _flags_without_type()
    runner = CliRunner()
    commands = _commands()
    assert len(commands) > 30
    for command in commands:
        done = runner.invoke(app, [*command, "--help"], terminal_width=100)
        assert done.exit_code == 0, (command, done.output)
        assert "<bool>" not in done.output, command
        assert "--help" in done.output


def test_validate_checks_each_kind_of_spec_file(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedsilo.cli._app import app

    runner = CliRunner()
    root = Path(__file__).resolve().parents[2]
    done = runner.invoke(app, ["validate", str(root / "examples" / "ner" / "job.yaml")])
    assert done.exit_code == 0 and "ok: job 'ner', 25 rounds in 3 silos" in done.output
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules: []\ndefault: reject\nmetrics: {digits: 3}\n")
    done = runner.invoke(app, ["validate", str(policy)])
    assert done.exit_code == 0 and "ok: policy with 0 rules" in done.output
    job = tmp_path / "job.yaml"
    job.write_text("name: x\ncode: task\nsilos: [a]\nrouns: 3\n")
    done = runner.invoke(app, ["validate", str(job)])
    assert done.exit_code != 0
    assert "job.yaml:4: field 'rouns': unknown key 'rouns' (did you mean 'rounds'?)" in str(
        done.exception
    )


def test_a_count_prints_as_a_whole_number_and_a_rate_with_four_decimals() -> None:
    from fedsilo.cli._jobs import _num

    assert (_num(100.0), _num(0.96111), _num(-3.0)) == ("100", "0.9611", "-3")
