"""``fedsilo service units``: systemd units that pass ``systemd-analyze verify`` and whose
commands, run as systemd would run them, bring a federation up that runs a job.

systemd is not PID 1 on the machines that run the suite, so the units are not started by
systemd itself: each unit's ``ExecStart=`` is split as systemd splits it and run in its
``WorkingDirectory=`` with its ``Environment=``.
"""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsilo.api import JobState, OrchestratorClient
from fedsilo.config import open_workspace
from fedsilo.errors import ConfigError
from fedsilo.jobs import load_job
from fedsilo.provisioning import provision
from fedsilo.runtime._units import write_units
from tests.integration.conftest import (
    SILOS,
    Federation,
    make_federation,
    stop_all,
    wait_online,
    write_job,
)

pytestmark = pytest.mark.integration

FEDSILO = [sys.executable, "-m", "fedsilo"]


def _verify(folder: Path) -> None:
    """``systemd-analyze verify`` on every unit of ``folder``: no error and no warning."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("FEDSILO_REQUIRE_SYSTEMD") == "1":
            pytest.fail("systemd-analyze is missing (apt-get install systemd)")
        pytest.skip("systemd-analyze is missing: the units cannot be verified here")
    units = sorted(str(p) for p in folder.glob("*.service"))
    done = subprocess.run([analyze, "verify", *units], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def _read(unit: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=True, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(unit.read_text())
    return parser


def test_units_of_a_silo_with_nodes_verify(tmp_path: Path) -> None:
    spec = tmp_path / "federation.yaml"
    spec.write_text(
        """name: units
orchestrator:
  host: 127.0.0.1
  port: 7443
  storage: {root: storage/orchestrator}
  compute: {name: orchestrator-cpu}
silos:
  - name: silo-a
    storage: {root: storage/silo-a}
    compute:
      name: silo-a-cluster
      nodes:
        - {name: node-0, address: 10.9.0.1, interface: eth1, job_addresses: [10.9.0.11]}
        - {name: node-1, address: 10.9.0.2, interface: eth1, job_addresses: [10.9.0.12]}
submitters: [alice]
"""
    )
    root = tmp_path / "ws"
    provision(spec, root)
    ws = open_workspace(root)
    out = tmp_path / "units"
    written = write_units(ws.kit_dir("silo-a"), out) + write_units(ws.kit_dir("orchestrator"), out)
    assert sorted(p.name for p, _ in written) == [
        "fedsilo-orchestrator-units.service",
        "fedsilo-silo-a-agent.service",
        "fedsilo-silo-a-approval.service",
        "fedsilo-silo-a-node-node-0.service",
        "fedsilo-silo-a-node-node-1.service",
    ]
    _verify(out)

    agent = _read(out / "fedsilo-silo-a-agent.service")["Service"]
    assert agent["Delegate"] == "yes"  # its job steps' control groups live under its own
    assert "ProtectSystem" not in agent  # bubblewrap binds the system into each sandbox
    assert agent["Restart"] == "on-failure"
    node = _read(out / "fedsilo-silo-a-node-node-1.service")["Service"]
    assert node["User"] == "root"
    assert shlex.split(node["ExecStart"])[-4:] == [
        "--kit",
        str(ws.kit_dir("silo-a")),
        "--node",
        "node-1",
    ]
    orchestrator = _read(out / "fedsilo-orchestrator-units.service")["Service"]
    assert orchestrator["ProtectSystem"] == "strict"
    assert orchestrator["ReadWritePaths"] == str(ws.kit("orchestrator").storage_path)
    assert "database" not in orchestrator["ExecStart"]  # a database URL is a secret: env file
    assert orchestrator["EnvironmentFile"] == "-/etc/fedsilo/fedsilo-orchestrator-units.env"

    with pytest.raises(ConfigError, match="exists; pass --force"):
        write_units(ws.kit_dir("silo-a"), out)
    with pytest.raises(ConfigError, match="submitter's kit, which runs no service"):
        write_units(ws.kit_dir("alice"), out)


def _start(unit: Path) -> subprocess.Popen[bytes]:
    service = _read(unit)["Service"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDSILO_KIT")}
    key, _, value = service["Environment"].partition("=")
    env[key] = value
    log = unit.with_suffix(".log").open("ab")
    with log:
        return subprocess.Popen(
            shlex.split(service["ExecStart"]),
            cwd=service["WorkingDirectory"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.fixture
def from_units(tmp_path: Path) -> Iterator[tuple[Federation, Path]]:
    fed = make_federation(tmp_path, "svc")
    out = tmp_path / "units"
    for kit in ("orchestrator", *SILOS):
        write_units(fed.workspace.kit_dir(kit), out)
    order = sorted(out.glob("*.service"), key=lambda p: ("orchestrator" not in p.name, p.name))
    procs = [_start(unit) for unit in order]
    try:
        yield fed, out
    finally:
        stop_all(procs)


def test_the_units_commands_run_a_federation(from_units: tuple[Federation, Path]) -> None:
    fed, out = from_units
    _verify(out)
    wait_online(fed, sorted(out.glob("*.log")))
    with OrchestratorClient(fed.submitter) as client:
        spec, code_dir = load_job(write_job(fed.scratch / "job", rounds=1))
        info = client.wait(client.submit(spec, code_dir, signing_key=fed.key), timeout=180)
    assert info.state is JobState.SUCCEEDED, info.error
