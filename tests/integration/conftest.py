"""Fixtures that provision real workspaces and start real processes on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedsilo.api import OrchestratorClient
from fedsilo.config import Classification, Kit, Workspace, open_workspace
from fedsilo.errors import FedsiloError
from fedsilo.jobs import load_private_key
from fedsilo.provisioning import provision
from fedsilo.quickstart._quickstart import _split_digits
from fedsilo.runtime import down, free_port_block, up
from fedsilo.storage import add_dataset

SILOS = ("silo-a", "silo-b", "silo-c")

TASK = '''
"""Digits task used by the integration tests; ``extra.sleep`` slows training down."""
import time

import numpy as np
import torch
from torch import nn


def _load(path):
    with np.load(path, allow_pickle=False) as data:
        return torch.from_numpy(data["x"]).float(), torch.from_numpy(data["y"]).long()


def model(ctx):
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 10))


def train(model, ctx):
    time.sleep(float(ctx.hyperparameters.extra.get("sleep", 0)))
    x, y = _load(ctx.input("train"))
    hp = ctx.hyperparameters
    opt = torch.optim.SGD(model.parameters(), lr=hp.lr)
    g = torch.Generator().manual_seed(ctx.seed)
    for _ in range(hp.epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), hp.batch_size):
            idx = order[i : i + hp.batch_size]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return {"num_samples": len(x)}


def evaluate(model, ctx):
    x, y = _load(ctx.input("test"))
    logits = model(x)
    acc = (logits.argmax(1) == y).float().mean()
    return {"accuracy": float(acc), "loss": float(nn.functional.cross_entropy(logits, y)),
            "num_samples": len(x)}
'''


PORT_BLOCK = 16
"""Ports a federation of the tests may use from its orchestrator's: each silo's approval
endpoint listens at the orchestrator's port + 1 + the silo's index."""


def free_port() -> int:
    """An orchestrator port whose next ``PORT_BLOCK`` ports are free too."""
    return free_port_block(PORT_BLOCK)


def write_federation(
    folder: Path,
    name: str = "itest",
    silos: tuple[str, ...] = SILOS,
    compute: str = "",
    admins: tuple[str, ...] = (),
) -> Path:
    """A federation spec; ``compute`` adds keys to every silo's compute (``, threads: 2``),
    ``admins`` names its administrators (kits of their own)."""
    silo_yaml = "".join(
        f"  - name: {s}\n    storage: {{root: storage/{s}}}\n"
        f"    compute: {{name: {s}-cpu{compute}}}\n"
        for s in silos
    )
    spec = folder / f"{name}.yaml"
    spec.write_text(
        f"name: {name}\norchestrator:\n  host: 127.0.0.1\n  port: {free_port()}\n"
        "  storage: {root: storage/orchestrator}\n  compute: {name: orchestrator-cpu}\n"
        f"silos:\n{silo_yaml}submitters: [alice]\n"
        + (f"admins: [{', '.join(admins)}]\n" if admins else "")
    )
    return spec


def write_job(folder: Path, *, rounds: int = 3, extra: str = "", **overrides: str) -> Path:
    (folder / "task").mkdir(parents=True, exist_ok=True)
    (folder / "task" / "task.py").write_text(TASK)
    lines = {
        "name": "digits",
        "code": "task",
        "silos": f"[{', '.join(SILOS)}]",
        "inputs": "{train: digits-train, test: digits-test}",
        "rounds": str(rounds),
        "outputs": "{model: {classification: intermediate}, "
        "metrics: {classification: intermediate}}",
        "hyperparameters": "{lr: 0.1, epochs: 1, batch_size: 16, seed: 7" + extra + "}",
        **overrides,
    }
    job = folder / "job.yaml"
    job.write_text("".join(f"{k}: {v}\n" for k, v in lines.items()))
    return job


@dataclass
class Federation:
    """A provisioned workspace with digits shards in every silo."""

    root: Path
    workspace: Workspace
    scratch: Path

    @property
    def submitter(self) -> Kit:
        return self.workspace.kit(self.workspace.submitter_name)

    @property
    def key(self) -> Ed25519PrivateKey:
        """The submitter's code-signing key, which every silo's default policy trusts."""
        return load_private_key(self.submitter.signing_key_file)


def make_federation(
    tmp: Path, name: str = "itest", compute: str = "", admins: tuple[str, ...] = ()
) -> Federation:
    root = tmp / name
    provision(write_federation(tmp, name, compute=compute, admins=admins), root)
    ws = open_workspace(root)
    shards = _split_digits(tmp / f"{name}-data")
    for silo in SILOS:
        for role in ("train", "test"):
            add_dataset(
                ws.kit(silo), f"digits-{role}", shards[silo][role], Classification.SENSITIVE
            )
    scratch = tmp / f"{name}-scratch"
    scratch.mkdir()
    return Federation(root=root, workspace=ws, scratch=scratch)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """One federation up for the whole module."""
    fed = make_federation(tmp_path_factory.mktemp("fed"))
    up(fed.root)
    try:
        yield fed
    finally:
        down(fed.root)


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Federation]:
    """A federation of the test's own, stopped at the end whatever happens."""
    fed = make_federation(tmp_path, "own")
    try:
        yield fed
    finally:
        down(fed.root)


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip()


def stop_all(procs: list[subprocess.Popen[bytes]], timeout: float = 20) -> None:
    """Stop processes started in sessions of their own: SIGTERM, then SIGKILL."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_online(fed: Federation, logs: list[Path], timeout: float = 120) -> None:
    """Wait until every silo of ``fed`` is online; fail showing the ends of ``logs``."""
    deadline = time.monotonic() + timeout
    with OrchestratorClient(fed.submitter, timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                if all(s.online for s in client.status().silos):
                    return
            except FedsiloError:  # not up yet
                pass
            time.sleep(0.5)
    shown = "\n".join(f"--- {log.name}\n{log.read_text()[-2000:]}" for log in logs)
    pytest.fail(f"the federation did not come up within {timeout:g} s:\n{shown}")
