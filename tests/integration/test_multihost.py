"""A federation across machines, each machine a network namespace of its own.

The machines hang off one switch (a bridge in a namespace of its own) on a subnet
``10.214.N.0/24`` of the test's own:

=====  ============  =======================================================================
host   machine       runs, and reaches
=====  ============  =======================================================================
.1     orchestrator  ``fedsilo orchestrator start``; the whole subnet
.2     postgres      the orchestrator's state (its own throwaway cluster); the orchestrator
.3     submitter     ``fedsilo submit --wait``; the orchestrator
.11+   silo-a, ...   the silo's agent and its approval endpoint (on the silo's own
                     address); the orchestrator
=====  ============  =======================================================================

"A silo reaches the orchestrator and nothing else" is made true by routing, because
neither nftables nor iptables is installed where the suite runs: a silo's namespace holds
its address alone (``/32``) and one route, to the orchestrator's address, so its own
kernel refuses every other address of the subnet (unreachable) before a packet leaves,
and the orchestrator's namespace forwards nothing (a new namespace starts with IP
forwarding off). PostgreSQL also lets in the orchestrator's address alone (``pg_hba``).
The test checks this from each silo's namespace, with the orchestrator's namespace as
the control that every target it probes is live.

Provisioning gives the orchestrator's address as ``orchestrator.host`` and each silo's as
its ``approval.host``: the certificates carry them, and every client checks them. Every
process and every client call runs inside one of the namespaces, so both ends of each
connection are there; nothing goes from the host's own namespace to these addresses
(it would leave the machine). ``ip netns exec`` mounts a fresh ``/sys``, which hides the
host's control groups from the agents: their limits fall back to rlimits here.

While it runs, silo-c is removed from the federation and silo-d, which makes its keys on
a machine of its own and enrolls through the federation's CA, is admitted: no restart, no
new kit for anyone else.

Needs root (skipped without, failed under ``FEDSILO_REQUIRE_CGROUPS=1``) and PostgreSQL
(see ``tests/postgres.py``). Processes, the database server and the namespaces are gone at
the end of the module, also when a test fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509

from fedsilo.config import Classification, Workspace
from fedsilo.provisioning import provision
from fedsilo.quickstart._quickstart import _split_digits
from fedsilo.storage import add_dataset
from tests import netns, postgres
from tests.integration.conftest import SILOS, free_port, stop_all, write_job

pytestmark = pytest.mark.integration

HOSTS = {"orchestrator": 1, "postgres": 2, "submitter": 3, "silo-a": 11, "silo-b": 12, "silo-c": 13}
"""Each machine's host number on the subnet; a machine plugged in later takes the next."""

ORCHESTRATOR_PORT = 8443  # every machine has ports of its own: the defaults are free
POSTGRES_PORT = 5432

WAIT_ONLINE = """
import sys, time
from pathlib import Path
from fedsilo.api import OrchestratorClient
from fedsilo.config import open_workspace
from fedsilo.errors import FedsiloError

ws = open_workspace(Path(sys.argv[1]))
wanted, deadline = set(sys.argv[2:]), time.monotonic() + 120
with OrchestratorClient(ws.kit(ws.submitter_name), timeout=5) as client:
    while time.monotonic() < deadline:
        try:
            online = {s.name for s in client.status().silos if s.online}
        except FedsiloError:
            online = set()
        if wanted <= online:
            sys.exit(0)
        time.sleep(0.5)
sys.exit(f"silos still offline: {sorted(wanted - online)}")
"""

PROBE = """
import json, socket, sys

seen = {}
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.settimeout(3)
    try:
        probe.connect((host, int(port)))
        seen[target] = "answers"
    except ConnectionRefusedError:
        seen[target] = "refused"
    except TimeoutError:
        seen[target] = "timed out"
    except OSError as exc:
        seen[target] = f"unreachable ({exc.strerror})"
    finally:
        probe.close()
print(json.dumps(seen))
"""


@dataclass
class Network:
    """The machines on the test's switch, by name."""

    switch: netns.Switch
    machines: dict[str, str] = field(default_factory=dict)
    """machine -> its namespace"""
    hosts: dict[str, int] = field(default_factory=dict)
    """machine -> its host number"""

    def plug(self, machine: str, *, reach: Iterable[str] | None = None) -> str:
        """Add ``machine`` at its host number (a machine not in ``HOSTS`` takes the next
        free one); it reaches the machines of ``reach`` only (the whole subnet without)."""
        host = HOSTS.get(machine, max(self.hosts.values(), default=0) + 1)
        routes = None if reach is None else [self.hosts[other] for other in reach]
        self.machines[machine] = self.switch.plug(machine, host, reach=routes)
        self.hosts[machine] = host
        return self.machines[machine]

    def address(self, machine: str) -> str:
        return self.switch.address(self.hosts[machine])

    def run(
        self, machine: str, *argv: str, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on ``machine`` and wait for it."""
        return subprocess.run(
            netns.inside(self.machines[machine], *argv),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def probe(self, machine: str, targets: Iterable[str]) -> dict[str, str]:
        """What a TCP connection from ``machine`` to each ``HOST:PORT`` gets."""
        done = self.run(machine, sys.executable, "-c", PROBE, *targets)
        assert done.returncode == 0, done.stderr
        seen: dict[str, str] = json.loads(done.stdout)
        return seen


@pytest.fixture(scope="module")
def network() -> Iterator[Network]:
    """The switch and the machines of the federation's start, deleted at the end."""
    netns.require_root("machines are played by network namespaces")
    with netns.Namespaces() as spaces:
        subnet = f"10.214.{os.getpid() % 200}"
        net = Network(netns.Switch(spaces, f"fsh{os.getpid() % 10000}", subnet))
        net.plug("orchestrator")
        for machine in ("postgres", "submitter", *SILOS):
            net.plug(machine, reach=["orchestrator"])
        yield net


@pytest.fixture(scope="module")
def database(network: Network) -> Iterator[postgres.Cluster]:
    """The orchestrator's database, on the PostgreSQL machine's address."""
    with postgres.cluster(
        host=network.address("postgres"),
        port=POSTGRES_PORT,
        namespace=network.machines["postgres"],
        clients=f"{network.address('orchestrator')}/32",
        database="fedsilo",
    ) as cluster:
        yield cluster


@dataclass
class Federation:
    """A provisioned workspace whose processes run on the network's machines.

    A test changes the silos while the federation runs with :meth:`Network.plug` (a new
    silo's machine), :meth:`start_silo`, :meth:`stop_silo` and :meth:`wait_online`.
    """

    network: Network
    workspace: Workspace
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.workspace.root

    def start(self, machine: str, name: str, *args: str) -> None:
        """Run ``fedsilo ARGS`` on ``machine`` as process ``name``, logging to ``name.log``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEDSILO_KIT")}
        with (self.logs / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(
                netns.inside(
                    self.network.machines[machine], sys.executable, "-m", "fedsilo", *args
                ),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**env, "PYTHONUNBUFFERED": "1"},
                cwd=self.root,
            )

    def start_silo(self, silo: str, kit_dir: Path | None = None) -> None:
        """Start ``silo``'s approval endpoint and agent on its machine (with the kit in
        ``kit_dir``, for a silo that enrolled on its own machine)."""
        kit = str(kit_dir or self.workspace.kit_dir(silo))
        self.start(silo, f"{silo}-approval", "approval", "serve", "--kit", kit)
        self.start(silo, silo, "silo", "start", "--kit", kit, "--cores", "1")

    def stop_silo(self, silo: str) -> None:
        """Stop ``silo``'s agent and approval endpoint."""
        stop_all([self.processes.pop(silo), self.processes.pop(f"{silo}-approval")])

    def wait_online(self, silos: Iterable[str]) -> None:
        """Wait, asking from the submitter's machine, until every one of ``silos`` is online."""
        done = self.network.run(
            "submitter", sys.executable, "-c", WAIT_ONLINE, str(self.root), *silos, timeout=180
        )
        if done.returncode != 0:
            pytest.fail(f"{done.stderr.strip()}\n{self.tails()}")

    def fedsilo(self, machine: str, *args: str | Path) -> str:
        """``fedsilo ARGS`` on ``machine``; its output, or the test fails with its error."""
        done = self.network.run(machine, sys.executable, "-m", "fedsilo", *map(str, args))
        assert done.returncode == 0, f"fedsilo {' '.join(map(str, args))}: {done.stderr}"
        return done.stdout

    def submit(self, job: Path) -> dict[str, object]:
        """``fedsilo submit JOB --wait --json`` on the submitter's machine."""
        done = self.network.run(
            "submitter",
            *(sys.executable, "-m", "fedsilo", "submit", str(job), "-w", str(self.root)),
            *("--wait", "--json"),
            timeout=300,
        )
        assert done.returncode == 0, f"{done.stdout}{done.stderr}\n{self.tails()}"
        info: dict[str, object] = json.loads(done.stdout)
        return info

    def tails(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}"
            for log in sorted(self.logs.iterdir())
        )


def _workspace(tmp: Path, network: Network) -> Workspace:
    silos = "".join(
        f"  - name: {s}\n    storage: {{root: storage/{s}}}\n    compute: {{name: {s}-cpu}}\n"
        f"    approval: {{host: {network.address(s)}}}\n"
        for s in SILOS
    )
    spec = tmp / "multihost.yaml"
    spec.write_text(
        f"name: multihost\norchestrator:\n  host: {network.address('orchestrator')}\n"
        f"  port: {ORCHESTRATOR_PORT}\n  storage: {{root: storage/orchestrator}}\n"
        f"  compute: {{name: orchestrator-cpu}}\nsilos:\n{silos}submitters: [alice]\n"
        "admins: [carol]\n"
    )
    ws = provision(spec, tmp / "ws")
    shards = _split_digits(tmp / "data")
    for silo in SILOS:
        for role in ("train", "test"):
            kit = ws.kit(silo)
            add_dataset(kit, f"digits-{role}", shards[silo][role], Classification.SENSITIVE)
    return ws


@pytest.fixture(scope="module")
def federation(
    network: Network, database: postgres.Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Federation]:
    """The orchestrator, and every silo's agent and approval endpoint, each on its machine."""
    tmp = tmp_path_factory.mktemp("multihost")
    logs = tmp / "logs"
    logs.mkdir()
    fed = Federation(network=network, workspace=_workspace(tmp, network), logs=logs)
    try:
        orchestrator = str(fed.workspace.kit_dir("orchestrator"))
        fed.start(
            "orchestrator",
            "orchestrator",
            *("orchestrator", "start", "--kit", orchestrator, "--database-url", database.url),
        )
        for silo in SILOS:
            fed.start_silo(silo)
        fed.wait_online(SILOS)
        yield fed
    finally:
        stop_all(list(fed.processes.values()))


def _san_addresses(cert: Path) -> set[str]:
    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    names = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(address) for address in names.get_values_for_type(x509.IPAddress)}


def test_the_certificates_carry_the_machines_addresses(federation: Federation) -> None:
    network, ws = federation.network, federation.workspace
    served = _san_addresses(ws.kit("orchestrator").cert_file)
    assert network.address("orchestrator") in served
    for silo in SILOS:
        assert network.address(silo) in _san_addresses(ws.kit(silo).approval_cert_file)
        assert network.address(silo) not in served


def test_a_silo_reaches_the_orchestrator_and_nothing_else(federation: Federation) -> None:
    network = federation.network
    orchestrator = f"{network.address('orchestrator')}:{ORCHESTRATOR_PORT}"
    database = f"{network.address('postgres')}:{POSTGRES_PORT}"
    approvals = {silo: _approval(federation, silo) for silo in SILOS}
    # the control: each target is live, as the orchestrator's machine sees it
    control = network.probe("orchestrator", [database, *approvals.values()])
    assert set(control.values()) == {"answers"}, control
    for machine in (*SILOS, "submitter"):
        others = [target for silo, target in approvals.items() if silo != machine]
        seen = network.probe(machine, [orchestrator, database, *others])
        assert seen.pop(orchestrator) == "answers", f"{machine} cannot reach the orchestrator"
        reached = {target: how for target, how in seen.items() if how == "answers"}
        assert not reached, f"{machine} reaches more than the orchestrator: {reached}"
    for silo, target in approvals.items():  # a silo's own endpoint answers on its machine
        assert network.probe(silo, [target])[target] == "answers"


def _approval(federation: Federation, silo: str) -> str:
    kit = federation.workspace.kit(silo)
    return f"{kit.approval_host}:{kit.approval_port}"


def test_a_job_runs_to_the_end_with_its_state_in_postgresql(
    federation: Federation, database: postgres.Cluster
) -> None:
    job = write_job(federation.root.parent / "job", rounds=2)
    info = federation.submit(job)
    assert info["state"] == "succeeded", info.get("error")
    history = info["history"]
    assert isinstance(history, list)
    assert [r["round"] for r in history] == [1, 2]
    assert all(set(r["train"]) == set(SILOS) for r in history), history
    # the job's record is in the database server, not in a file beside the orchestrator
    assert database.psql(f"SELECT state FROM jobs WHERE id = '{info['id']}'").strip() == (
        "succeeded"
    )
    storage = federation.workspace.kit("orchestrator").storage_path
    assert not (storage / "orchestrator.db").exists()


def test_a_silo_leaves_and_another_joins_while_the_federation_runs(
    federation: Federation, tmp_path: Path
) -> None:
    """silo-c is removed; silo-d, enrolled on a machine of its own with a key made there,
    is admitted; a job runs on silo-a, silo-b and silo-d. The orchestrator never restarts,
    and no other participant gets a new kit."""
    fed, network, ws = federation, federation.network, federation.workspace
    carol = ws.kit_dir("carol")  # the administrator works from the submitters' machine
    removed = fed.fedsilo("submitter", "members", "remove", "silo-c", "--kit", carol)
    assert "removed silo 'silo-c'" in removed
    fed.stop_silo("silo-c")

    network.plug("silo-d", reach=["orchestrator"])
    machine = tmp_path / "silo-d"
    kit_dir = machine / "kit"
    fed.fedsilo(
        "silo-d", "enroll", "request", "--federation", "multihost", "--name", "silo-d",
        "--role", "silo", "--compute", "silo-d-cpu", "--approval-host",
        network.address("silo-d"), "--approval-port", str(free_port()), "--to", kit_dir,
    )  # fmt: skip
    # the request goes to the CA's machine (the workspace, which needs no network here)
    reply = tmp_path / "silo-d.reply.yaml"
    request = kit_dir / "silo-d.request.yaml"
    sign = ["ca", "sign", str(request), "-w", str(fed.root), "--yes", "--to", str(reply)]
    signed = subprocess.run(
        [sys.executable, "-m", "fedsilo", *sign],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert signed.returncode == 0, signed.stderr
    fed.fedsilo("silo-d", "enroll", "finish", reply, "--to", kit_dir, "--storage", machine / "data")
    assert not [p for p in fed.root.rglob("*.key") if "silo-d" in p.name]
    shards = _split_digits(machine / "source")["silo-c"]  # the data silo-c had
    for role in ("train", "test"):
        fed.fedsilo(
            "silo-d", "data", "add", shards[role], "--kit", kit_dir, "--name", f"digits-{role}",
            "--classification", "sensitive",
        )  # fmt: skip
    added = fed.fedsilo("submitter", "members", "add", reply, "--kit", carol)
    assert "silo 'silo-d'" in added
    fed.start_silo("silo-d", kit_dir)
    fed.wait_online(["silo-a", "silo-b", "silo-d"])

    info = fed.submit(write_job(tmp_path / "job", rounds=2, silos="[silo-a, silo-b, silo-d]"))
    assert info["state"] == "succeeded", info.get("error")
    history = info["history"]
    assert isinstance(history, list)
    assert all(set(r["train"]) == {"silo-a", "silo-b", "silo-d"} for r in history), history
    # silo-d reaches the orchestrator and nothing else either
    seen = network.probe("silo-d", [f"{network.address('postgres')}:{POSTGRES_PORT}"])
    assert "answers" not in seen.values(), seen
    # the removal and the admission are the orchestrator's record
    listed = json.loads(fed.fedsilo("submitter", "members", "list", "--kit", carol, "--json"))
    assert {m["name"] for m in listed if m["role"] == "silo"} == {"silo-a", "silo-b", "silo-d"}
