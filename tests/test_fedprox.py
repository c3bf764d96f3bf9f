"""FedProx's proximal term is applied by the silo runner, without changing task code."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedsilo.jobs import Hyperparameters
from fedsilo.task import SiloRunner, load_task

TASK = """
import numpy as np
import torch
from torch import nn


def model(ctx):
    return nn.Linear(4, 1)


def train(model, ctx):
    with np.load(ctx.input("train")) as d:
        x, y = torch.from_numpy(d["x"]), torch.from_numpy(d["y"])
    opt = torch.optim.SGD(model.parameters(), lr=ctx.hyperparameters.lr)
    for _ in range(ctx.hyperparameters.epochs):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return {"num_samples": len(x)}


def evaluate(model, ctx):
    return {"num_samples": 1}
"""


def _runner(tmp_path: Path, epochs: int) -> SiloRunner:
    (tmp_path / "code").mkdir(exist_ok=True)
    (tmp_path / "code" / "prox_task.py").write_text(TASK)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x @ np.array([[3.0], [-2.0], [1.0], [5.0]], dtype=np.float32)) + 4.0
    np.savez(tmp_path / "train.npz", x=x, y=y.astype(np.float32))
    return SiloRunner(
        load_task(tmp_path / "code", "prox_task"),
        silo="s",
        inputs={"train": tmp_path / "train.npz"},
        work_dir=tmp_path / "work",
        hyperparameters=Hyperparameters(lr=0.05, epochs=epochs, seed=3),
    )


def _distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return float(sum(np.sum((a[k] - b[k]) ** 2) for k in a) ** 0.5)


def test_the_proximal_term_keeps_local_training_near_the_global_model(tmp_path: Path) -> None:
    runner = _runner(tmp_path, epochs=50)
    start = runner.prepare()
    plain, _ = runner.fit(1, start)
    prox, _ = runner.fit(1, start, {"proximal_mu": 5.0})
    assert _distance(prox, start) < 0.5 * _distance(plain, start)


def test_mu_zero_is_plain_training(tmp_path: Path) -> None:
    runner = _runner(tmp_path, epochs=5)
    start = runner.prepare()
    plain, _ = runner.fit(1, start)
    zero, _ = runner.fit(1, start, {"proximal_mu": 0.0})
    for key in plain:
        np.testing.assert_array_equal(plain[key], zero[key])


def test_one_sgd_step_matches_the_fedprox_gradient_by_hand(tmp_path: Path) -> None:
    runner = _runner(tmp_path, epochs=1)
    start = runner.prepare()
    moved = {k: v + 1.0 for k, v in start.items()}  # train from a point away from the anchor
    plain, _ = runner.fit(1, moved)
    prox, _ = runner.fit(1, moved, {"proximal_mu": 2.0})
    # the anchor is the model trained from, so w - w_global is zero at the first step
    for key in plain:
        np.testing.assert_allclose(prox[key], plain[key], rtol=1e-6, atol=1e-6)
