"""A silo whose compute spans two machines, played by two network namespaces.

Namespace ``A`` is the silo's first machine: the whole federation runs there (the
orchestrator, the approval endpoint and the silo's agent). Namespace ``B`` is its second
machine, which runs ``fedsilo node start``. A cable (a veth pair) joins them: the silo's
own network. A job asks for ``nodes: 2``: its train step runs one rank on each machine,
in a sandbox per machine whose network namespace has a route to the other machine's job
address only. The ranks train together, the model equals the job's ``fedsilo sim`` twin
to float tolerance, and from inside the sandbox nothing else answers: not the
orchestrator, not either machine's own address, not the node service.

Needs root (network namespaces): skipped without, failed under ``FEDSILO_REQUIRE_CGROUPS=1``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fedsilo.config import Classification, open_workspace
from fedsilo.jobs import load_job
from fedsilo.pipelines import simulate, workspace_inputs
from fedsilo.provisioning import provision
from fedsilo.quickstart._quickstart import _split_digits
from fedsilo.storage import add_dataset
from fedsilo.tensors import load_parameters
from tests import netns
from tests.integration.conftest import free_port, write_job

pytestmark = pytest.mark.integration

TASK = '''
"""Digits on the ranks of two machines; each rank also tries to reach what it must not."""
import errno
import socket

import numpy as np
import torch
from torch import nn


def _load(path):
    with np.load(path, allow_pickle=False) as data:
        return torch.from_numpy(data["x"]).float(), torch.from_numpy(data["y"]).long()


def _escapes(targets):
    reached = 0
    for host, port in targets:
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.settimeout(2)
        try:
            probe.connect((host, int(port)))
            reached += 1
        except OSError:
            pass
        finally:
            probe.close()
    return reached


def model(ctx):
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def train(model, ctx):
    extra = ctx.hyperparameters.extra
    targets = [t.split(":") for t in str(extra.get("targets", "")).split(",") if t]
    escaped = _escapes(targets)
    x, y = _load(ctx.input("train"))
    hp, ranks = ctx.hyperparameters, ctx.distributed
    net = ranks.wrap(model)
    opt = torch.optim.SGD(net.parameters(), lr=hp.lr)
    g = torch.Generator().manual_seed(ctx.seed)
    seen = 0
    for share in ranks.batches(len(x), hp.batch_size, generator=g):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x[share]), y[share])
        (loss * ranks.weight(len(share), min(hp.batch_size, len(x)))).backward()
        opt.step()
        seen += len(share)
    return {"num_samples": seen, "ranks": float(ranks.world_size), "escaped": float(escaped)}


def evaluate(model, ctx):
    x, y = _load(ctx.input("test"))
    acc = (model(x).argmax(1) == y).float().mean()
    return {"accuracy": float(acc), "num_samples": len(x)}
'''


@dataclass(frozen=True)
class Machines:
    """Two namespaces joined by a cable, and the addresses the federation uses."""

    a: str
    b: str
    subnet: str  # the first three octets

    def address(self, host: int) -> str:
        return f"{self.subnet}.{host}"

    def run(self, namespace: str, *argv: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(netns.inside(namespace, *argv), **kwargs)  # type: ignore[call-overload, no-any-return]


@pytest.fixture
def machines() -> Iterator[Machines]:
    netns.require_root("two machines are played by network namespaces")
    tag = f"{os.getpid() % 10000}"
    pair = Machines(a=f"fsm-a{tag}", b=f"fsm-b{tag}", subnet=f"10.213.{os.getpid() % 200}")
    with netns.Namespaces() as spaces:
        spaces.add(pair.a)
        spaces.add(pair.b)
        netns.cable(pair.a, "fsm-ca", pair.b, "fsm-cb")
        for ns, card, host in ((pair.a, "fsm-ca", 1), (pair.b, "fsm-cb", 2)):
            netns.ip("-n", ns, "addr", "add", f"{pair.address(host)}/24", "dev", card)
            netns.ip("-n", ns, "link", "set", card, "up")
        yield pair


def _federation(tmp: Path, pair: Machines, port: int) -> Path:
    spec = f"""\
name: twomachines
orchestrator:
  port: {port}
  storage: {{root: storage/orchestrator}}
  compute: {{name: orchestrator-cpu}}
silos:
  - name: silo-a
    storage: {{root: storage/silo-a}}
    compute:
      name: silo-a-cluster
      threads: 1
      nodes:
        - name: node-0
          address: {pair.address(1)}
          interface: fsm-ca
          job_addresses: [{pair.address(11)}]
        - name: node-1
          address: {pair.address(2)}
          interface: fsm-cb
          job_addresses: [{pair.address(12)}]
submitters: [alice]
"""
    (tmp / "federation.yaml").write_text(spec)
    root = tmp / "ws"
    provision(tmp / "federation.yaml", root)
    shards = _split_digits(tmp / "data")
    kit = open_workspace(root).kit("silo-a")
    for role in ("train", "test"):
        add_dataset(kit, f"digits-{role}", shards["silo-a"][role], Classification.SENSITIVE)
    return root


def test_a_two_machine_silo_trains_and_its_sandbox_reaches_only_its_own_machines(
    machines: Machines, tmp_path: Path
) -> None:
    port = free_port()
    root = _federation(tmp_path, machines, port)
    fedsilo = [sys.executable, "-m", "fedsilo"]
    targets = ",".join(
        [
            f"127.0.0.1:{port}",  # the orchestrator, on the first machine
            f"{machines.address(1)}:{port}",  # the first machine's own address
            f"{machines.address(2)}:7600",  # the second machine's node service
            f"{machines.address(254)}:80",  # anything else on the silo's network
        ]
    )
    folder = tmp_path / "job"
    write_job(
        folder,
        rounds=2,
        silos="[silo-a]",
        resources="{train: {nodes: 2, workers: 1}}",
        extra=f", extra: {{targets: '{targets}'}}",
        metrics="[accuracy, ranks, escaped]",
    )
    (folder / "task" / "task.py").write_text(TASK)
    kit = str(root / "kits" / "silo-a")
    node_log = (tmp_path / "node-1.log").open("wb")
    node = subprocess.Popen(
        netns.inside(machines.b, *fedsilo, "node", "start", "--kit", kit, "--node", "node-1"),
        stdout=node_log,
        stderr=subprocess.STDOUT,
    )
    try:
        machines.run(machines.a, *fedsilo, "up", str(root), check=True, capture_output=True)
        try:
            done = machines.run(
                machines.a,
                *fedsilo,
                "submit",
                str(folder / "job.yaml"),
                "-w",
                str(root),
                "--wait",
                "--json",
                capture_output=True,
                text=True,
                timeout=400,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            info = json.loads(done.stdout)
            job_id = info["id"]
            got = machines.run(
                machines.a,
                *fedsilo,
                "model",
                "get",
                job_id,
                "-w",
                str(root),
                "-o",
                str(tmp_path / "model.safetensors"),
                capture_output=True,
                text=True,
            )
            assert got.returncode == 0, got.stderr
        finally:
            machines.run(machines.a, *fedsilo, "down", str(root), capture_output=True)
    finally:
        node.terminate()
        try:
            node.wait(timeout=15)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()
        node_log.close()
    assert info["state"] == "succeeded", info.get("error")
    for round_ in info["history"][1:]:
        metrics = round_["train"]["silo-a"]
        assert metrics["ranks"] == 2.0, "the ranks were not on two machines"
        assert metrics["escaped"] == 0.0, "a rank reached something beyond the other machine"
    spec, code_dir = load_job(folder / "job.yaml")
    # the twin in this process, which must not probe those addresses from the host
    calm = spec.hyperparameters.model_copy(update={"extra": {}})
    spec = spec.model_copy(update={"hyperparameters": calm})
    sim = simulate(
        spec, code_dir, workspace_inputs(root, spec), work_root=tmp_path / "sim", threads=1
    )
    federated = load_parameters(tmp_path / "model.safetensors")
    for name, value in sim.parameters.items():
        np.testing.assert_allclose(federated[name], value, rtol=1e-4, atol=1e-5)
    leftover = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "fsj-" not in leftover, "a step's network namespace outlived it"
