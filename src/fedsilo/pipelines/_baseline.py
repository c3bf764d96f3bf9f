"""Centralized baselines: the same task trained on one pool of data, for comparison.

:func:`run_baselines` reports what the Azure ML FL samples report next to every FL result:

* **FL**: the job itself, simulated in this process;
* **Central-all**: the task trained on all silos' data pooled, the ceiling FL aims for;
* **Central-1/k**: the task trained on each silo's data alone, what a silo gets without
  the federation.

Every model is evaluated on the same pooled test data, so the numbers compare. One run
of each model is one draw: with a few hundred test examples, a model trained on a third of
the data can land several points from another trained with another seed. ``seeds=N``
trains every model N times (the job's seed, seed + 1, ...) and reports each metric's mean
and standard deviation over the seeds. Pooling
needs to know the data's format: :func:`pool_files` pools ``.npz`` files (arrays
concatenated), CSV files (rows concatenated) and folders (files merged); any other task
passes its own ``pool`` function.
"""

from __future__ import annotations

import csv
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from fedsilo.errors import ConfigError
from fedsilo.jobs import Hyperparameters, JobSpec
from fedsilo.task import SiloRunner, TaskModule, load_task

__all__ = [
    "BaselineKind",
    "BaselineReport",
    "BaselineResult",
    "BaselineRow",
    "Pool",
    "pool_files",
    "pool_inputs",
    "run_baselines",
    "train_centralized",
]

Pool = Callable[[str, Mapping[str, Path], Path], Path]
"""Pools one role's inputs: ``pool(role, {silo: path}, out_dir) -> pooled path``."""

TEST_ROLE = "test"


@dataclass(frozen=True)
class BaselineResult:
    """Evaluation metrics of a centrally trained model and its training time."""

    metrics: dict[str, float]
    seconds: float


def train_centralized(
    task: TaskModule,
    inputs: Mapping[str, Path],
    *,
    hyperparameters: Hyperparameters,
    rounds: int,
    work_dir: Path,
    name: str = "central",
) -> BaselineResult:
    """Train ``task`` on ``inputs`` alone for as many rounds as the FL job, then evaluate.

    Each round runs the task's ``train`` once from the previous round's parameters, so the
    baseline sees the same number of local epochs as each silo does in the FL job.
    """
    started = time.perf_counter()
    runner = SiloRunner(
        task, silo=name, inputs=inputs, work_dir=work_dir, hyperparameters=hyperparameters
    )
    params = runner.prepare()
    for round_ in range(1, rounds + 1):
        params, _ = runner.fit(round_, params)
    metrics = runner.evaluate(rounds, params)
    return BaselineResult(metrics=metrics, seconds=time.perf_counter() - started)


class BaselineKind(StrEnum):
    """Which model a row of the baseline report describes."""

    FL = "FL"
    CENTRAL_ALL = "Central-all"
    CENTRAL_ONE = "Central-1/k"
    CENTRAL_ONE_MEAN = "Central-1/k mean"


@dataclass(frozen=True)
class BaselineRow:
    """One model of the comparison: its metrics on the pooled test data and its cost.

    ``seconds`` is wall-clock time; ``compute_seconds`` adds up the time every silo spent
    (for FL the sum over silos, for a centralized model the same as ``seconds``). Over
    several seeds, ``metrics`` and the times are means over the seeds and ``spread`` holds
    each metric's standard deviation over them (empty for a single run).
    """

    kind: BaselineKind
    silo: str | None
    metrics: dict[str, float]
    seconds: float
    compute_seconds: float
    spread: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The row's name in the report: ``FL``, ``Central-all``, ``Central-1/k (silo-a)``."""
        return f"{self.kind.value} ({self.silo})" if self.silo else self.kind.value


@dataclass(frozen=True)
class BaselineReport:
    """FL next to its centralized baselines, all evaluated on the same pooled test data."""

    job: str
    rounds: int
    rows: tuple[BaselineRow, ...]
    seeds: tuple[int, ...] = ()
    runs: tuple[BaselineReport, ...] = ()
    """Over several seeds, each seed's own report, in :attr:`seeds` order."""

    @property
    def metric_names(self) -> list[str]:
        """The evaluation metrics of the rows, ``num_samples`` left out, sorted."""
        names = {k for row in self.rows for k in row.metrics} - {"num_samples"}
        return sorted(names)

    def row(self, kind: BaselineKind, silo: str | None = None) -> BaselineRow:
        """The row of ``kind`` (and ``silo``, for one silo's Central-1/k)."""
        for row in self.rows:
            if row.kind is kind and row.silo == silo:
                return row
        raise KeyError(f"{kind.value} {silo or ''}".strip())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, for ``fedsilo baseline --json``."""
        data: dict[str, Any] = {
            "job": self.job,
            "rounds": self.rounds,
            "seeds": list(self.seeds),
            "rows": [{**asdict(r), "kind": r.kind.value, "label": r.label} for r in self.rows],
        }
        if self.runs:
            data["runs"] = [run.as_dict() for run in self.runs]
        return data


def run_baselines(
    spec: JobSpec,
    code_dir: Path,
    inputs_per_silo: Mapping[str, Mapping[str, Path]],
    *,
    work_root: Path,
    pool: Pool | None = None,
    seeds: int = 1,
) -> BaselineReport:
    """Train ``spec``'s task federated, on all data pooled, and on each silo's data alone.

    All use the job's hyperparameters and number of rounds; each is evaluated on the
    pooled ``test`` input (when the job has one); the FL model too, rather than by the
    silos, so that every number is measured on the same examples. One untimed round runs
    first, so that one-time library start-up does not count against whichever model
    trains first. ``work_root`` receives the pooled data and every run's working folders.

    With ``seeds`` above 1, the whole comparison runs once per seed (the job's
    ``hyperparameters.seed``, then each next integer) and every row reports the mean and
    the standard deviation over the seeds; :attr:`BaselineReport.runs` keeps each seed's.
    """
    if seeds < 1:
        raise ConfigError(f"seeds is {seeds}; give 1 or more", field="seeds")
    first = spec.hyperparameters.seed
    if first + seeds > 2**31:
        raise ConfigError(
            f"seeds {first} to {first + seeds - 1} go past the largest seed, 2**31 - 1; "
            "lower hyperparameters.seed or the number of seeds",
            field="hyperparameters.seed",
        )
    pooled = pool_inputs(inputs_per_silo, work_root / "pooled", pool or pool_files)
    warm_up(spec, code_dir, inputs_per_silo[spec.silos[0]], work_root / "warm-up")
    if seeds == 1:
        return _compare(spec, code_dir, inputs_per_silo, pooled, work_root)
    runs = []
    for seed in range(first, first + seeds):
        hyperparameters = spec.hyperparameters.model_copy(update={"seed": seed})
        seeded = spec.model_copy(update={"hyperparameters": hyperparameters})
        runs.append(_compare(seeded, code_dir, inputs_per_silo, pooled, work_root / f"seed-{seed}"))
    return _over_seeds(runs)


def _compare(
    spec: JobSpec,
    code_dir: Path,
    inputs_per_silo: Mapping[str, Mapping[str, Path]],
    pooled: Mapping[str, Path],
    work_root: Path,
) -> BaselineReport:
    from fedsilo.pipelines._simulation import simulate

    task = load_task(code_dir, spec.entrypoint)
    fl = simulate(spec, code_dir, inputs_per_silo, work_root=work_root / "fl")
    evaluator = SiloRunner(
        task,
        silo="pooled",
        inputs=pooled,
        work_dir=work_root / "fl-evaluate",
        hyperparameters=spec.hyperparameters,
    )
    rows = [
        BaselineRow(
            kind=BaselineKind.FL,
            silo=None,
            metrics=evaluator.evaluate(spec.rounds, fl.parameters),
            seconds=fl.seconds,
            compute_seconds=sum(fl.silo_seconds.values()),
        )
    ]

    def central(inputs: Mapping[str, Path], kind: BaselineKind, silo: str | None) -> BaselineRow:
        folder = f"central-{silo}" if silo else "central-all"
        result = train_centralized(
            task,
            inputs,
            hyperparameters=spec.hyperparameters,
            rounds=spec.rounds,
            work_dir=work_root / folder,
            name=folder,
        )
        return BaselineRow(kind, silo, result.metrics, result.seconds, result.seconds)

    rows.append(central(pooled, BaselineKind.CENTRAL_ALL, None))
    singles = []
    for silo in spec.silos:
        inputs = dict(inputs_per_silo[silo])
        if TEST_ROLE in pooled:
            inputs[TEST_ROLE] = pooled[TEST_ROLE]
        singles.append(central(inputs, BaselineKind.CENTRAL_ONE, silo))
    rows += singles
    rows.append(_mean(singles))
    return BaselineReport(
        job=spec.name,
        rounds=spec.rounds,
        rows=tuple(rows),
        seeds=(spec.hyperparameters.seed,),
    )


def _over_seeds(runs: list[BaselineReport]) -> BaselineReport:
    """One report whose rows are the runs' rows averaged, with their spread over the runs."""
    rows = []
    for index, row in enumerate(runs[0].rows):
        same = [run.rows[index] for run in runs]
        names = sorted(set.intersection(*(set(r.metrics) for r in same)))
        values = {k: np.array([r.metrics[k] for r in same], dtype=np.float64) for k in names}
        rows.append(
            BaselineRow(
                kind=row.kind,
                silo=row.silo,
                metrics={k: float(v.mean()) for k, v in values.items()},
                seconds=float(np.mean([r.seconds for r in same])),
                compute_seconds=float(np.mean([r.compute_seconds for r in same])),
                spread={k: float(v.std(ddof=1)) for k, v in values.items() if k != "num_samples"},
            )
        )
    return BaselineReport(
        job=runs[0].job,
        rounds=runs[0].rounds,
        rows=tuple(rows),
        seeds=tuple(seed for run in runs for seed in run.seeds),
        runs=tuple(runs),
    )


def warm_up(spec: JobSpec, code_dir: Path, inputs: Mapping[str, Path], work_dir: Path) -> None:
    """One untimed round of ``spec``'s training on ``inputs``, before anything is timed.

    torch spends a second or more on its first optimizer step in a process; without this,
    whichever model trains first would be charged for it.
    """
    task = load_task(code_dir, spec.entrypoint)
    runner = SiloRunner(
        task, silo="warm-up", inputs=inputs, work_dir=work_dir, hyperparameters=spec.hyperparameters
    )
    runner.fit(1, runner.prepare())


def _mean(rows: list[BaselineRow]) -> BaselineRow:
    names = set.intersection(*(set(r.metrics) for r in rows))
    return BaselineRow(
        kind=BaselineKind.CENTRAL_ONE_MEAN,
        silo=None,
        metrics={k: float(np.mean([r.metrics[k] for r in rows])) for k in sorted(names)},
        seconds=float(np.mean([r.seconds for r in rows])),
        compute_seconds=float(np.mean([r.compute_seconds for r in rows])),
    )


def pool_files(role: str, paths: Mapping[str, Path], out_dir: Path) -> Path:
    """Pool one role's files of every silo into ``out_dir``; the default :data:`Pool`.

    ``.npz`` files with the same keys: each array concatenated along axis 0.
    CSV files with the same header: their rows concatenated, the header once.
    Folders: their files copied into one folder, the same sub-folders kept (class folders
    stay class folders), each file's name prefixed with its silo's.
    Anything else is a :class:`ConfigError` naming the file that cannot be pooled.
    """
    items = list(paths.items())
    out_dir.mkdir(parents=True, exist_ok=True)
    if all(p.is_dir() for _, p in items):
        return _pool_folders(items, out_dir / role)
    for suffix, pool in ((".npz", _pool_npz), (".csv", _pool_csv)):
        if all(p.is_file() and p.suffix.lower() == suffix for _, p in items):
            return pool(role, items, out_dir / f"{role}{suffix}")
    silo, path = next(
        ((s, p) for s, p in items if not (p.is_file() and p.suffix.lower() in (".npz", ".csv"))),
        items[0],
    )
    kinds = sorted({"folder" if p.is_dir() else p.suffix or "no suffix" for _, p in items})
    raise ConfigError(
        f"cannot pool input '{role}': {path} of silo '{silo}' is not a .npz file, a CSV file "
        f"or a folder like the others' (found: {', '.join(kinds)}); pass run_baselines a "
        "pool function that knows this format",
        file=str(path),
        field=f"inputs.{role}",
    )


def _pool_npz(role: str, items: list[tuple[str, Path]], out: Path) -> Path:
    arrays: dict[str, list[np.ndarray[Any, Any]]] = {}
    keys: set[str] | None = None
    for silo, path in items:
        with np.load(path, allow_pickle=False) as data:
            if keys is not None and set(data.files) != keys:
                raise ConfigError(
                    f"cannot pool input '{role}': {path} of silo '{silo}' holds arrays "
                    f"{', '.join(sorted(data.files))}, the others {', '.join(sorted(keys))}",
                    file=str(path),
                    field=f"inputs.{role}",
                )
            keys = set(data.files)
            for key in data.files:
                arrays.setdefault(key, []).append(data[key])
    try:
        pooled = {key: np.concatenate(parts, axis=0) for key, parts in arrays.items()}
    except ValueError as exc:
        raise ConfigError(
            f"cannot pool input '{role}': the silos' arrays do not concatenate: {exc}",
            field=f"inputs.{role}",
        ) from exc
    with out.open("wb") as fh:
        np.savez(fh, **pooled)  # type: ignore[arg-type]
    return out


def _pool_csv(role: str, items: list[tuple[str, Path]], out: Path) -> Path:
    header: list[str] | None = None
    with out.open("w", newline="", encoding="utf-8") as sink:
        writer = csv.writer(sink, lineterminator="\n")
        for silo, path in items:
            with path.open(newline="", encoding="utf-8") as source:
                reader = csv.reader(source)
                first = next(reader, None)
                if header is None:
                    header = first
                    if first is not None:
                        writer.writerow(first)
                elif first != header:
                    raise ConfigError(
                        f"cannot pool input '{role}': {path} of silo '{silo}' has the header "
                        f"{first}, the others {header}",
                        file=str(path),
                        field=f"inputs.{role}",
                    )
                writer.writerows(reader)
    return out


def _pool_folders(items: list[tuple[str, Path]], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for silo, folder in items:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                relative = file.relative_to(folder)
                target = out / relative.parent / f"{silo}_{relative.name}"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, target)
    return out


def pool_inputs(
    inputs_per_silo: Mapping[str, Mapping[str, Path]], out_dir: Path, pool: Pool = pool_files
) -> dict[str, Path]:
    """Pool every role's inputs over the silos, role by role; each silo must have each."""
    roles = sorted({role for inputs in inputs_per_silo.values() for role in inputs})
    pooled: dict[str, Path] = {}
    for role in roles:
        missing = [s for s, inputs in inputs_per_silo.items() if role not in inputs]
        if missing:
            raise ConfigError(
                f"cannot pool input '{role}': silo(s) {', '.join(missing)} have none",
                field=f"inputs.{role}",
            )
        out_dir.mkdir(parents=True, exist_ok=True)
        pooled[role] = pool(role, {s: Path(i[role]) for s, i in inputs_per_silo.items()}, out_dir)
    return pooled
