"""A job step on several ranks: torch's launcher inside the sandbox, one model out.

A real job worker (``WorkerProcess``, under bubblewrap when it is installed) is given
``workers: 2``: it starts the ranks with torch's launcher and relays every command to
them. The model it returns equals one process's to float tolerance (the ranks split each
batch and average their gradients); a rank that fails takes the step down, names itself,
and leaves no process behind.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from fedsilo.errors import TaskFailed
from fedsilo.jobs import Hyperparameters
from fedsilo.silo._protocol import Evaluate, Fit, Init, Prepare
from fedsilo.silo._sandbox import SandboxSpec, bwrap_path
from fedsilo.silo._workerproc import WorkerProcess
from fedsilo.task import SiloRunner, load_task
from fedsilo.tensors import load_parameters

TASK = """
import torch
from torch import nn


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(90, 8, generator=g)
    return x, (x.sum(1) > 0).long()


def model(ctx):
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))


def train(model, ctx):
    fail = ctx.hyperparameters.extra.get("fail_rank", -1)
    if ctx.distributed.rank == fail:
        raise RuntimeError(f"rank {ctx.distributed.rank} gives up")
    x, y = _data()
    ranks = ctx.distributed
    net = ranks.wrap(model)
    opt = torch.optim.SGD(net.parameters(), lr=0.2)
    g = torch.Generator().manual_seed(ctx.seed)
    seen = 0
    for _ in range(2):
        for share in ranks.batches(len(x), 16, generator=g):  # the last batch is uneven
            batch = min(16, len(x))
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x[share]), y[share])
            (loss * ranks.weight(len(share), batch)).backward()
            opt.step()
            seen += len(share)
    return {"num_samples": seen / 2, "world": float(ranks.world_size)}


def evaluate(model, ctx):
    x, y = _data()
    return {"accuracy": float((model(x).argmax(1) == y).float().mean()), "num_samples": len(x)}
"""


def _ranked_processes() -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"fedsilo.silo._rank" in (entry / "cmdline").read_bytes():
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


def _worker(tmp_path: Path, extra: dict[str, object]) -> tuple[WorkerProcess, dict[str, object]]:
    code, work, params = tmp_path / "code", tmp_path / "work", tmp_path / "params"
    for folder in (code, work, params):
        folder.mkdir()
    (code / "task.py").write_text(TASK)
    sandbox = SandboxSpec(code_dir=code, writable=(work, params)) if bwrap_path() else None
    worker = WorkerProcess(
        silo="silo-a", cwd=work, log_file=tmp_path / "worker.log", sandbox=sandbox
    )
    init = {
        "code_dir": str(code),
        "entrypoint": "task",
        "silo": "silo-a",
        "inputs": {},
        "work_dir": str(work),
        "hyperparameters": {"seed": 5, "extra": extra},
        "rounds": 1,
        "privacy": {},
        "threads": 1,
        "device": "cpu",
        "workers": 2,
    }
    return worker, init


def test_two_ranks_train_the_model_one_process_would(tmp_path: Path) -> None:
    worker, init = _worker(tmp_path, {})
    params = tmp_path / "params"
    try:
        worker.request(Init(**init))
        worker.request(Prepare(out=str(params / "initial.safetensors")))
        reply = worker.request(
            Fit(
                round=1,
                params=str(params / "initial.safetensors"),
                out=str(params / "update.safetensors"),
                evaluate_first=False,
                config={},
            )
        )
        evaluated = worker.request(Evaluate(round=1, params=str(params / "update.safetensors")))
    finally:
        worker.stop()
    assert reply.train_metrics == {"num_samples": 90.0, "world": 2.0}
    assert evaluated.eval_metrics["num_samples"] == 90
    task = load_task(tmp_path / "code", "task")
    alone = SiloRunner(
        task,
        silo="silo-a",
        inputs={},
        work_dir=tmp_path / "alone",
        hyperparameters=Hyperparameters(seed=5),
    )
    initial = alone.prepare()
    expected, metrics = alone.fit(1, initial)
    assert metrics == {"num_samples": 90.0, "world": 1.0}
    ranked = load_parameters(params / "update.safetensors")
    assert set(ranked) == set(expected)
    assert any(not np.array_equal(expected[k], initial[k]) for k in initial)  # it trained
    for name, value in expected.items():
        np.testing.assert_allclose(ranked[name], value, rtol=1e-5, atol=1e-6)


def test_a_failing_rank_takes_the_step_down_and_leaves_no_process(tmp_path: Path) -> None:
    before = _ranked_processes()
    worker, init = _worker(tmp_path, {"fail_rank": 1})
    params = tmp_path / "params"
    try:
        worker.request(Init(**init))
        worker.request(Prepare(out=str(params / "initial.safetensors")))
        with pytest.raises(TaskFailed, match="rank 1 failed: RuntimeError: rank 1 gives up"):
            worker.request(
                Fit(
                    round=1,
                    params=str(params / "initial.safetensors"),
                    out=str(params / "update.safetensors"),
                    evaluate_first=False,
                    config={},
                )
            )
        deadline = time.monotonic() + 10
        while worker.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not worker.alive(), "the job worker outlived its ranks"
    finally:
        worker.stop()
    assert _ranked_processes() - before == set()
    assert os.path.exists(tmp_path / "worker.log")


DP_TASK = """
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=g)
    return x, (x.sum(1) > 0).long()


def model(ctx):
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))


def train(model, ctx):
    x, y = _data()
    loader = DataLoader(TensorDataset(x, y), batch_size=20)  # the whole data, in every rank
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer, loader = ctx.privacy.make_private(model, optimizer, loader)
    seen = 0
    for xb, yb in loader:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        optimizer.step()
        seen += len(xb)
    return {"num_samples": seen}


def evaluate(model, ctx):
    return {"num_samples": 1}
"""

PRIVACY = {"local": {"target_epsilon": 3.0, "target_delta": 1e-5, "max_grad_norm": 1.0}}


def test_dp_sgd_on_two_ranks_spends_what_one_process_would(tmp_path: Path) -> None:
    from fedsilo.privacy import PrivacySpec

    worker, init = _worker(tmp_path, {})
    (tmp_path / "code" / "task.py").write_text(DP_TASK)
    params = tmp_path / "params"
    epsilons = []
    try:
        worker.request(Init(**{**init, "rounds": 2, "privacy": PRIVACY}))
        worker.request(Prepare(out=str(params / "initial.safetensors")))
        current = params / "initial.safetensors"
        for round_ in (1, 2):
            reply = worker.request(
                Fit(
                    round=round_,
                    params=str(current),
                    out=str(params / f"update-{round_}.safetensors"),
                    evaluate_first=False,
                    config={},
                )
            )
            epsilons.append(reply.train_metrics["epsilon"])
            current = params / f"update-{round_}.safetensors"
    finally:
        worker.stop()
    task = load_task(tmp_path / "code", "task")
    alone = SiloRunner(
        task,
        silo="silo-a",
        inputs={},
        work_dir=tmp_path / "alone",
        hyperparameters=Hyperparameters(seed=5),
        rounds=2,
        privacy=PrivacySpec.model_validate(PRIVACY),
    )
    start = alone.prepare()
    expected = []
    for round_ in (1, 2):
        start, metrics = alone.fit(round_, start)
        expected.append(metrics["epsilon"])
    assert epsilons == pytest.approx(expected, rel=1e-9)
    assert 0 < epsilons[0] < epsilons[1] <= 3.0 * 1.01
