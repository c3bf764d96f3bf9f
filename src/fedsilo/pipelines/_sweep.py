"""Sweeps: the same FL job simulated once per value of one setting, and their plot.

A sweep names one setting of the job spec by its dotted path (``hyperparameters.lr``,
``rounds``, ``strategy.weights.silo-a``) and the values to try. Each value is read as a
YAML scalar, set in the spec's dict form and validated again, so a sweep can try exactly
what a job file could say, and every variant (and the plot's path) is checked before the
first one runs. ``fedsilo sim --sweep`` and its alias ``fedsilo sweep`` run through
:func:`run_sweep`.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import yaml

from fedsilo.config._yamlio import validate_model
from fedsilo.errors import ConfigError
from fedsilo.jobs import JobSpec
from fedsilo.tracking import track_simulation

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from fedsilo.tracking import Tracker

__all__ = [
    "SweepResult",
    "SweepRow",
    "check_plot_path",
    "default_plot_path",
    "log_axis",
    "override_spec",
    "parse_sweep",
    "plot_sweep",
    "run_sweep",
    "sweep_figure",
]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# A setting that is a learning rate (hyperparameters.lr, strategy.server_lr, ...): tried
# over orders of magnitude, so plotted on a log axis.
_LEARNING_RATE = re.compile(r"(^|_)(lr|learning_rate)$", re.IGNORECASE)


class SweepRow(NamedTuple):
    """One variant: the value as given, the final model's evaluation, its wall-clock time."""

    value: str
    metrics: dict[str, float]
    seconds: float


class SweepResult(NamedTuple):
    """Every variant of a sweep over ``key``; ``metric`` is the one to compare them by.

    ``plot`` is the PNG :func:`run_sweep` wrote, when it was asked for one.
    """

    job: str
    key: str
    metric: str
    rows: list[SweepRow]
    plot: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, for ``fedsilo sim --sweep ... --json``."""
        return {
            "job": self.job,
            "key": self.key,
            "metric": self.metric,
            "rows": [r._asdict() for r in self.rows],
            "plot": None if self.plot is None else str(self.plot),
        }


def parse_sweep(text: str) -> tuple[str, list[str]]:
    """Split ``KEY=V1,V2,...`` (the ``--sweep``/``--set`` option) into the key and values."""
    key, sep, values = text.partition("=")
    key = key.strip()
    parts = [v.strip() for v in values.split(",")] if sep else []
    if not key or not parts or any(not v for v in parts):
        raise ConfigError(
            f"a sweep is written KEY=V1,V2,... (e.g. hyperparameters.lr=0.01,0.1), not {text!r}"
        )
    twice = sorted({v for v in parts if parts.count(v) > 1})
    if twice:
        raise ConfigError(
            f"the sweep over '{key}' lists {', '.join(twice)} more than once", field=key
        )
    return key, parts


def default_plot_path(job: str, key: str, folder: Path | None = None) -> Path:
    """Where a sweep's plot goes when no path is given: ``JOB-sweep-KEY.png`` in ``folder``.

    ``folder`` defaults to the current directory, as ``fedsilo model get`` does for models.
    """
    name = f"{_UNSAFE.sub('_', job)}-sweep-{_UNSAFE.sub('_', key)}.png"
    return (folder or Path(".")) / name


def check_plot_path(path: Path) -> None:
    """Refuse, before anything runs, a plot path that could not receive the PNG.

    The path must end in ``.png`` (the plot is always a PNG), must not be a folder, and
    its nearest existing parent folder must be writable.
    """
    if path.suffix.lower() != ".png":
        raise ConfigError(
            f"the sweep's plot is a PNG; give a path ending in .png, not '{path}'", field="plot"
        )
    if path.is_dir():
        raise ConfigError(f"the plot path '{path}' is a folder", field="plot")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(
            f"cannot write the plot '{path}': {parent} is not a writable folder", field="plot"
        )


def _scalar(raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except (yaml.YAMLError, ValueError, RecursionError):  # kept as text: the spec says why
        return raw


def override_spec(spec: JobSpec, key: str, value: str) -> JobSpec:
    """``spec`` with the setting at dotted path ``key`` set to ``value`` (a YAML scalar).

    Missing parents are created (``privacy.local.target_epsilon`` on a job without privacy
    settings), and settings the job file leaves to their defaults are derived again, so
    ``strategy.name=median`` works on a job that names no strategy parameters. A key the
    spec does not have or a value it does not accept is a :class:`ConfigError` naming
    the key.
    """
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"'{key}' is not a dotted path into the job spec", field=key)
    # what the job file says, so defaults follow the override (strategy.name=median must
    # not carry FedAvg's default weighting into a strategy that has none)
    data: Any = spec.model_dump(mode="json", exclude_unset=True)
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        here = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"'{here}' is not an item of the list", field=key)
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"'{here}' is inside a value that is not a mapping", field=key)
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = _scalar(value)
    elif isinstance(node, dict):
        node[last] = _scalar(value)
    else:
        raise ConfigError(f"'{key}' does not name a setting of the job spec", field=key)
    try:
        return validate_model(JobSpec, data, Path(f"job '{spec.name}'"))
    except ConfigError as exc:
        raise ConfigError(
            f"cannot set '{key}' to {value!r}: {exc.message}", field=exc.field or key
        ) from None


def run_sweep(
    spec: JobSpec,
    code_dir: Path,
    inputs: Mapping[str, Mapping[str, Path]],
    key: str,
    values: Sequence[str],
    *,
    work_root: Path,
    metric: str | None = None,
    plot: Path | None = None,
    on_row: Callable[[SweepRow], None] | None = None,
    tracker: Tracker | None = None,
) -> SweepResult:
    """Simulate ``spec`` once per value of ``key``; every variant is validated first.

    One untimed round runs first, so the first variant's time is not inflated by library
    start-up and the variants' times compare.

    ``metric`` picks the metric to compare by (default: ``accuracy`` when the task
    reports it, else its first evaluation metric); naming one the task does not report
    is a :class:`ConfigError` raised after the first variant, not after all of them.
    ``plot``, when given, is checked before anything runs (:func:`check_plot_path`) and
    receives the PNG of :func:`plot_sweep` at the end. ``on_row`` sees each variant as it
    finishes. With a ``tracker`` each variant is logged as a run of its own, tagged
    ``fedsilo.sweep`` = ``KEY=VALUE``, so the MLflow UI compares them side by side.
    """
    from fedsilo.pipelines._baseline import warm_up
    from fedsilo.pipelines._simulation import simulate

    if not values:
        raise ConfigError(f"the sweep over '{key}' has no values", field=key)
    variants = [(value, override_spec(spec, key, value)) for value in values]
    if plot is not None:
        check_plot_path(plot)
    first = variants[0][1]
    warm_up(first, code_dir, inputs[first.silos[0]], work_root / "warm-up")
    rows: list[SweepRow] = []
    chosen = metric
    for i, (value, variant) in enumerate(variants):
        started = time.perf_counter()
        result = simulate(variant, code_dir, inputs, work_root=work_root / f"variant-{i}")
        seconds = time.perf_counter() - started
        if tracker is not None:
            track_simulation(tracker, variant, result, sweep=f"{key}={value}")
        metrics = result.final_metrics
        rows.append(SweepRow(value, metrics, seconds))
        if i == 0:
            chosen = _pick_metric(metrics, metric)
        if on_row is not None:
            on_row(rows[-1])
    swept = SweepResult(job=spec.name, key=key, metric=chosen or "", rows=rows)
    if plot is not None:
        swept = swept._replace(plot=plot_sweep(swept, plot))
    return swept


def _pick_metric(metrics: Mapping[str, float], wanted: str | None) -> str:
    names = [k for k in metrics if k != "num_samples"]
    if wanted is not None:
        if wanted not in metrics:
            raise ConfigError(
                f"the task reports no metric '{wanted}'; it reports: {', '.join(names) or 'none'}",
                field="metric",
            )
        return wanted
    if "accuracy" in names:
        return "accuracy"
    if not names:
        raise ConfigError("the task's evaluate() reports no metric besides num_samples")
    return names[0]


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def log_axis(key: str, values: Sequence[float]) -> bool:
    """Whether a sweep over ``key`` with these numeric values is plotted on a log axis.

    A learning rate (a setting named ``lr``, ``learning_rate`` or ending in ``_lr`` or
    ``_learning_rate``, such as ``hyperparameters.lr`` or ``strategy.server_lr``) always
    is, as is any setting whose values span two decades or more; values must be positive.
    """
    if not values or min(values) <= 0:
        return False
    if _LEARNING_RATE.search(key.rsplit(".", 1)[-1]):
        return True
    return max(values) / min(values) >= 100


def plot_sweep(result: SweepResult, path: Path, metric: str | None = None) -> Path:
    """Write a PNG of ``metric`` (default: the sweep's) against the swept value.

    Numeric values get a numeric axis, logarithmic for a learning rate and for values that
    span two decades or more (:func:`log_axis`), ticked at the values tried; anything else
    is categorical, in the order given. Drawn with matplotlib's Agg canvas directly: no
    display, no global pyplot state.
    """
    figure = sweep_figure(result, metric)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def sweep_figure(result: SweepResult, metric: str | None = None) -> Figure:
    """The figure :func:`plot_sweep` writes (on matplotlib's Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    name = metric or result.metric
    points = [(row.value, row.metrics.get(name, math.nan)) for row in result.rows]
    parsed = [_number(value) for value, _ in points]
    figure = Figure(figsize=(6.4, 4.2), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    ys = [y for _, y in points]
    label = result.key
    if all(v is not None for v in parsed):
        xs = [float(v or 0.0) for v in parsed]
        order = sorted(range(len(xs)), key=xs.__getitem__)
        axes.plot([xs[i] for i in order], [ys[i] for i in order], marker="o")
        if log_axis(result.key, xs):
            axes.set_xscale("log")
            axes.set_xticks([xs[i] for i in order], [points[i][0] for i in order])
            axes.minorticks_off()  # the values tried, not 10^-1.3 and its neighbours
            label = f"{result.key} (log scale)"
    else:
        axes.plot(range(len(points)), ys, marker="o", linestyle="none")  # no order to join
        axes.margins(x=0.2)
        axes.set_xticks(range(len(points)), [value for value, _ in points])
    axes.set_xlabel(label)
    axes.set_ylabel(f"final {name}")
    axes.set_title(f"{result.job}: final {name} by {result.key}")
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    return figure
