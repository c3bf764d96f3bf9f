"""FedAvg aggregation throughput against a numpy copy of the same bytes, and its peak memory.

For each model size P (float32 parameters, split into 4 tensors) K silo updates are written
once as safetensors files. Then, for each silo count K:

* copy rate = bytes/s of ``np.copyto`` of every silo's tensors into one preallocated model
  (the reference a streaming aggregator is compared with: it touches the same bytes);
* FedAvg rate = bytes/s of ``FedAvg().begin_aggregation`` + ``add`` per silo + ``finish``,
  over the same K x P floats, sample-weighted;

both measured with the updates already in memory ("mem") and read from the files tensor by
tensor with safetensors' ``safe_open``/``get_tensor`` ("file"; the copy reads the files the
same way). Each figure is the best of ``--repeats`` runs.

Peak memory is measured in a fresh process per (K, P) that aggregates from the files:
tracemalloc's peak during the adds and ``finish``, and the growth of the process's peak
resident set (``VmHWM``, reset first), and the growth of its anonymous resident memory
(``RssAnon``, sampled every 0.5 ms), each divided by the model's size (P x 4 bytes). The
peak resident set also counts the page-cache pages of the file safetensors maps while it
reads one silo's update; the anonymous figure is the memory the aggregation itself holds.

Usage: python bench/aggregation.py [--silos 10 30 100] [--params 1000000 10000000]
       [--repeats 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from safetensors import safe_open

from fedsilo.strategies import FedAvg
from fedsilo.tensors import load_parameters, save_parameters

TENSORS = 4
Arrays = dict[str, npt.NDArray[np.generic]]


def _write_updates(folder: Path, silos: int, params: int) -> list[Path]:
    rng = np.random.default_rng(0)
    base = rng.normal(size=params).astype(np.float32)
    split = np.array_split(np.arange(params), TENSORS)
    paths = []
    for k in range(silos):
        noisy = base + np.float32(0.01) * rng.standard_normal(params, dtype=np.float32)
        path = folder / f"silo-{k:03d}.safetensors"
        save_parameters({f"t{t}": noisy[idx[0] : idx[-1] + 1] for t, idx in enumerate(split)}, path)
        paths.append(path)
    return paths


def _best(repeats: int, runs: dict[str, Callable[[], None]]) -> dict[str, float]:
    """Best time of each run; the runs are interleaved so that noise hits them alike."""
    times: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(repeats):
        for key, run in runs.items():
            gc.collect()
            started = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - started)
    return {key: min(values) for key, values in times.items()}


def _copy_mem(updates: list[Arrays], out: Arrays) -> None:
    for update in updates:
        for name, value in update.items():
            np.copyto(out[name], value)


def _copy_file(paths: list[Path], out: Arrays) -> None:
    for path in paths:
        with safe_open(str(path), framework="numpy") as fh:
            for name in fh.keys():  # noqa: SIM118
                np.copyto(out[name], fh.get_tensor(name))


def _fedavg(sources: Sequence[Arrays | Path]) -> None:
    aggregation = FedAvg().begin_aggregation(1, None)
    for k, source in enumerate(sources):
        aggregation.add(f"silo-{k}", source, 100 + k)
    aggregation.finish()


def _rates(paths: list[Path], params: int, repeats: int) -> dict[str, float]:
    updates = [load_parameters(p) for p in paths]
    out = {name: np.ones_like(value) for name, value in updates[0].items()}  # touched
    total = len(paths) * params * 4
    times = _best(
        repeats,
        {
            "copy_mem": lambda: _copy_mem(updates, out),
            "fedavg_mem": lambda: _fedavg(updates),
            "copy_file": lambda: _copy_file(paths, out),
            "fedavg_file": lambda: _fedavg(paths),
        },
    )
    return {key: total / seconds for key, seconds in times.items()}


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _memory(paths: list[Path], params: int) -> dict[str, float]:
    """Run in a fresh process: peak traced and resident growth of one aggregation from files."""
    _fedavg(paths[:1])  # warm up imports and numpy's first allocations
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    baseline, anon_baseline = _status_kb("VmRSS"), _status_kb("RssAnon")
    anon_peak = anon_baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal anon_peak
        while not done.wait(0.0005):
            anon_peak = max(anon_peak, _status_kb("RssAnon"))

    sampler = threading.Thread(target=sample)
    sampler.start()
    tracemalloc.start()
    try:
        _fedavg(paths)
        _, traced = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        done.set()
        sampler.join()
    resident = (_status_kb("VmHWM") - baseline) * 1024
    model = params * 4
    return {
        "traced": traced / model,
        "resident": resident / model,
        "anonymous": (anon_peak - anon_baseline) * 1024 / model,
    }


def _memory_in_child(paths: list[Path], params: int) -> dict[str, float]:
    args = [sys.executable, __file__, "--memory-child", str(params), *map(str, paths)]
    return dict(json.loads(subprocess.run(args, check=True, capture_output=True).stdout))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--silos", type=int, nargs="+", default=[10, 30, 100])
    parser.add_argument("--params", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        print(json.dumps(_memory(args.paths, args.memory_child)))
        return
    print(
        "| P | K | copy, mem | FedAvg, mem | ratio | copy, file | FedAvg, file | ratio "
        "| peak traced ÷ model | peak anon. RSS growth ÷ model | peak RSS growth ÷ model |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedsilo-bench-") as tmp:
        for params in args.params:
            folder = Path(tmp) / str(params)
            folder.mkdir()
            paths = _write_updates(folder, max(args.silos), params)
            for silos in args.silos:
                rate = _rates(paths[:silos], params, args.repeats)
                gc.collect()
                mem = _memory_in_child(paths[:silos], params)
                print(
                    f"| {params / 1e6:g}M | {silos} "
                    f"| {rate['copy_mem'] / 1e9:.2f} GB/s | {rate['fedavg_mem'] / 1e9:.2f} GB/s "
                    f"| {rate['fedavg_mem'] / rate['copy_mem']:.2f} "
                    f"| {rate['copy_file'] / 1e9:.2f} GB/s | {rate['fedavg_file'] / 1e9:.2f} GB/s "
                    f"| {rate['fedavg_file'] / rate['copy_file']:.2f} "
                    f"| {mem['traced']:.2f} | {mem['anonymous']:.2f} | {mem['resident']:.2f} |",
                    flush=True,
                )
            for path in paths:
                path.unlink()
    print(f"\n(bench took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
