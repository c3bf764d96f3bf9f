"""helloworld: a mock task that reads every input and writes every output, learning nothing.

It checks a federation end to end in seconds: each silo's agent starts a job worker (in
its sandbox), the worker reads the silo's ``train`` and ``test`` datasets, writes to its
work folder, and sends back a model and metrics that the orchestrator aggregates. The
model is one counter: each silo adds one to it per round, FedAvg averages the silos'
counters, so after round r every silo must see ``rounds_seen == r``. Any silo that
skipped a round, or any aggregation that lost an update, shows up there.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedsilo.task import Context


class Counter(nn.Module):
    """No weights to learn: a buffer counting the rounds every silo has trained."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("rounds", torch.zeros(1, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _rows(path: Path) -> tuple[int, int]:
    """Rows of a shard and how many distinct labels it holds (read, never sent)."""
    with np.load(path, allow_pickle=False) as data:
        return len(data["x"]), len(np.unique(data["y"]))


def preprocess(ctx: Context) -> None:
    """Write a note into the job's work folder: it is writable, and kept across rounds."""
    rows, _ = _rows(ctx.input("train"))
    (ctx.work_dir / "hello.json").write_text(json.dumps({"silo": ctx.silo, "rows": rows}))


def model(ctx: Context) -> nn.Module:
    """The counter, at zero in every silo."""
    return Counter()


def train(model: nn.Module, ctx: Context) -> dict[str, float]:
    """Read the training shard and the note; count this round. Nothing is learned."""
    rows, classes = _rows(ctx.input("train"))
    note = json.loads((ctx.work_dir / "hello.json").read_text())
    model.get_buffer("rounds").add_(1.0)
    return {
        "rows": rows,
        "classes": classes,
        "note_matches": float(note["rows"] == rows),
        "num_samples": rows,
    }


def evaluate(model: nn.Module, ctx: Context) -> dict[str, float]:
    """Read the test shard; report what the global model has counted."""
    rows, _ = _rows(ctx.input("test"))
    return {
        "rows": rows,
        "rounds_seen": float(model.get_buffer("rounds").item()),
        "num_samples": rows,
    }
