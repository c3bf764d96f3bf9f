"""A running federation for attacks: three silos, real processes, real sandboxes.

silo-a and silo-b run the default policy provisioning writes; silo-c runs the policy in
``POLICY`` below, which adds rules the suite needs (a rejection rule, a manual hold, and
one deliberately loose rule that lets the agent's own output check be tested).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedsilo.api import JobInfo, OrchestratorClient
from fedsilo.config import Classification, Kit, Workspace, open_workspace
from fedsilo.jobs import load_job, load_private_key
from fedsilo.provisioning import provision
from fedsilo.runtime import down, up
from fedsilo.silo._sandbox import bwrap_path
from fedsilo.storage import add_dataset
from tests.integration.conftest import free_port

SILOS = ("silo-a", "silo-b", "silo-c")
SECRET = "PATIENT-0042-SECRET-DIAGNOSIS"

POLICY = """\
trusted_keys:
  alice: {alice_key}
rules:
  - name: forbidden-jobs
    when: {{job_name_in: [forbidden-job]}}
    decision: reject
    reason: this silo never runs forbidden-job
  - name: code-must-be-signed
    when: {{signature: [unsigned, invalid, untrusted]}}
    decision: reject
  - name: epsilon-cap
    when: {{epsilon_above: 8.0}}
    decision: reject
    reason: this silo allows at most epsilon 8 per job
  - name: a-person-decides
    when: {{job_name_in: [needs-a-person]}}
    decision: manual
  - name: loose-rule-for-the-output-gate-test
    when: {{job_name_in: [leaky-job]}}
    decision: approve
  - name: inputs-from-this-silo-only
    when: {{input_outside_silo: true}}
    decision: reject
  - name: nothing-sensitive-leaves
    when: {{output_leaving: [sensitive]}}
    decision: reject
  - name: everything-else
    decision: approve
default: reject
"""

ATTACK_TASK = '''
"""A task that, when told to, tries to break out of its silo; it reports what it got."""
import os
import socket
from pathlib import Path

import numpy as np
import torch
from torch import nn


def _attack(ctx):
    extra = ctx.hyperparameters.extra
    what = extra.get("attack", "")
    target = str(extra.get("target", ""))
    if what == "read":
        return Path(target).read_text()
    if what == "connect":
        host, port = target.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=3) as sock:
            sock.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
            return sock.recv(100).decode(errors="replace")
    if what == "write":
        Path(target).write_text("written by job code")
        return "wrote"
    if what == "env":
        return ",".join(sorted(k for k in os.environ if k.startswith("FEDSILO")))
    return ""


def model(ctx):
    return nn.Linear(64, 10)


def train(model, ctx):
    got = _attack(ctx)
    with np.load(ctx.input("train"), allow_pickle=False) as data:
        n = len(data["y"])
    with torch.no_grad():
        model.bias[0] = float(len(got))  # anything read would leave through the model
    return {"num_samples": n, "leaked_chars": float(len(got))}


def evaluate(model, ctx):
    return {"num_samples": 1}
'''


@dataclass
class Attackable:
    """The federation under attack and what a test needs to aim at it."""

    root: Path
    workspace: Workspace
    scratch: Path

    @property
    def submitter(self) -> Kit:
        return self.workspace.kit(self.workspace.submitter_name)

    @property
    def key(self) -> Ed25519PrivateKey:
        return load_private_key(self.submitter.signing_key_file)

    def silo_kit(self, silo: str) -> Kit:
        return self.workspace.kit(silo)

    def job(
        self,
        name: str,
        *,
        silos: tuple[str, ...] = ("silo-a",),
        extra: str = "",
        outputs: str = "{model: {classification: intermediate}, "
        "metrics: {classification: intermediate}}",
        inputs: str = "{train: data}",
        privacy: str = "{}",
    ) -> Path:
        folder = self.scratch / f"{name}-{len(list(self.scratch.iterdir()))}"
        (folder / "task").mkdir(parents=True)
        (folder / "task" / "task.py").write_text(ATTACK_TASK)
        job = folder / "job.yaml"
        job.write_text(
            f"name: {name}\ncode: task\nsilos: [{', '.join(silos)}]\ninputs: {inputs}\n"
            f"rounds: 1\noutputs: {outputs}\nhyperparameters: {{seed: 1, extra: {{{extra}}}}}\n"
            f"privacy: {privacy}\nmetrics: [leaked_chars]\n"
        )
        return job

    def run(
        self,
        job_file: Path,
        *,
        key: Ed25519PrivateKey | str | None = "kit",
        timeout: float = 60,
    ) -> JobInfo:
        spec, code_dir = load_job(job_file)
        signing = self.key if key == "kit" else key
        assert not isinstance(signing, str)
        with OrchestratorClient(self.submitter) as client:
            return client.wait(client.submit(spec, code_dir, signing_key=signing), timeout=timeout)


def _require_sandbox() -> None:
    if bwrap_path() is None:
        pytest.fail(
            "bubblewrap is not installed: `make test` installs it (apt-get install "
            "bubblewrap); the security suite needs a real sandbox"
        )


@pytest.fixture(scope="package")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Attackable]:
    _require_sandbox()
    tmp = tmp_path_factory.mktemp("security")
    spec = tmp / "federation.yaml"
    silo_yaml = "".join(
        f"  - name: {s}\n    storage: {{root: storage/{s}}}\n    compute: {{name: {s}-cpu}}\n"
        + ("    policy: silo-c-policy.yaml\n" if s == "silo-c" else "")
        for s in SILOS
    )
    spec.write_text(
        f"name: secure\norchestrator:\n  port: {free_port()}\n"
        "  storage: {root: storage/orchestrator}\n  compute: {name: orchestrator-cpu}\n"
        f"silos:\n{silo_yaml}submitters: [alice]\n"
    )
    # silo-c's own policy; it trusts alice's key, which provisioning creates, so the
    # policy is written again into silo-c's kit once the key exists
    no_keys = POLICY.replace("trusted_keys:\n  alice: {alice_key}\n", "trusted_keys: {{}}\n")
    (tmp / "silo-c-policy.yaml").write_text(no_keys.format())
    root = tmp / "ws"
    provision(spec, root)
    alice_pub = " ".join((root / "kits" / "alice" / "signing.key.pub").read_text().split()[:2])
    (root / "kits" / "silo-c" / "policy.yaml").write_text(POLICY.format(alice_key=alice_pub))
    ws = open_workspace(root)
    data = tmp / "data"
    data.mkdir()
    import numpy as np

    rng = np.random.default_rng(0)
    for silo in SILOS:
        path = data / f"{silo}.npz"
        np.savez(path, x=rng.random((20, 64), dtype=np.float32), y=rng.integers(0, 10, 20))
        add_dataset(ws.kit(silo), "data", path, Classification.SENSITIVE)
        secret = data / f"{silo}-secret.txt"
        secret.write_text(SECRET)
        add_dataset(ws.kit(silo), "secret", secret, Classification.SENSITIVE)
    scratch = tmp / "jobs"
    scratch.mkdir()
    up(root)
    try:
        yield Attackable(root=root, workspace=ws, scratch=scratch)
    finally:
        down(root)
