"""Handwritten digits (scikit-learn's 8x8 digits): a small network, federated.

This is a complete fedsilo task module: ``model``, ``train`` and ``evaluate`` are all the
platform needs. Each silo's datasets are ``.npz`` files holding ``x`` (float32, N x 64,
scaled to [0, 1]) and ``y`` (int64 labels 0-9).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedsilo.task import Context


def _load(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    with np.load(path, allow_pickle=False) as data:
        return torch.from_numpy(data["x"]).float(), torch.from_numpy(data["y"]).long()


def model(ctx: Context) -> nn.Module:
    """A two-layer perceptron: 64 pixels in, 10 digits out."""
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def train(model: nn.Module, ctx: Context) -> dict[str, float]:
    """Mini-batch SGD with momentum over this silo's training set."""
    x, y = _load(ctx.input("train"))
    hp = ctx.hyperparameters
    optimizer = torch.optim.SGD(model.parameters(), lr=hp.lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(ctx.seed)
    total, batches = 0.0, 0
    for _ in range(hp.epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), hp.batch_size):
            idx = order[start : start + hp.batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            total += loss.item()
            batches += 1
    return {"loss": total / max(batches, 1), "num_samples": len(x)}


def evaluate(model: nn.Module, ctx: Context) -> dict[str, float]:
    """Loss and accuracy on this silo's test set."""
    x, y = _load(ctx.input("test"))
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, y)
    accuracy = (logits.argmax(dim=1) == y).float().mean()
    return {"loss": float(loss), "accuracy": float(accuracy), "num_samples": len(x)}
