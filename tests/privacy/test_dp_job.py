"""Local DP-SGD through the whole pipeline: budget over all rounds, epsilon per silo per round."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsilo.jobs import JobSpec
from fedsilo.pipelines import simulate
from fedsilo.quickstart._quickstart import _split_digits

DP_TASK = """
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def _data(path):
    with np.load(path, allow_pickle=False) as d:
        return torch.from_numpy(d["x"]).float(), torch.from_numpy(d["y"]).long()


def model(ctx):
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def train(model, ctx):
    x, y = _data(ctx.input("train"))
    hp = ctx.hyperparameters
    loader = DataLoader(TensorDataset(x, y), batch_size=hp.batch_size, shuffle=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=hp.lr)
    if ctx.privacy is not None:
        model, optimizer, loader = ctx.privacy.make_private(model, optimizer, loader)
    for _ in range(hp.epochs):
        for xb, yb in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            optimizer.step()
    return {"num_samples": len(x)}


def evaluate(model, ctx):
    x, y = _data(ctx.input("test"))
    logits = model(x)
    return {"accuracy": float((logits.argmax(1) == y).float().mean()), "num_samples": len(x)}
"""


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, Path]]]:
    tmp = tmp_path_factory.mktemp("dp")
    shards = _split_digits(tmp / "data")
    code = tmp / "code"
    code.mkdir()
    (code / "dp_task.py").write_text(DP_TASK)
    return code, shards


def _spec(privacy: dict[str, object], rounds: int = 3) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": "dp",
            "code": ".",
            "entrypoint": "dp_task",
            "silos": ["silo-a", "silo-b"],
            "inputs": {"train": "t", "test": "e"},
            "rounds": rounds,
            "hyperparameters": {"lr": 0.5, "epochs": 1, "batch_size": 64, "seed": 0},
            "privacy": privacy,
        }
    )


def test_epsilon_is_reported_per_silo_per_round_and_stays_within_the_target(
    digits: tuple[Path, dict[str, dict[str, Path]]], tmp_path: Path
) -> None:
    code, shards = digits
    spec = _spec({"local": {"target_epsilon": 4.0, "target_delta": 1e-5, "max_grad_norm": 1.0}})
    result = simulate(spec, code, {s: shards[s] for s in spec.silos}, work_root=tmp_path)
    for silo in spec.silos:
        spent = [r.train[silo]["epsilon"] for r in result.history]
        assert spent == sorted(spent) and spent[0] < spent[-1]  # never restarted per round
        assert spent[-1] <= 4.0 * 1.01
        assert spent[-1] > 4.0 * 0.8  # the budget covers the whole job, and is used
    assert result.final_metrics["accuracy"] > 0.3  # it still learns


def test_without_privacy_no_epsilon_is_reported(
    digits: tuple[Path, dict[str, dict[str, Path]]], tmp_path: Path
) -> None:
    code, shards = digits
    spec = _spec({}, rounds=1)
    result = simulate(spec, code, {s: shards[s] for s in spec.silos}, work_root=tmp_path)
    assert "epsilon" not in result.history[0].train["silo-a"]
