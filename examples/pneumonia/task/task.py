"""PneumoniaMNIST chest X-rays: a three-convolution CNN, federated across hospitals.

Each silo's datasets are ``.npz`` shards from ``fedsilo example pneumonia prepare``:
``x`` (uint8, N x 28 x 28 grey levels) and ``y`` (int64: 0 normal, 1 pneumonia). The
network follows the three-convolution design of the Azure ML pneumonia sample, sized
for 28 x 28 images, with no BatchNorm, so the same model trains with DP-SGD.

Training weighs the two classes by their inverse frequency in the silo's own shard, so
each hospital's mix of normal and pneumonia cases does not decide the threshold. When
the job asks for local DP (``privacy: {local: ...}``), the model, optimizer and data
loader go through ``ctx.privacy.make_private``, and fedsilo reports the epsilon spent.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import precision_score, recall_score, roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedsilo.task import Context

_MEAN, _STD = 0.5766, 0.1646  # of PneumoniaMNIST's training images


@lru_cache(maxsize=8)
def _load(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    with np.load(path, allow_pickle=False) as data:
        x = torch.from_numpy(data["x"]).float().div_(255.0).sub_(_MEAN).div_(_STD)
        return x.unsqueeze(1), torch.from_numpy(data["y"]).float()


def model(ctx: Context) -> nn.Module:
    """Three 3x3 convolutions (w, 2w, 4w channels; w = ``extra.width``, 32 by default),
    each followed by max-pooling, then two dense layers and one logit: pneumonia."""
    w = int(ctx.hyperparameters.extra.get("width", 32))
    return nn.Sequential(
        nn.Conv2d(1, w, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 14 x 14
        nn.Conv2d(w, 2 * w, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 7 x 7
        nn.Conv2d(2 * w, 4 * w, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 3 x 3
        nn.Flatten(),
        nn.Dropout(0.25),
        nn.Linear(4 * w * 3 * 3, 128),
        nn.ReLU(),
        nn.Linear(128, 1),
    )


def _shift(x: torch.Tensor, generator: torch.Generator, pixels: int = 2) -> torch.Tensor:
    """Each image moved by up to ``pixels`` in each direction (zero padding)."""
    n = len(x)
    padded = nn.functional.pad(x, (pixels, pixels, pixels, pixels))
    dx = torch.randint(0, 2 * pixels + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pixels + 1, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(28).view(1, 28)).view(n, 1, 28, 1)
    cols = (dx.view(n, 1) + torch.arange(28).view(1, 28)).view(n, 1, 1, 28)
    batch = torch.arange(n).view(n, 1, 1, 1)
    channel = torch.zeros(1, 1, 1, 1, dtype=torch.long)
    return padded[batch, channel, rows, cols]


def train(model: nn.Module, ctx: Context) -> dict[str, float]:
    """Class-weighted binary cross-entropy, with small random shifts of the images.

    The optimizer is Adam, or SGD with momentum 0.9 when ``extra.optimizer`` is ``sgd``:
    under DP-SGD's noise, Adam's per-weight scaling amplifies the noise on weights whose
    true gradient is small.
    """
    x, y = _load(ctx.input("train"))
    hp = ctx.hyperparameters
    positives = float(y.sum())
    pos_weight = torch.tensor((len(y) - positives) / max(positives, 1.0))
    generator = torch.Generator().manual_seed(ctx.seed)
    loader = DataLoader(
        TensorDataset(x, y), batch_size=hp.batch_size, shuffle=True, generator=generator
    )
    optimizer: torch.optim.Optimizer
    if hp.extra.get("optimizer", "adam") == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=hp.lr, momentum=0.9)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=hp.lr)
    net = model
    if ctx.privacy is not None:
        net, optimizer, loader = ctx.privacy.make_private(model, optimizer, loader)
    total, batches = 0.0, 0
    for _ in range(hp.epochs):
        for xb, yb in loader:
            if len(xb) == 0:  # Poisson sampling under DP can draw an empty batch
                continue
            optimizer.zero_grad()
            logits = net(_shift(xb, generator)).squeeze(1)
            loss = nn.functional.binary_cross_entropy_with_logits(logits, yb, pos_weight=pos_weight)
            loss.backward()
            optimizer.step()
            total += loss.item()
            batches += 1
    return {"loss": total / max(batches, 1), "num_samples": len(x)}


def evaluate(model: nn.Module, ctx: Context) -> dict[str, float]:
    """Accuracy, AUC, precision and recall (pneumonia as positive) on this silo's test shard."""
    x, y = _load(ctx.input("test"))
    scores = torch.sigmoid(model(x).squeeze(1)).numpy()
    truth = y.numpy().astype(np.int64)
    predicted = (scores >= 0.5).astype(np.int64)
    metrics = {
        "accuracy": float((predicted == truth).mean()),
        "precision": float(precision_score(truth, predicted, zero_division=0)),
        "recall": float(recall_score(truth, predicted, zero_division=0)),
        "num_samples": len(truth),
    }
    if len(np.unique(truth)) == 2:
        metrics["auc"] = float(roc_auc_score(truth, scores))
    return metrics
