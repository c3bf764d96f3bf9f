"""Credit-card fraud (ULB): three models of the Azure ML sample, federated across banks.

Each silo's datasets are ``.npz`` shards from ``fedsilo example ccfraud prepare``: ``x``
(float32, N x 29: the PCA components V1-V28 and the amount), ``y`` (1 for a fraud),
``time``, ``hour`` and ``amount``, with the rows in time order. ``extra.model`` picks the
model:

* ``dense``: a feed-forward network on each transaction alone.
* ``lstm``: an LSTM over a window of the bank's consecutive transactions (the ``extra.window``
  rows up to and including the one scored), its last state scoring the last transaction.
* ``autoencoder``: an LSTM encoder-decoder over the same windows that learns to
  reconstruct the last transaction of windows ending in a normal one, the rows before it
  serving as context. The anomaly score of a transaction is the error of its
  reconstruction, each feature's squared error divided by a variance the model learns
  (see :class:`Autoencoder`). A score has no natural threshold, so the bank works to an
  alert budget: the ``extra.alert_rate`` share of its transactions with the highest
  scores (0.2 %, about the fraud rate) is flagged for review. Labels play no part in it.

Frauds are 0.17 % of the rows, so the two classifiers weigh each fraud ``extra.fraud_weight``
times a normal transaction in their binary cross-entropy. Every feature transform is fixed
in this code (the log of the amount over a constant, the hour of the day as a point on a
circle) rather than fitted to one silo's data, so every bank feeds the shared model the
same way. A window is a bank's stream in its shard's row order: time order within a
silo, and, in a pooled file, the silos' streams one after the other.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import (
    average_precision_score,
    precision_score,
    recall_score,
    roc_auc_score,
)
from torch import nn

from fedsilo.datasets import sliding_windows
from fedsilo.task import Context

_AMOUNT_SCALE = 5.0  # log(1 + amount) / 5 stays within about [0, 2] for every amount
_CLIP = 20.0  # the PCA components have rare values far out; a bound keeps them finite
_CHUNK = 4096
FEATURES = 31


@lru_cache(maxsize=8)
def _load(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N x 31: V1-V28, scaled log amount, hour as sine and cosine) and labels."""
    with np.load(path, allow_pickle=False) as data:
        x = np.clip(data["x"][:, :28].astype(np.float32), -_CLIP, _CLIP)
        amount = np.log1p(np.maximum(data["amount"], 0.0)) / _AMOUNT_SCALE
        angle = 2 * math.pi * (data["time"] % 86400.0) / 86400.0
        features = np.column_stack([x, amount, np.sin(angle), np.cos(angle)]).astype(np.float32)
        return torch.from_numpy(features), torch.from_numpy(data["y"].astype(np.float32))


class Dense(nn.Module):
    """Two hidden layers on one transaction (the last of its window); one logit."""

    window = 1

    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(FEATURES, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(),
            nn.Linear(hidden // 2, 1),
        )

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """A fraud logit per window (batch x window x features -> batch)."""
        return self.net(windows[:, -1]).squeeze(1)

    def score(self, windows: torch.Tensor) -> torch.Tensor:
        """The probability of fraud."""
        return torch.sigmoid(self(windows))


class Recurrent(nn.Module):
    """An LSTM over the window; its last hidden state gives the last transaction's logit."""

    def __init__(self, window: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.window = window
        self.lstm = nn.LSTM(FEATURES, hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, 1)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """A fraud logit per window."""
        _, (state, _) = self.lstm(windows)
        return self.out(self.dropout(state[-1])).squeeze(1)

    def score(self, windows: torch.Tensor) -> torch.Tensor:
        """The probability of fraud."""
        return torch.sigmoid(self(windows))


class Autoencoder(nn.Module):
    """LSTM encoder to a small code, LSTM decoder back over the window.

    What is learnt and scored is the reconstruction of the window's last transaction,
    the one scored: a fraud's error is not diluted by the normal transactions before
    it. Each feature's squared error is divided by its own variance, ``exp(log_var)``,
    a parameter trained with the rest (a Gaussian negative log-likelihood), so features
    the model reconstructs closely count for more than ones it cannot, and a component
    with a wide spread does not drown the others. The variances are part of the model,
    learnt from every bank's data and averaged by FedAvg like the weights, so all banks
    score with the same ones.
    """

    def __init__(self, window: int, hidden: int, latent: int) -> None:
        super().__init__()
        self.window = window
        self.encoder = nn.LSTM(FEATURES, hidden, batch_first=True)
        self.code = nn.Linear(hidden, latent)
        self.decoder = nn.LSTM(latent, hidden, batch_first=True)
        self.out = nn.Linear(hidden, FEATURES)
        self.log_var = nn.Parameter(torch.zeros(FEATURES))

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """The reconstructed windows."""
        _, (state, _) = self.encoder(windows)
        code = self.code(state[-1]).unsqueeze(1).expand(-1, windows.shape[1], -1)
        decoded, _ = self.decoder(code)
        return self.out(decoded)

    def score(self, windows: torch.Tensor) -> torch.Tensor:
        """The anomaly score and training loss: the last transaction's negative log-likelihood."""
        error = (self(windows)[:, -1] - windows[:, -1]).pow(2)
        return 0.5 * (error * torch.exp(-self.log_var) + self.log_var).mean(dim=1)


def model(ctx: Context) -> nn.Module:
    """The model ``extra.model`` names: ``dense``, ``lstm`` or ``autoencoder``."""
    extra = ctx.hyperparameters.extra
    kind = str(extra.get("model", "dense"))
    window = int(extra.get("window", 8))
    hidden = int(extra.get("hidden", 64 if kind == "dense" else 32))
    dropout = float(extra.get("dropout", 0.1))
    if kind == "dense":
        return Dense(hidden, dropout)
    if kind == "lstm":
        return Recurrent(window, hidden, dropout)
    if kind == "autoencoder":
        return Autoencoder(window, hidden, int(extra.get("latent", 8)))
    raise ValueError(
        f"hyperparameters.extra.model is {kind!r}; the models are: dense, lstm, autoencoder"
    )


def _windows(x: torch.Tensor, index: torch.Tensor, length: int) -> torch.Tensor:
    return x[index[:, -length:]]


def _scores(net: nn.Module, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    window = int(net.window)  # type: ignore[arg-type]
    parts = [
        net.score(_windows(x, index[i : i + _CHUNK], window))  # type: ignore[operator]
        for i in range(0, len(index), _CHUNK)
    ]
    return torch.cat(parts) if parts else torch.empty(0)


def train(model: nn.Module, ctx: Context) -> dict[str, float]:
    """Adam on this bank's transactions: weighted cross-entropy, or the anomaly score."""
    x, y = _load(ctx.input("train"))
    hp = ctx.hyperparameters
    window = int(model.window)  # type: ignore[arg-type]
    index = torch.from_numpy(sliding_windows(len(x), window))
    autoencoder = isinstance(model, Autoencoder)
    rows = torch.nonzero(y == 0).squeeze(1) if autoencoder else torch.arange(len(x))
    weight = torch.tensor(float(hp.extra.get("fraud_weight", 50.0)))
    optimizer = torch.optim.Adam(model.parameters(), lr=hp.lr)
    generator = torch.Generator().manual_seed(ctx.seed)
    total, batches = 0.0, 0
    for _ in range(hp.epochs):
        order = rows[torch.randperm(len(rows), generator=generator)]
        for start in range(0, len(order), hp.batch_size):
            batch = order[start : start + hp.batch_size]
            windows = _windows(x, index[batch], window)
            optimizer.zero_grad()
            if isinstance(model, Autoencoder):
                loss = model.score(windows).mean()
            else:
                loss = nn.functional.binary_cross_entropy_with_logits(
                    model(windows), y[batch], pos_weight=weight
                )
            loss.backward()
            optimizer.step()
            total += loss.item()
            batches += 1
    return {"loss": total / max(batches, 1), "num_samples": len(rows)}


def evaluate(model: nn.Module, ctx: Context) -> dict[str, float]:
    """Precision and recall of the flagged transactions, AUROC and AUPRC of the scores.

    The classifiers flag a transaction when its probability of fraud is above 0.5; the
    autoencoder flags the ``extra.alert_rate`` share of the transactions with the
    highest anomaly scores.
    """
    x, y = _load(ctx.input("test"))
    index = torch.from_numpy(sliding_windows(len(x), int(model.window)))  # type: ignore[arg-type]
    scores = _scores(model, x, index).numpy()
    truth = y.numpy().astype(np.int64)
    if isinstance(model, Autoencoder):
        budget = max(
            round(float(ctx.hyperparameters.extra.get("alert_rate", 0.002)) * len(scores)), 1
        )
        flagged = np.zeros(len(scores), dtype=np.int64)
        flagged[np.argsort(-scores, kind="stable")[:budget]] = 1
    else:
        flagged = (scores > 0.5).astype(np.int64)
    metrics = {
        "precision": float(precision_score(truth, flagged, zero_division=0)),
        "recall": float(recall_score(truth, flagged, zero_division=0)),
        "frauds": int(truth.sum()),
        "flagged": int(flagged.sum()),
        "num_samples": len(truth),
    }
    if 0 < truth.sum() < len(truth):
        metrics["auroc"] = float(roc_auc_score(truth, scores))
        metrics["auprc"] = float(average_precision_score(truth, scores))
    return metrics
