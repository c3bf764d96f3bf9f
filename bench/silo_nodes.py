"""Two machines of one rank each against one machine of two ranks, through the real processes.

Two network namespaces stand for two machines of one silo, joined by a cable (a veth
pair): the whole federation runs in the first, ``fedsilo node start`` in the second. The
same job trains a pneumonia-sized CNN (the pneumonia example's three convolutions, on
28 x 28 images) for several rounds of one epoch, twice: on one machine with two ranks
(``resources: {train: {workers: 2}}``: the ranks talk over the sandbox's loopback), and on
two machines with one rank each (``{nodes: 2}``: over each machine's job namespace, its
macvlan and the cable). The figure is the median epoch time (a round's train compute, the
first round left out as warm-up) of each, and their ratio. Both share this machine's
cores, so the ratio is the cost of the path between machines, not a speed-up.

Needs root and iproute2. Usage (from the repository root):

    python bench/silo_nodes.py [--images 4708] [--rounds 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _harness import free_port, job_record

from fedsilo.config import Classification, open_workspace
from fedsilo.provisioning import provision
from fedsilo.storage import add_dataset

TASK = """
import numpy as np
import torch
from torch import nn


def _load(path):
    with np.load(path, allow_pickle=False) as data:
        x = torch.from_numpy(data["x"]).float().div_(255.0).unsqueeze(1)
        return x, torch.from_numpy(data["y"]).float()


def model(ctx):
    w = 32
    return nn.Sequential(
        nn.Conv2d(1, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(4 * w * 9, 128), nn.ReLU(), nn.Linear(128, 1),
    )


def train(model, ctx):
    x, y = _load(ctx.input("train"))
    hp, ranks = ctx.hyperparameters, ctx.distributed
    net = ranks.wrap(model)
    opt = torch.optim.SGD(net.parameters(), lr=hp.lr, momentum=0.9)
    g = torch.Generator().manual_seed(ctx.seed)
    seen = 0
    for share in ranks.batches(len(x), hp.batch_size, generator=g):
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(net(x[share]).squeeze(1), y[share])
        (loss * ranks.weight(len(share), min(hp.batch_size, len(x)))).backward()
        opt.step()
        seen += len(share)
    return {"num_samples": seen}


def evaluate(model, ctx):
    return {"num_samples": 1}
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _federation(tmp: Path, subnet: str, images: int) -> Path:
    spec = f"""\
name: nodesbench
orchestrator: {{port: {free_port(2)}, storage: {{root: storage/o}}, compute: {{name: o-cpu}}}}
silos:
  - name: silo-a
    storage: {{root: storage/silo-a}}
    compute:
      name: cluster
      threads: {len(os.sched_getaffinity(0))}
      nodes:
        - {{name: node-0, address: {subnet}.1, interface: fsb-ca, job_addresses: [{subnet}.11]}}
        - {{name: node-1, address: {subnet}.2, interface: fsb-cb, job_addresses: [{subnet}.12]}}
submitters: [bench]
"""
    (tmp / "federation.yaml").write_text(spec)
    root = tmp / "ws"
    provision(tmp / "federation.yaml", root)
    rng = np.random.default_rng(0)
    data = tmp / "images.npz"
    x = rng.integers(0, 256, size=(images, 28, 28), dtype=np.uint8)
    np.savez(data, x=x, y=(x.mean(axis=(1, 2)) > 127.5).astype(np.int64))
    add_dataset(open_workspace(root).kit("silo-a"), "images", data, Classification.SENSITIVE)
    return root


def _job(folder: Path, name: str, rounds: int, resources: str) -> Path:
    (folder / "task").mkdir(parents=True)
    (folder / "task" / "task.py").write_text(TASK)
    job = folder / "job.yaml"
    job.write_text(
        f"name: {name}\ncode: task\nsilos: [silo-a]\ninputs: {{train: images}}\n"
        f"rounds: {rounds}\noutputs: {{model: {{classification: intermediate}}, "
        "metrics: {classification: intermediate}}\n"
        "hyperparameters: {lr: 0.01, epochs: 1, batch_size: 64, seed: 0}\n"
        f"resources: {{train: {resources}}}\n"
    )
    return job


def _epochs(ns: str, root: Path, job: Path) -> list[float]:
    """Submit ``job`` from inside namespace ``ns``; each round's train compute, warm-up out."""
    submit = ["submit", str(job), "-w", str(root), "--wait", "--json"]
    done = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "fedsilo", *submit],
        capture_output=True,
        text=True,
        check=False,
    )
    info = json.loads(done.stdout)
    if info.get("state") != "succeeded":
        raise SystemExit(f"the job failed: {info.get('error')}")
    record = job_record(open_workspace(root), info["id"])
    rounds = sorted(r for kind, r in record.compute if kind == "fit")
    return [record.compute[("fit", r)] for r in rounds[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4708, help="28x28 images (pneumonia's)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of one epoch each")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: two network namespaces stand for the two machines")
    a, b, subnet = f"fsb-a{os.getpid()}", f"fsb-b{os.getpid()}", f"10.214.{os.getpid() % 200}"
    node = None
    with tempfile.TemporaryDirectory(prefix="fedsilo-nodes-bench-") as folder:
        tmp = Path(folder)
        try:
            for ns in (a, b):
                _ip("netns", "add", ns)
            _ip("link", "add", "fsb-ca", "netns", a, "type", "veth", "peer", "fsb-cb", "netns", b)
            for ns, card, host in ((a, "fsb-ca", 1), (b, "fsb-cb", 2)):
                _ip("-n", ns, "addr", "add", f"{subnet}.{host}/24", "dev", card)
                _ip("-n", ns, "link", "set", card, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
            root = _federation(tmp, subnet, args.images)
            fedsilo = [sys.executable, "-m", "fedsilo"]
            kit = str(root / "kits" / "silo-a")
            log = (tmp / "node-1.log").open("wb")
            serve = ["node", "start", "--kit", kit, "--node", "node-1"]
            node = subprocess.Popen(
                ["ip", "netns", "exec", b, *fedsilo, *serve],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            subprocess.run(["ip", "netns", "exec", a, *fedsilo, "up", str(root)], check=True)
            try:
                one = _epochs(
                    a, root, _job(tmp / "one", "one", args.rounds, "{workers: 2, threads: 1}")
                )
                two = _epochs(
                    a, root, _job(tmp / "two", "two", args.rounds, "{nodes: 2, threads: 1}")
                )
            finally:
                subprocess.run(["ip", "netns", "exec", a, *fedsilo, "down", str(root)])
        finally:
            if node is not None:
                node.terminate()
                node.wait(timeout=30)
                log.close()
            for ns in (a, b):
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    figures = {
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} cores",
        "date": time.strftime("%Y-%m-%d"),
        "images": args.images,
        "one_machine_two_ranks_s": statistics.median(one),
        "two_machines_one_rank_s": statistics.median(two),
        "epochs": {"one_machine": one, "two_machines": two},
    }
    figures["ratio"] = figures["two_machines_one_rank_s"] / figures["one_machine_two_ranks_s"]
    print(
        f"epoch of a {args.images}-image CNN: one machine, 2 ranks "
        f"{figures['one_machine_two_ranks_s']:.2f} s; two machines, 1 rank each "
        f"{figures['two_machines_one_rank_s']:.2f} s; ratio {figures['ratio']:.3f}"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
