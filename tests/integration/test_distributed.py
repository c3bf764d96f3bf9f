"""A silo step on two ranks (torch.distributed) through the real processes.

Each silo's agent starts the job worker in its sandbox and control group; the worker
starts two ranks with torch's launcher. The federation's model equals its ``fedsilo sim``
twin (one process per silo) to float tolerance: the ranks split every batch and average
their gradients, so only the order of the sums differs. Cancelling the job stops every
rank of every silo.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedsilo.api import JobState, OrchestratorClient
from fedsilo.audit import audit_path, read_log
from fedsilo.jobs import load_job
from fedsilo.pipelines import simulate, workspace_inputs
from fedsilo.runtime import down, up
from fedsilo.tensors import load_parameters
from tests.integration.conftest import Federation, make_federation, write_job

pytestmark = pytest.mark.integration

DDP_TASK = '''
"""Digits, trained by every rank of the silo's step on its share of each batch."""
import time

import numpy as np
import torch
from torch import nn


def _load(path):
    with np.load(path, allow_pickle=False) as data:
        return torch.from_numpy(data["x"]).float(), torch.from_numpy(data["y"]).long()


def model(ctx):
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def train(model, ctx):
    time.sleep(float(ctx.hyperparameters.extra.get("sleep", 0)))
    x, y = _load(ctx.input("train"))
    hp, ranks = ctx.hyperparameters, ctx.distributed
    net = ranks.wrap(model)
    opt = torch.optim.SGD(net.parameters(), lr=hp.lr)
    g = torch.Generator().manual_seed(ctx.seed)
    seen = 0
    for _ in range(hp.epochs):
        for share in ranks.batches(len(x), hp.batch_size, generator=g):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x[share]), y[share])
            (loss * ranks.weight(len(share), min(hp.batch_size, len(x)))).backward()
            opt.step()
            seen += len(share)
    return {"num_samples": seen // hp.epochs, "ranks": float(ranks.world_size)}


def evaluate(model, ctx):
    x, y = _load(ctx.input("test"))
    logits = model(x)
    acc = (logits.argmax(1) == y).float().mean()
    return {"accuracy": float(acc), "num_samples": len(x)}
'''

SILOS = "[silo-a, silo-b]"


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    fed = make_federation(tmp_path_factory.mktemp("ranks"), "ranks", compute=", threads: 2")
    up(fed.root)
    try:
        yield fed
    finally:
        down(fed.root)


def _submit(fed: Federation, folder: Path, *, rounds: int = 2, extra: str = "") -> str:
    write_job(
        folder,
        rounds=rounds,
        extra=extra,
        silos=SILOS,
        resources="{workers: 2}",
        metrics="[accuracy, ranks]",
    )
    (folder / "task" / "task.py").write_text(DDP_TASK)
    spec, code_dir = load_job(folder / "job.yaml")
    with OrchestratorClient(fed.submitter) as client:
        return client.submit(spec, code_dir, signing_key=fed.key)


def _rank_processes(*, launchers: bool = False) -> set[int]:
    """The ranks now running; with ``launchers``, torch's launchers of them too.

    A launcher's command line names the rank module as well (it is its argument), so a
    rank is told from its launcher by the launcher's own module.
    """
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"fedsilo.silo._rank" not in cmdline:
                continue
            if launchers or b"torch.distributed.run" not in cmdline:
                found.add(int(entry.name))
    return found


def test_a_two_rank_job_gives_its_simulations_model(federation: Federation, tmp_path: Path) -> None:
    folder = tmp_path / "ddp"
    job_id = _submit(federation, folder)
    with OrchestratorClient(federation.submitter) as client:
        info = client.wait(job_id, timeout=300)
        assert info.state is JobState.SUCCEEDED, info.error
        client.download_model(job_id, tmp_path / "federation.safetensors")
    spec, code_dir = load_job(folder / "job.yaml")
    inputs = workspace_inputs(federation.root, spec)
    sim = simulate(spec, code_dir, inputs, work_root=tmp_path / "sim")
    for r in info.history[1:]:  # every rank's samples count; the ranks were two
        for silo, metrics in r.train.items():
            assert metrics["ranks"] == 2.0
            assert metrics["num_samples"] == sim.history[r.round - 1].train[silo]["num_samples"]
    federated = load_parameters(tmp_path / "federation.safetensors")
    for name, value in sim.parameters.items():
        np.testing.assert_allclose(federated[name], value, rtol=1e-4, atol=1e-5)
    for silo in ("silo-a", "silo-b"):
        log = read_log(audit_path(federation.workspace.kit(silo).storage_path))
        (started,) = [
            e.data for e in log if e.event == "job.started" and e.data.get("job_id") == job_id
        ]
        assert str(started["resources"]).startswith("2 ranks x 1 threads")


def test_cancelling_a_two_rank_job_stops_every_rank(federation: Federation, tmp_path: Path) -> None:
    before = _rank_processes(launchers=True)
    job_id = _submit(federation, tmp_path / "long", rounds=1, extra=", extra: {sleep: 600}")
    deadline = time.monotonic() + 180
    while len(_rank_processes() - before) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(_rank_processes() - before) == 4, "two silos should each run two ranks"
    ranks = _rank_processes(launchers=True) - before  # and a launcher each
    with OrchestratorClient(federation.submitter) as client:
        while client.job(job_id).current_round < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        started = time.monotonic()
        assert client.cancel(job_id)
        while _rank_processes(launchers=True) & ranks and time.monotonic() - started < 10:
            time.sleep(0.05)
        assert not _rank_processes(launchers=True) & ranks, "ranks outlived the cancel"
        assert time.monotonic() - started < 5
        assert client.wait(job_id, timeout=30).state is JobState.CANCELLED
