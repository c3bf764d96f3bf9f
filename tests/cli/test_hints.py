"""Every command a fedsilo message tells a person to run works when pasted as printed.

A real federation is started; the messages that carry a command are provoked through the
``fedsilo`` console script, run from a folder that is not the workspace; each command
printed after ``with:`` is taken from the output and run as printed, from yet another
folder. The source is scanned for commands written into messages: each must be one this
test provokes, or a mention of a command's name that is no command line to paste.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer

import fedsilo
from fedsilo.cli import _hints
from fedsilo.runtime import down, processes, up
from fedsilo.silo._errors import ErrorStore, KeptError
from tests.integration.conftest import Federation, make_federation, write_job

pytestmark = pytest.mark.integration

FEDSILO = Path(sys.executable).with_name("fedsilo")
SOURCE = Path(fedsilo.__file__).parent

HINT = re.compile(r"with: (fedsilo [^\n;,]+?)(?:,? then [^\n]*)?$", re.MULTILINE)

# Messages in the source that name a command without being one to paste (a command's
# name in a sentence, or a command for another participant's machine, with its KIT).
MENTIONS = {
    "jobs/_layout.py": ["run the job with `fedsilo sim`"],
    "silo/_preparation.py": ["submit it with `fedsilo submit`"],
    "silo/_declared.py": ["job again with `fedsilo submit`"],
    "config/_workspace.py": ["fedsilo provision federation.yaml --out DIR"],
    "audit/_log.py": ["(see: fedsilo audit verify)"],
    "errors.py": ["fedsilo data add --silo "],
    "api/_client.py": ["(fedsilo provision)?"],
    "approval/_default.py": ["runs `fedsilo approval approve ID`"],
    "orchestrator/_core.py": ["`fedsilo silo start --kit KIT`"],
    "orchestrator/_dispatch.py": ["`fedsilo silo start --kit KIT`"],
    # a command for the machine that holds the federation's CA
    "orchestrator/_members.py": ["(fedsilo ca sign)"],
    # a command's name in a sentence that names the kit and the reply to give it
    "provisioning/_renew.py": ["(fedsilo certs install)"],
    "config/_kit.py": ["finish it by running fedsilo certs install again"],
    "silo/_errors.py": [
        "the silo's machine: fedsilo silo errors ",
        "fedsilo silo errors, with the same options and no id",
    ],
    "silo/_governance.py": ["(fedsilo data add)"],
    # the names of processes and of the orchestrator's API
    "orchestrator/_app.py": ["fedsilo orchestrator"],
    "runtime/_units.py": [
        "fedsilo orchestrator of",
        "fedsilo approval endpoint of",
        "fedsilo node ",
    ],
    # a comment in the job file quickstart writes, with that workspace's absolute paths
    "quickstart/_quickstart.py": ["#   fedsilo submit {job_file} --workspace {workspace} --wait"],
}
# Commands written into messages of the library, each provoked below.
PROVOKED = {
    "runtime/_local.py": ["stop it first with: fedsilo down "],
    "api/_client.py": ["start the federation with: fedsilo up "],
}
# The builders of cli/_hints.py, each provoked below.
BUILDERS = {"job_show", "up", "silo_errors", "tracking_ui", "tracking_runs"}


def _commands_in_source() -> dict[str, list[str]]:
    """Each module's string literals (docstrings aside) that hold ``fedsilo COMMAND``."""
    from fedsilo.cli._app import _register, app

    _register()
    names = "|".join(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    command = re.compile(rf"fedsilo ({names})\b")
    found: dict[str, list[str]] = {}
    for path in sorted(SOURCE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        }
        for node in ast.walk(tree):
            if not isinstance(node, ast.Constant) or not isinstance(node.value, str):
                continue
            if id(node) in docstrings or not command.search(node.value):
                continue
            found.setdefault(path.relative_to(SOURCE).as_posix(), []).append(node.value)
    return found


def test_every_command_in_a_message_is_provoked_or_a_mention() -> None:
    known = {**MENTIONS}
    for module, texts in PROVOKED.items():
        known[module] = [*known.get(module, []), *texts]
    unexplained = []
    for module, literals in _commands_in_source().items():
        if module.startswith("cli/"):
            continue  # the CLI's commands are built by cli/_hints.py, checked below
        for literal in literals:
            if not any(text in literal or literal in text for text in known.get(module, [])):
                unexplained.append(f"{module}: {literal!r}")
    assert not unexplained, (
        "messages that tell a person to run a command, not provoked by this test:\n"
        + "\n".join(unexplained)
    )
    cli = [
        f"{m}: {t!r}"
        for m, ts in _commands_in_source().items()
        if m.startswith("cli/")
        for t in ts
        if re.search(r"with: fedsilo [a-z]", t)
    ]
    assert not cli, f"commands the CLI prints must come from cli/_hints.py:\n{cli}"
    built = {name for name in _hints.__all__ if name not in ("command", "kit_argv", "silo_argv")}
    assert built == BUILDERS, "a hint of cli/_hints.py this test does not provoke"


@pytest.fixture
def fed(tmp_path: Path) -> Iterator[Federation]:
    federation = make_federation(tmp_path, "hints")
    try:
        yield federation
    finally:
        down(federation.root)


def fedsilo_cli(*args: str | Path, cwd: Path, ok: bool = True) -> str:
    done = subprocess.run(
        [str(FEDSILO), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "80"},
    )
    output = done.stdout + done.stderr
    assert (done.returncode == 0) == ok, output
    return output


def run_hint(output: str, cwd: Path) -> str:
    """Run the command ``output`` tells the person to run, as printed, from ``cwd``."""
    found = HINT.findall(output.replace("\n", " ").replace("  ", " ") + "\n")
    assert found, f"no command in:\n{output}"
    argv = shlex.split(found[0].strip())
    assert argv[0] == "fedsilo"
    return fedsilo_cli(*argv[1:], cwd=cwd)


def test_each_printed_command_runs_from_anywhere(fed: Federation, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    other = tmp_path / "other"
    elsewhere.mkdir()
    other.mkdir()
    ws = fed.root
    ran: set[str] = set()

    # the orchestrator is down: a workspace's holder is told to start it, as printed
    refused = fedsilo_cli("job", "list", "-w", ws, cwd=elsewhere, ok=False)
    assert "not reachable" in refused
    run_hint(refused, other)
    ran.add("up")

    # a silo's operator on its own machine is not told to run the federation
    kit = tmp_path / "silo-a-kit"
    shutil.copytree(ws / "kits" / "silo-a", kit)
    up_now = fedsilo_cli("status", ws, cwd=elsewhere)
    assert "hints" in up_now
    down(ws)
    alone = fedsilo_cli("job", "list", "--kit", kit, cwd=elsewhere, ok=False)
    assert "fedsilo up" not in alone and str(kit / "kit.yaml") in alone.replace("\n", "")
    # ... and the silo's approval endpoint is started as printed
    endpoint = fedsilo_cli(
        "approval", "list", "-w", ws, "--silo", "silo-a", cwd=elsewhere, ok=False
    )
    run_hint(endpoint, other)

    # running twice: stop it first, as printed; then status names what to start
    twice = fedsilo_cli("up", ws, cwd=elsewhere, ok=False)
    run_hint(twice, other)
    up(ws)
    agent = next(p for p in processes(ws) if p.name == "silo-b")
    os.kill(agent.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while any(p.alive for p in processes(ws) if p.name == "silo-b"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    missing = fedsilo_cli("status", ws, cwd=elsewhere)
    assert "silo-b" in missing
    run_hint(missing, other)

    # a job submitted without --wait is followed as printed
    job = write_job(fed.scratch, rounds=1)
    submitted = fedsilo_cli("submit", job, "-w", ws, cwd=elsewhere)
    followed = run_hint(submitted, other)
    assert "succeeded" in followed
    ran.add("job_show")

    # a silo's kept errors: one is printed whole, as printed
    silo_a = fed.workspace.kit("silo-a")
    store = ErrorStore(silo_a.storage_path, "silo-a")
    store.write(
        KeptError(
            id=store.new_id(),
            time=time.time(),
            silo="silo-a",
            kind="train",
            step="train, round 1",
            error_class="ValueError",
            message="bad shape",
            sent="round 1: the task code raised ValueError",
        )
    )
    for given in (("-w", ws, "--silo", "silo-a"), ("--kit", kit)):
        listed = fedsilo_cli("silo", "errors", *given, cwd=elsewhere)
        assert "bad shape" in run_hint(listed, other)
    ran.add("silo_errors")

    # tracked simulations: the store is listed and served as printed
    swept = fedsilo_cli(
        "sweep", job, "-w", ws, "--set", "hyperparameters.lr=0.1", "--track",
        "--plot", tmp_path / "sweep.png", cwd=elsewhere,
    )  # fmt: skip
    assert "digits" in run_hint(swept, other)
    ran.add("tracking_runs")
    simulated = fedsilo_cli("sim", job, "-w", ws, "--track", cwd=elsewhere)
    _serve_as_printed(simulated, other)
    ran.add("tracking_ui")

    assert ran == BUILDERS


def _serve_as_printed(output: str, cwd: Path) -> None:
    """Start the UI command ``output`` prints; it must come up, not fail on its path."""
    found = HINT.findall(output.replace("\n", " ") + "\n")
    assert found, output
    argv = shlex.split(found[0].strip())
    with subprocess.Popen(
        [str(FEDSILO), *argv[1:]],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            first = process.stdout.readline()
            assert "MLflow UI for" in first, first + process.stdout.read()
        finally:
            process.terminate()
            process.wait(timeout=60)
