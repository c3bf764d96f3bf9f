"""Fashion-MNIST: a small CNN, federated across silos that each hold a share of the images.

Each silo's datasets are ``.npz`` shards from ``fedsilo example fashion-mnist prepare``:
``x`` (uint8, N x 28 x 28 grey levels) and ``y`` (int64 class 0-9). The network has no
BatchNorm, so its state is weights only and FedAvg, FedProx and FedAdam all average the
same thing.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedsilo.task import Context

_MEAN, _STD = 0.2860, 0.3530  # of Fashion-MNIST's training images
_EVAL_BATCH = 1000


@lru_cache(maxsize=4)
def _load(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    with np.load(path, allow_pickle=False) as data:
        x = torch.from_numpy(data["x"]).float().div_(255.0).sub_(_MEAN).div_(_STD)
        return x.unsqueeze(1), torch.from_numpy(data["y"]).long()


def model(ctx: Context) -> nn.Module:
    """Two 5x5 convolutions (16 and 32 channels) with max-pooling, then two dense layers."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def train(model: nn.Module, ctx: Context) -> dict[str, float]:
    """Mini-batch SGD with momentum over this silo's training shard."""
    x, y = _load(ctx.input("train"))
    hp = ctx.hyperparameters
    momentum = float(hp.extra.get("momentum", 0.9))
    optimizer = torch.optim.SGD(model.parameters(), lr=hp.lr, momentum=momentum)
    generator = torch.Generator().manual_seed(ctx.seed)
    total, batches = 0.0, 0
    for _ in range(hp.epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), hp.batch_size):
            idx = order[start : start + hp.batch_size]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            total += loss.item()
            batches += 1
    return {"loss": total / max(batches, 1), "num_samples": len(x)}


def evaluate(model: nn.Module, ctx: Context) -> dict[str, float]:
    """Loss and accuracy on this silo's test shard."""
    x, y = _load(ctx.input("test"))
    loss, correct = 0.0, 0
    for start in range(0, len(x), _EVAL_BATCH):
        logits = model(x[start : start + _EVAL_BATCH])
        target = y[start : start + _EVAL_BATCH]
        loss += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(dim=1) == target).sum())
    return {"loss": loss / len(x), "accuracy": correct / len(x), "num_samples": len(x)}
