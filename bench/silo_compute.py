"""Compute inside a silo: one epoch through the real job worker, on threads, ranks, limits.

Every figure is the wall time of a ``fit`` request to fedsilo's job worker process
(``WorkerProcess``: bubblewrap sandbox when ``bwrap`` is installed, a cgroup with memory and
process limits when control groups can be made), measured by the caller: one untimed
warm-up fit, then the median of ``--repeats`` fits, each one epoch from the same initial
parameters. Worker start, ``init`` and ``prepare`` are left out.

* ``pneumonia``: the pneumonia example's CNN (its own ``model`` and augmentation, from
  ``examples/pneumonia/task/task.py``) on PneumoniaMNIST's training images replicated 10x
  (from ``$FEDSILO_DATA``; skipped without it), global batch 128, Adam.
* ``resnet18``: a ResNet-18 (BasicBlock x [2, 2, 2, 2], 64-128-256-512 channels, 1000
  classes) on 256 synthetic 224x224x3 images drawn from a seed, global batch 32, SGD.

Each runs as 1 thread on 1 rank, every core on 1 rank, and 1 thread on each of 2 ranks
(torch.distributed, started by torchrun inside the sandbox); one task module serves all
three through ``ctx.distributed``. Target: 1 -> 2 cores (threads or ranks) >= 1.7x faster.

* ``limits``: the pneumonia fit on 1 thread with the sandbox, a cgroup and the step limits,
  against the same fit with neither, interleaved A B A B; ratio of the medians, target
  <= 1.02.

Usage: python bench/silo_compute.py [--quick] [--repeats 3] [--only pneumonia|resnet18|limits]
       [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsilo.datasets import DATA_ENV, load_pneumoniamnist
from fedsilo.silo._limits import Enforcement, JobGroup, Limiter, Limits
from fedsilo.silo._sandbox import SandboxSpec, bwrap_path
from fedsilo.silo._workerproc import StepLimits, WorkerProcess

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "pneumonia" / "task" / "task.py"
SPEEDUP_TARGET = 1.7
LIMITS_TARGET = 1.02
MEMORY = 8 * 2**30
PROCESSES = 512

TASK = '''"""The pneumonia example's CNN or a ResNet-18, trained over ctx.distributed."""

from functools import lru_cache

import torch
from torch import nn

import pneumonia_example as example


def _conv(cin, cout, k, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.body = nn.Sequential(_conv(cin, cout, 3, stride), nn.ReLU(), _conv(cout, cout, 3, 1))
        self.down = _conv(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return torch.relu(self.body(x) + self.down(x))


def resnet18(classes):
    layers, cin = [_conv(3, 64, 7, 2), nn.ReLU(), nn.MaxPool2d(3, 2, 1)], 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes))


@lru_cache(maxsize=2)
def _images(count, size, classes, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(count, 3, size, size, generator=g)
    return x, torch.randint(0, classes, (count,), generator=g)


def model(ctx):
    extra = ctx.hyperparameters.extra
    return resnet18(int(extra["classes"])) if extra["model"] == "resnet18" else example.model(ctx)


def train(model, ctx):
    hp, extra, ranks = ctx.hyperparameters, ctx.hyperparameters.extra, ctx.distributed
    net, g = ranks.wrap(model), torch.Generator().manual_seed(ctx.seed)
    if extra["model"] == "resnet18":
        x, y = _images(int(extra["images"]), int(extra["size"]), int(extra["classes"]), 0)
        opt = torch.optim.SGD(net.parameters(), lr=hp.lr, momentum=0.9)
        loss_of = lambda xb, yb: nn.functional.cross_entropy(net(xb), yb)
    else:  # the example's loss: class-weighted, on randomly shifted images
        x, y = example._load(ctx.input("train"))
        opt = torch.optim.Adam(net.parameters(), lr=hp.lr)
        pos = torch.tensor((len(y) - float(y.sum())) / max(float(y.sum()), 1.0))
        loss_of = lambda xb, yb: nn.functional.binary_cross_entropy_with_logits(
            net(example._shift(xb, g)).squeeze(1), yb, pos_weight=pos
        )
    total, seen, n, b = 0.0, 0, len(x), hp.batch_size
    for step, share in enumerate(ranks.batches(n, b, generator=g)):
        opt.zero_grad()
        loss = loss_of(x[share], y[share])
        (loss * ranks.weight(len(share), min(b, n - step * b))).backward()
        opt.step()
        total, seen = total + float(loss), seen + len(share)
    return {"loss": total / max(-(-n // b), 1), "num_samples": seen}


def evaluate(model, ctx):
    return {"num_samples": 1}
'''


@dataclass(frozen=True)
class Workload:
    """One model and its data, trained the same way in every configuration."""

    name: str
    samples: int
    batch_size: int
    lr: float
    extra: dict[str, Any]
    inputs: dict[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class Confinement:
    """What a worker runs under: bubblewrap or not, a cgroup (its limiter) or not."""

    sandbox: bool
    limiter: Limiter | None

    def describe(self) -> str:
        cgroup = self.limiter.enforcement.value if self.limiter else "no cgroup"
        return f"{'bubblewrap' if self.sandbox else 'no sandbox'}, {cgroup}"


class Job:
    """A job worker (``root.name``) on ``threads`` threads and ``workers`` ranks, prepared."""

    def __init__(
        self, root: Path, code: Path, load: Workload, threads: int, workers: int, how: Confinement
    ) -> None:
        work, self.params, self.samples = root / "work", root / "params", load.samples
        self.params.mkdir(parents=True)
        self.group: JobGroup | None = None
        limits, spec = StepLimits(), None
        if how.limiter is not None:
            self.group = how.limiter.group(root.name, Limits(MEMORY, PROCESSES))
            # a step's deadline, its work folder's size, the tree's memory and processes
            limits = StepLimits(3600, 2**34, work, MEMORY, PROCESSES)
        if how.sandbox:
            inputs = tuple(load.inputs.values())
            spec = SandboxSpec(code_dir=code, inputs=inputs, writable=(work, self.params))
        variables = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self.worker = WorkerProcess(
            silo="bench", cwd=work, log_file=root / "worker.log", sandbox=spec,
            environment=variables, group=self.group, limits=limits,
        )  # fmt: skip
        hp = {"seed": 0, "batch_size": load.batch_size, "lr": load.lr, "extra": load.extra}
        self.round = 0
        try:
            self.worker.request(
                "init", code_dir=str(code), entrypoint="task", silo="bench",
                inputs={k: str(v) for k, v in load.inputs.items()}, work_dir=str(work),
                hyperparameters={**hp, "epochs": 1}, rounds=1000, privacy={},
                threads=threads, device="cpu", workers=workers,
            )  # fmt: skip
            self.worker.request("prepare", out=str(self.params / "initial.safetensors"))
        except BaseException:
            self.stop()
            raise

    def fit(self) -> float:
        """Seconds of one fit request (one epoch from the initial parameters)."""
        self.round += 1
        started = time.perf_counter()
        reply = self.worker.request(
            "fit", round=self.round, params=str(self.params / "initial.safetensors"),
            out=str(self.params / "update.safetensors"), evaluate_first=False, config={},
        )  # fmt: skip
        seconds = time.perf_counter() - started
        seen = reply["train_metrics"]["num_samples"]
        if seen != self.samples:  # the ranks' shares must add up to one epoch
            raise RuntimeError(f"the fit trained on {seen} samples, not {self.samples}")
        return seconds

    def stop(self) -> None:
        self.worker.stop()
        if self.group is not None:
            self.group.close()


def pneumonia(tmp: Path, quick: bool) -> Workload | None:
    """The example's training images, replicated 10x (quick: 512 of them, once)."""
    if not os.environ.get(DATA_ENV):
        print(f"pneumonia: skipped, {DATA_ENV} is not set (it names the data root)")
        return None
    train = load_pneumoniamnist()["train"].arrays
    x, y = np.asarray(train["x"]), np.asarray(train["y"])
    x, y = (x[:512], y[:512]) if quick else (np.tile(x, (10, 1, 1)), np.tile(y, 10))
    path = tmp / "data" / "pneumonia-train.npz"
    path.parent.mkdir(exist_ok=True)
    np.savez(path, x=x, y=y)
    extra = {"model": "pneumonia"}
    return Workload("pneumonia", len(y), 128, 0.001, extra, {"train": path})


def resnet18(quick: bool) -> Workload:
    images, size, classes, batch = (16, 64, 10, 8) if quick else (256, 224, 1000, 32)
    extra = {"model": "resnet18", "images": images, "size": size, "classes": classes}
    return Workload("resnet18", images, batch, 0.01, extra)


def median_fit(job: Job, repeats: int) -> float:
    job.fit()  # warm-up: data loading, first-call costs
    return statistics.median(job.fit() for _ in range(repeats))


def scaling(
    tmp: Path, code: Path, load: Workload, repeats: int, how: Confinement
) -> dict[str, Any]:
    """Seconds per epoch on 1 thread, every core, 2 ranks; the speed-ups."""
    cores = os.cpu_count() or 1
    one, every = "1 thread, 1 rank", f"{cores} threads, 1 rank"
    configs = {one: (1, 1), every: (cores, 1), "1 thread, 2 ranks": (1, 2)}
    seconds: dict[str, float] = {}
    for i, (label, (threads, workers)) in enumerate(configs.items()):
        job = Job(tmp / f"{load.name}-{i}", code, load, threads, workers, how)
        try:
            seconds[label] = median_fit(job, repeats)
        finally:
            job.stop()
        print(f"  {load.name}: {label}: {seconds[label]:.2f} s per epoch", flush=True)
    return {
        "samples": load.samples, "batch_size": load.batch_size, "extra": load.extra,
        "seconds_per_epoch": seconds, "speedup_threads": seconds[one] / seconds[every],
        "speedup_ranks": seconds[one] / seconds["1 thread, 2 ranks"],
    }  # fmt: skip


def limits_cost(
    tmp: Path, code: Path, load: Workload, repeats: int, how: Confinement
) -> dict[str, Any]:
    """The 1-thread fit with sandbox and limits ÷ without, interleaved; ratio of medians."""
    confined = Job(tmp / "limits-on", code, load, 1, 1, how)
    plain = Job(tmp / "limits-off", code, load, 1, 1, Confinement(False, None))
    try:
        confined.fit(), plain.fit()  # warm-ups
        on, off = [], []
        for _ in range(repeats):
            on.append(confined.fit())
            off.append(plain.fit())
    finally:
        confined.stop()
        plain.stop()
    with_s, without_s = statistics.median(on), statistics.median(off)
    return {
        "with": how.describe(), "with_s": with_s, "without_s": without_s,
        "ratio": with_s / without_s, "with_all_s": on, "without_all_s": off,
    }  # fmt: skip


def machine() -> dict[str, Any]:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
    return {
        "cpu": cpu or platform.processor(), "cores": os.cpu_count(), "torch": torch.__version__,
        "python": platform.python_version(), "load_average": os.getloadavg(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--repeats", type=int, default=3, help="timed fits per configuration")
    parser.add_argument("--only", action="append", choices=("pneumonia", "resnet18", "limits"))
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    parts = args.only or ["pneumonia", "resnet18", "limits"]
    started = time.perf_counter()
    result: dict[str, Any] = {"machine": machine(), "quick": args.quick, "repeats": args.repeats}
    sandbox = bwrap_path() is not None
    if not sandbox:
        print("sandbox: skipped, bubblewrap (bwrap) is not installed")
    limiter: Limiter | None = Limiter.detect("bench")
    if limiter is not None and limiter.enforcement is Enforcement.RLIMITS:
        print(f"cgroup: skipped, no control groups here: {limiter.reason}")
        limiter = None
    how = Confinement(sandbox, limiter)
    result["confinement"] = how.describe()
    try:
        with tempfile.TemporaryDirectory(prefix="fedsilo-bench-compute-", dir="/tmp") as name:
            tmp = Path(name)
            code = tmp / "code"
            code.mkdir()
            (code / "task.py").write_text(TASK)
            shutil.copyfile(EXAMPLE, code / "pneumonia_example.py")
            pneu = pneumonia(tmp, args.quick) if {"pneumonia", "limits"} & set(parts) else None
            loads = [w for w in (pneu, resnet18(args.quick)) if w and w.name in parts]
            for load in loads:
                result[load.name] = scaling(tmp, code, load, args.repeats, how)
            if "limits" not in parts:
                pass
            elif pneu is None:
                print(f"limits: skipped, it times the pneumonia fit, which needs {DATA_ENV}")
            elif not sandbox and limiter is None:
                print("limits: skipped, neither bubblewrap nor control groups are here")
            else:
                result["limits"] = limits_cost(tmp, code, pneu, args.repeats, how)
    finally:
        if limiter is not None:
            limiter.close()
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n(bench took {time.perf_counter() - started:.0f} s)")


def report(result: dict[str, Any]) -> None:
    m = result["machine"]
    print(
        f"\n{m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['date']}, "
        f"load {m['load_average'][0]:.2f}; workers: {result['confinement']}"
    )
    scaled = [k for k in ("pneumonia", "resnet18") if k in result]
    if scaled:
        labels = list(result[scaled[0]]["seconds_per_epoch"])
        print(
            f"\n| model | samples | batch | {' | '.join(labels)} | 1 -> {m['cores']} threads "
            f"| 1 -> 2 ranks | target |"
        )
        print("|" + " --- |" * (len(labels) + 6))
        for key in scaled:
            row = result[key]
            times = " | ".join(f"{s:.2f} s" for s in row["seconds_per_epoch"].values())
            print(
                f"| {key} | {row['samples']} | {row['batch_size']} | {times} "
                f"| {row['speedup_threads']:.2f}x | {row['speedup_ranks']:.2f}x "
                f"| >= {SPEEDUP_TARGET}x |"
            )
    if "limits" in result:
        row = result["limits"]
        print("\n| pneumonia fit, 1 thread | with limits and sandbox | without | ratio | target |")
        print("| --- | --- | --- | --- | --- |")
        print(
            f"| {row['with']} | {row['with_s']:.3f} s | {row['without_s']:.3f} s "
            f"| {row['ratio']:.3f} | <= {LIMITS_TARGET} |"
        )


if __name__ == "__main__":
    main()
