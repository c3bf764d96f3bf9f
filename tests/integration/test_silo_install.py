"""A silo installed with ``fedsilo[silo]`` alone (no MLflow, no SQLAlchemy, no plotting) runs
its part of a federation job.

The test installs the package from this source tree into a virtual environment of its own,
as a hospital would on its silo machine (``pip install -c constraints.txt 'fedsilo[silo]'``),
starts every silo's agent and approval endpoint with that environment's Python, and the
orchestrator with the full development install, then runs a job to the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsilo.api import JobState, OrchestratorClient
from fedsilo.jobs import load_job
from tests.integration.conftest import (
    SILOS,
    Federation,
    make_federation,
    stop_all,
    wait_online,
    write_job,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
LEFT_OUT = ("mlflow", "sqlalchemy", "alembic", "matplotlib", "flask")


@pytest.fixture(scope="module")
def silo_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Python of a fresh environment holding ``fedsilo[silo]`` and nothing more."""
    venv = tmp_path_factory.mktemp("silo-install") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-c",
            str(REPO / "constraints.txt"),
            f"{REPO}[silo]",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, f"pip install fedsilo[silo] failed:\n{install.stderr[-3000:]}"
    return python


def test_a_silo_install_leaves_out_the_orchestrator_and_tracking(silo_python: Path) -> None:
    probe = (
        "import importlib.util as u, sys; "
        "print(' '.join(m for m in sys.argv[1:] if u.find_spec(m)))"
    )
    found = subprocess.run(
        [str(silo_python), "-c", probe, *LEFT_OUT, "fedsilo", "torch", "opacus"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert found == ["fedsilo", "torch", "opacus"]
    # a command of another role names the extra to install, not a traceback
    ui = subprocess.run(
        [str(silo_python), "-m", "fedsilo", "tracking", "ui", "--store", str(REPO)],
        capture_output=True,
        text=True,
    )
    assert ui.returncode == 1, ui.stderr
    assert "pip install 'fedsilo[tracking]'" in ui.stderr
    assert "Traceback" not in ui.stderr


def _start(python: Path | str, args: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDSILO_KIT")}
    with log.open("ab") as fh:
        return subprocess.Popen(
            [str(python), "-m", "fedsilo", *args],
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**env, "PYTHONUNBUFFERED": "1"},
            cwd=cwd,
        )


@pytest.fixture
def mixed(tmp_path: Path, silo_python: Path) -> Iterator[Federation]:
    """A federation whose orchestrator runs the full install and whose silos run the silo one."""
    fed = make_federation(tmp_path, "mixed")
    ws = fed.workspace
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = [
        _start(
            sys.executable,
            ["orchestrator", "start", "--kit", str(ws.kit_dir("orchestrator"))],
            logs / "orchestrator.log",
            fed.root,
        )
    ]
    for silo in SILOS:
        kit = str(ws.kit_dir(silo))
        procs.append(
            _start(
                silo_python,
                ["approval", "serve", "--kit", kit],
                logs / f"{silo}-approval.log",
                fed.root,
            )
        )
        procs.append(
            _start(
                silo_python,
                ["silo", "start", "--kit", kit, "--cores", "1"],
                logs / f"{silo}.log",
                fed.root,
            )
        )
    try:
        wait_online(fed, sorted(logs.iterdir()))
        yield fed
    finally:
        stop_all(procs)


def test_silos_installed_with_the_silo_extra_run_a_job(mixed: Federation) -> None:
    spec, code_dir = load_job(write_job(mixed.scratch / "job", rounds=2))
    with OrchestratorClient(mixed.submitter) as client:
        info = client.wait(client.submit(spec, code_dir, signing_key=mixed.key), timeout=240)
    assert info.state is JobState.SUCCEEDED, info.error
    assert [r.round for r in info.history] == [1, 2]
    assert all(set(r.train) == set(SILOS) for r in info.history)
