"""Local training with DP-SGD (Opacus, through fedsilo's LocalDP) against the same plain training.

For each model, plain SGD and DP-SGD train the same model (same initial weights), on the
same data, for the same number of optimizer steps, in this one process:

* ``cnn``: a small convolutional network for 28x28 grey images (two 5x5 convolutions with
  16 and 32 channels, each followed by ReLU and 2x2 max pooling, then 1568 -> 64 -> 10;
  114k parameters), on synthetic tensors: random images and labels, which is enough for
  a speed benchmark, since neither path's cost depends on the pixel values;
* ``mlp``: the quickstart's two-layer perceptron (64 -> 64 -> 10), built by the
  quickstart task module itself, on one silo's share of scikit-learn's 8x8 digits as the
  quickstart deals them.

The DP path is the one a silo runs: ``LocalDP.make_private`` (per-sample gradients,
clipping to ``max_grad_norm`` 1.0, Gaussian noise with multiplier 1.0 drawn from a
generator seeded from the OS's secure source, Poisson sampling, the RDP accountant).
Poisson sampling gives batches whose size varies around the plain batch size; both paths
take ``epochs x len(loader)`` steps. Torch runs on one thread, as in a silo's job worker.
Each measurement is the best of ``--repeats`` interleaved runs, after one untimed epoch of
each path.

Usage: python bench/dp_sgd.py [--repeats 5] [--cnn-samples 2048] [--cnn-epochs 2]
       [--mlp-epochs 20] [--json]
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fedsilo.quickstart
from fedsilo.jobs import Hyperparameters
from fedsilo.privacy import LocalDP, LocalDPSpec, silence_opacus_warnings
from fedsilo.quickstart._quickstart import SILOS, _split_digits
from fedsilo.task import Context, load_task

DP = LocalDPSpec(noise_multiplier=1.0, max_grad_norm=1.0)


@dataclass(frozen=True)
class Case:
    """One model and its data, trained both ways."""

    name: str
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    batch_size: int
    epochs: int
    lr: float


def small_cnn() -> nn.Module:
    """A LeNet-style network for 1x28x28 inputs; no BatchNorm, which DP-SGD cannot use."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def _cnn_case(samples: int, epochs: int) -> Case:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(samples, 1, 28, 28, generator=generator)
    y = torch.randint(0, 10, (samples,), generator=generator)
    torch.manual_seed(0)
    return Case("cnn", small_cnn(), x, y, batch_size=64, epochs=epochs, lr=0.05)


def _mlp_case(folder: Path, epochs: int) -> Case:
    shard = _split_digits(folder)[SILOS[0]]["train"]
    with np.load(shard, allow_pickle=False) as data:
        x, y = torch.from_numpy(data["x"]).float(), torch.from_numpy(data["y"]).long()
    task = load_task(Path(fedsilo.quickstart.__file__).parent / "task", "task")
    ctx = Context(silo=SILOS[0], inputs={}, work_dir=folder, hyperparameters=Hyperparameters())
    torch.manual_seed(0)
    return Case("mlp", task.model(ctx), x, y, batch_size=32, epochs=epochs, lr=0.1)


def _loader(case: Case) -> DataLoader[Any]:
    dataset = TensorDataset(case.x, case.y)
    return DataLoader(
        dataset,
        batch_size=case.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(1),
    )


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, loader: Any, epochs: int) -> int:
    loss_fn = nn.CrossEntropyLoss()
    steps = 0
    model.train()
    for _ in range(epochs):
        for xb, yb in loader:
            optimizer.zero_grad()
            loss_fn(model(xb), yb).backward()
            optimizer.step()
            steps += 1
    return steps


@dataclass(frozen=True)
class Run:
    """What one training run did: its optimizer steps, and the epsilon DP-SGD spent."""

    steps: int
    epsilon: float | None = None


def plain_run(case: Case, epochs: int) -> Run:
    """Plain mini-batch SGD from the case's initial weights."""
    model = copy.deepcopy(case.model)
    optimizer = torch.optim.SGD(model.parameters(), lr=case.lr)
    return Run(_train(model, optimizer, _loader(case), epochs))


def dp_run(case: Case, epochs: int) -> Run:
    """DP-SGD through fedsilo's LocalDP, as a silo's task calls it, from the same weights."""
    model = copy.deepcopy(case.model)
    optimizer = torch.optim.SGD(model.parameters(), lr=case.lr)
    local = LocalDP(DP, rounds=1, epochs=epochs)
    with silence_opacus_warnings():
        module, dp_optimizer, loader = local.make_private(model, optimizer, _loader(case), round_=1)
        steps = _train(module, dp_optimizer, loader, epochs)
        local.close()
    return Run(steps, local.epsilon())


def _best(repeats: int, runs: dict[str, Callable[[], Run]]) -> dict[str, tuple[float, Run]]:
    """Best seconds of each run, with what it did; interleaved so noise hits them alike."""
    best: dict[str, tuple[float, Run]] = {}
    for _ in range(repeats):
        for key, run in runs.items():
            gc.collect()
            started = time.perf_counter()
            done = run()
            seconds = time.perf_counter() - started
            if key not in best or seconds < best[key][0]:
                best[key] = (seconds, done)
    steps = {key: done.steps for key, (_, done) in best.items()}
    if len(set(steps.values())) != 1:
        raise RuntimeError(f"the two paths took different numbers of steps: {steps}")
    return best


def measure(case: Case, repeats: int) -> dict[str, Any]:
    """Both paths on ``case``: seconds, steps, per-step times, samples/s, the ratio."""
    plain_run(case, 1)  # untimed warm-up of each path: first-call costs stay out
    dp_run(case, 1)
    best = _best(
        repeats,
        {"plain": lambda: plain_run(case, case.epochs), "dp": lambda: dp_run(case, case.epochs)},
    )
    (plain_s, plain), (dp_s, dp) = best["plain"], best["dp"]
    steps = plain.steps
    return {
        "model": case.name,
        "parameters": sum(p.numel() for p in case.model.parameters()),
        "samples": len(case.x),
        "batch_size": case.batch_size,
        "steps": steps,
        "plain_s": plain_s,
        "dp_s": dp_s,
        "plain_ms_per_step": 1000 * plain_s / steps,
        "dp_ms_per_step": 1000 * dp_s / steps,
        "plain_samples_per_s": steps * case.batch_size / plain_s,
        "dp_samples_per_s": steps * case.batch_size / dp_s,
        "ratio": dp_s / plain_s,
        "epsilon": dp.epsilon,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cnn-samples", type=int, default=2048)
    parser.add_argument("--cnn-epochs", type=int, default=2)
    parser.add_argument("--mlp-epochs", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="print JSON lines instead")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedsilo-bench-dp-") as tmp:
        cases = [
            _cnn_case(args.cnn_samples, args.cnn_epochs),
            _mlp_case(Path(tmp), args.mlp_epochs),
        ]
        if not args.json:
            print(
                "| model | parameters | samples | batch | steps | plain | DP-SGD "
                "| plain per step | DP-SGD per step | DP-SGD / plain | epsilon spent |"
            )
            print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for case in cases:
            row = measure(case, args.repeats)
            if args.json:
                print(json.dumps(row), flush=True)
                continue
            print(
                f"| {row['model']} | {row['parameters']:,} | {row['samples']} "
                f"| {row['batch_size']} | {row['steps']} "
                f"| {row['plain_s']:.2f} s | {row['dp_s']:.2f} s "
                f"| {row['plain_ms_per_step']:.2f} ms | {row['dp_ms_per_step']:.2f} ms "
                f"| {row['ratio']:.1f} | {row['epsilon']:.2f} |",
                flush=True,
            )
    print(f"\n(bench took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
