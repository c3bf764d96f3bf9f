"""Experiment tracking of FL jobs in MLflow: one parent run per job, one child per silo.

The embedded default is a SQLite store inside the workspace (``tracking/mlflow.db``, with
artifacts in ``tracking/artifacts``), so tracking needs no server; ``fedsilo tracking ui``
serves the same store. A round is a step: each metric is one MLflow metric per silo, whose
value at ``step=n`` is round n's, so the UI draws it as a curve over the rounds:

* ``{silo}/{metric}`` and ``aggregate/{metric}`` in the job's parent run;
* ``{metric}`` in each silo's nested child run, so the UI can overlay the silos.

Per silo, ``{metric}`` is an evaluation metric, ``train_{metric}`` a training one and
``epsilon`` the local DP-SGD spend so far; the aggregate also carries the federation's
privacy record (``central_epsilon``). docs/tracking.md documents every key; the
orchestrator logs them while the job runs (:mod:`fedsilo.tracking._live`).

Every experiment is tagged ``mlflow.experimentKind`` = ``custom_model_development``,
MLflow's mark of a model-training experiment ("Machine learning" in its UI), and the job's
final model is the run's logged-model output, so MLflow files the run as a training run,
not as an evaluation run of its GenAI view.

Only :class:`mlflow.tracking.MlflowClient` is used, never MLflow's global "active run", so
one process may track several jobs from several threads.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsilo.tracking._mlflow import TrackingError, mlflow_client, wrap_mlflow_errors

if TYPE_CHECKING:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

__all__ = ["JobRun", "TrackedJob", "Tracker", "workspace_store"]

TAG_KIND = "fedsilo.kind"
TAG_JOB_ID = "fedsilo.job_id"
TAG_JOB_NAME = "fedsilo.job_name"
TAG_SILO = "fedsilo.silo"
TAG_STATE = "fedsilo.state"
TAG_SUBMITTER = "fedsilo.submitter"
TAG_READERS = "fedsilo.readers"
TAG_RUNTIME = "fedsilo.runtime"
TAG_SWEEP = "fedsilo.sweep"
TAG_ROUNDS = "fedsilo.rounds"
TAG_ARTIFACT = "fedsilo.artifact"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
"""MLflow's experiment tag for the kind of work an experiment holds."""
MODEL_TRAINING = "custom_model_development"
"""The ``mlflow.experimentKind`` of model training ("Machine learning" in MLflow's UI)."""
_PARENT_TAG = "mlflow.parentRunId"
_MAX_PARAM_CHARS = 6000
_BAD_NAME_CHARS = re.compile(r"[^\w.\- /]")


class _RunStatus(StrEnum):
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"


# A job's final state (``fedsilo.api.JobState`` values) → the MLflow run status.
_STATUS = {
    "succeeded": _RunStatus.FINISHED,
    "finished": _RunStatus.FINISHED,
    "failed": _RunStatus.FAILED,
    "cancelled": _RunStatus.KILLED,
    "killed": _RunStatus.KILLED,
}


def workspace_store(root: Path) -> tuple[str, Path, Path]:
    """The tracking URI, database file and artifact folder of a workspace's store.

    In a provisioned workspace the store is the orchestrator's, in its storage
    (``<orchestrator storage>/tracking``), where the orchestrator tracks every job; any
    other folder gets its own ``tracking`` folder.
    """
    root = Path(root).absolute()
    if (root / "federation.yaml").is_file() and (root / "kits").is_dir():
        from fedsilo.config import open_workspace

        return store_in(open_workspace(root).kit("orchestrator").storage_path / "tracking")
    return store_in(root / "tracking")


def store_in(folder: Path) -> tuple[str, Path, Path]:
    """The tracking URI, database file and artifact folder of a store kept in ``folder``."""
    db = folder / "mlflow.db"
    return f"sqlite:///{db}", db, folder / "artifacts"


def _name(text: str) -> str:
    """``text`` as a valid MLflow metric or param name (letters, digits, ``_.- /``)."""
    return _BAD_NAME_CHARS.sub("_", text).strip("/") or "_"


@dataclass
class JobRun:
    """The handle of one tracked FL job: its parent run and one child run per silo."""

    run_id: str
    job_id: str
    job_name: str
    experiment_id: str
    silo_runs: dict[str, str] = field(default_factory=dict)
    rounds: int = 0  # the last round logged so far (the run's ``fedsilo.rounds``)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)


@dataclass(frozen=True)
class TrackedJob:
    """A job as the tracking store remembers it, for listings."""

    job_id: str
    job_name: str
    run_id: str
    status: str
    started: float
    rounds: int
    final: dict[str, float]

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form for ``fedsilo tracking runs --json``."""
        return {
            "job_id": self.job_id,
            "job_name": self.job_name,
            "run_id": self.run_id,
            "status": self.status,
            "started": self.started,
            "rounds": self.rounds,
            "final": dict(self.final),
        }


class Tracker:
    """Logs FL jobs to one MLflow store; safe to share between threads.

    Each job name gets its own MLflow experiment, so reruns and sweep variants of one job
    sit side by side in the UI; a job with a submitter (the orchestrator's) goes to its
    owner's experiment, ``SUBMITTER/NAME``, so two submitters' jobs of one name never mix.
    Every experiment it creates or first writes to is marked as model training
    (``mlflow.experimentKind``), unless it is marked as something else already.
    """

    def __init__(self, tracking_uri: str, artifact_root: str | Path | None) -> None:
        self.tracking_uri = tracking_uri
        root = artifact_root.as_uri() if isinstance(artifact_root, Path) else artifact_root
        self.artifact_root = None if root is None else root.rstrip("/")
        self._client: MlflowClient | None = None
        self._lock = threading.Lock()
        self._experiments: dict[str, str] = {}

    @classmethod
    def in_folder(cls, folder: Path) -> Tracker:
        """A SQLite store kept in ``folder`` (the orchestrator's: its storage's ``tracking``)."""
        uri, db, artifacts = store_in(folder)
        db.parent.mkdir(parents=True, exist_ok=True)
        artifacts.mkdir(parents=True, exist_ok=True)
        return cls(uri, artifacts.absolute())

    @classmethod
    def for_workspace(cls, root: Path) -> Tracker:
        """The embedded default: a SQLite store in the workspace (see :func:`workspace_store`)."""
        uri, db, artifacts = workspace_store(root)
        db.parent.mkdir(parents=True, exist_ok=True)
        artifacts.mkdir(parents=True, exist_ok=True)
        return cls(uri, artifacts.absolute())

    @classmethod
    def for_uri(cls, tracking_uri: str, artifact_root: str | Path | None = None) -> Tracker:
        """A store anywhere MLflow reaches (a database URL or a tracking server).

        ``artifact_root`` (a folder or URI) is where new experiments keep artifacts; None
        leaves that to the store, which suits a tracking server that serves artifacts.
        """
        return cls(tracking_uri, artifact_root)

    @property
    def client(self) -> MlflowClient:
        """The MLflow client, created (and MLflow imported) on first use."""
        with self._lock:
            if self._client is None:
                self._client = mlflow_client(self.tracking_uri)
            return self._client

    def _experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        with self._lock:
            known = self._experiments.get(name)
        if known is not None:
            return known
        client = self.client
        with self._lock:
            existing = client.get_experiment_by_name(name)
            if existing is not None:
                experiment_id = str(existing.experiment_id)
                if EXPERIMENT_KIND_TAG not in existing.tags:  # a store written before
                    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
            else:
                try:
                    location = None
                    if self.artifact_root is not None:
                        location = f"{self.artifact_root}/{_name(name)}"
                    experiment_id = client.create_experiment(
                        name,
                        artifact_location=location,
                        tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING},
                    )
                except MlflowException:  # created meanwhile by another process
                    again = client.get_experiment_by_name(name)
                    if again is None:
                        raise
                    experiment_id = str(again.experiment_id)
            self._experiments[name] = experiment_id
            return experiment_id

    def start_job(
        self,
        job_id: str,
        job_name: str,
        params: Mapping[str, Any],
        *,
        submitter: str | None = None,
        readers: Sequence[str] = (),
        tags: Mapping[str, str] | None = None,
    ) -> JobRun:
        """Open the parent run of a job; ``params`` (nested dicts allowed) become its params.

        The run is ``RUNNING`` until :meth:`finish`. ``tags`` become tags of the run
        (``fedsilo.runtime`` is ``federation`` unless ``tags`` say otherwise). A job with a
        ``submitter`` belongs to it: the run goes to the experiment ``SUBMITTER/JOB_NAME``
        with the tags ``fedsilo.submitter`` and ``fedsilo.readers`` (``readers``, the
        submitters the job is shared with or ``*`` for every one, joined by commas; empty
        when it is not shared). A job without one goes to the experiment ``JOB_NAME``.
        """
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException

        tags = {
            TAG_KIND: "job",
            TAG_JOB_ID: job_id,
            TAG_JOB_NAME: job_name,
            TAG_RUNTIME: "federation",
            **(tags or {}),
        }
        experiment = job_name
        if submitter is not None:
            tags[TAG_SUBMITTER] = submitter
            tags[TAG_READERS] = ",".join(readers)
            experiment = f"{submitter}/{job_name}"
        try:
            experiment_id = self._experiment(experiment)
            earlier = self._job_run(experiment_id, job_id)
            if earlier is not None:  # a job resumed after a restart goes on in its run
                self.client.update_run(earlier.run_id, status="RUNNING")
                return earlier
            run = self.client.create_run(experiment_id, run_name=job_id, tags=tags)
            flat = [Param(_name(k), v) for k, v in _flatten(params)]
            self.client.log_batch(run.info.run_id, params=flat)
        except MlflowException as exc:
            raise wrap_mlflow_errors(f"cannot start tracking job {job_id}", exc) from exc
        return JobRun(
            run_id=run.info.run_id, job_id=job_id, job_name=job_name, experiment_id=experiment_id
        )

    def _job_run(self, experiment_id: str, job_id: str) -> JobRun | None:
        """The run job ``job_id`` was logged to before (by an orchestrator that stopped while
        it ran), with its silos' child runs and the last round it holds; None if none."""
        found = self.client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{TAG_JOB_ID}` = '{job_id}' and tags.`{TAG_KIND}` = 'job'",
            max_results=1,
        )
        if not found:
            return None
        parent = found[0]
        children = self.client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{_PARENT_TAG}` = '{parent.info.run_id}'",
            max_results=10_000,
        )
        return JobRun(
            run_id=parent.info.run_id,
            job_id=job_id,
            job_name=str(parent.data.tags.get(TAG_JOB_NAME, job_id)),
            experiment_id=experiment_id,
            silo_runs={
                str(c.data.tags[TAG_SILO]): c.info.run_id
                for c in children
                if TAG_SILO in c.data.tags
            },
            rounds=_rounds(parent.data.tags, parent.data.metrics),
        )

    def _silo_run(self, run: JobRun, silo: str) -> str:
        with run._lock:
            child = run.silo_runs.get(silo)
            if child is None:
                created = self.client.create_run(
                    run.experiment_id,
                    run_name=silo,
                    tags={
                        _PARENT_TAG: run.run_id,
                        TAG_KIND: "silo",
                        TAG_JOB_ID: run.job_id,
                        TAG_JOB_NAME: run.job_name,
                        TAG_SILO: silo,
                    },
                )
                child = run.silo_runs[silo] = created.info.run_id
            return child

    def log_round(
        self,
        run: JobRun,
        round_: int,
        per_silo: Mapping[str, Mapping[str, float]],
        aggregate: Mapping[str, float],
        epsilon: Mapping[str, float] | None = None,
    ) -> None:
        """Log one round's per-silo and aggregate metrics (and each silo's epsilon so far)."""
        silos: dict[str, dict[str, float]] = {s: dict(m) for s, m in per_silo.items()}
        for silo, eps in (epsilon or {}).items():
            silos.setdefault(silo, {})["epsilon"] = eps
        self.log_rounds(run, [(round_, silos, dict(aggregate))])

    def log_rounds(
        self,
        run: JobRun,
        rounds: Sequence[tuple[int, Mapping[str, Mapping[str, float]], Mapping[str, float]]],
    ) -> None:
        """Log several rounds' ``(round, per_silo, aggregate)`` metrics: one batch per silo
        run and one for the parent run, whatever the number of rounds.

        Round n is step n of each metric: ``{silo}/{metric}`` and ``aggregate/{metric}`` in
        the parent run, ``{metric}`` in the silo's child run. The parent's tag
        ``fedsilo.rounds`` follows the last round logged.
        """
        from mlflow.entities import RunTag
        from mlflow.exceptions import MlflowException

        now = int(time.time() * 1000)
        parent: list[Metric] = []
        children: dict[str, list[Metric]] = {}
        for round_, per_silo, aggregate in rounds:
            for silo, metrics in per_silo.items():
                child = children.setdefault(silo, [])
                for metric, value in metrics.items():
                    parent.append(_metric(f"{_name(silo)}/{_name(metric)}", value, now, round_))
                    child.append(_metric(_name(metric), value, now, round_))
            for metric, value in aggregate.items():
                parent.append(_metric(f"aggregate/{_name(metric)}", value, now, round_))
        last = max((r for r, *_ in rounds), default=0)
        tags = [RunTag(TAG_ROUNDS, str(last))] if last > run.rounds else []
        first = rounds[0][0] if rounds else 0
        try:
            for silo, child in children.items():
                self.client.log_batch(self._silo_run(run, silo), metrics=child)
            if parent or tags:
                self.client.log_batch(run.run_id, metrics=parent, tags=tags)
        except MlflowException as exc:
            what = f"round {first}" if len(rounds) == 1 else f"rounds {first}-{rounds[-1][0]}"
            raise wrap_mlflow_errors(f"cannot log {what} of job {run.job_id}", exc) from exc
        run.rounds = max(run.rounds, last)

    def log_model(self, run: JobRun, path: Path) -> None:
        """Store the final global model (a safetensors file) as the artifact ``model/NAME``,
        and record it as the run's output: a logged model (MLflow 3's models) named after
        the job id, at the step of the last round, whose tag ``fedsilo.artifact`` names that
        artifact. A run with a model output is a training run to MLflow's UI."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.log_artifact(run.run_id, str(path), artifact_path="model")
            add_model_output(
                self.client,
                run.run_id,
                run.experiment_id,
                name=run.job_id,
                step=run.rounds,
                tags={TAG_JOB_ID: run.job_id, TAG_ARTIFACT: f"model/{path.name}"},
            )
        except (MlflowException, OSError) as exc:
            raise wrap_mlflow_errors(f"cannot store the model of job {run.job_id}", exc) from exc

    def finish(self, run: JobRun, state: str) -> None:
        """Close the job's runs; ``state`` is its final ``JobState`` (or an MLflow status)."""
        from mlflow.exceptions import MlflowException

        value = str(state).lower()
        status = _STATUS.get(value)
        if status is None:
            raise TrackingError(
                f"unknown final state '{state}'; use one of: {', '.join(sorted(_STATUS))}"
            )
        try:
            self.client.set_tag(run.run_id, TAG_STATE, value)
            with run._lock:
                children = list(run.silo_runs.values())
            for child in children:
                self.client.set_terminated(child, status.value)
            self.client.set_terminated(run.run_id, status.value)
        except MlflowException as exc:
            raise wrap_mlflow_errors(f"cannot finish tracking job {run.job_id}", exc) from exc

    def jobs(self) -> list[TrackedJob]:
        """Every job this store tracked, newest first, with its last aggregate metrics."""
        from mlflow.exceptions import MlflowException

        try:
            experiments = [e.experiment_id for e in self.client.search_experiments()]
            if not experiments:
                return []
            runs = self.client.search_runs(
                experiments,
                filter_string=f"tags.`{TAG_KIND}` = 'job'",
                max_results=1000,
                order_by=["attributes.start_time DESC"],
            )
        except MlflowException as exc:
            raise wrap_mlflow_errors("cannot list tracked jobs", exc) from exc
        out = []
        for r in runs:
            metrics = r.data.metrics
            out.append(
                TrackedJob(
                    job_id=r.data.tags.get(TAG_JOB_ID, ""),
                    job_name=r.data.tags.get(TAG_JOB_NAME, ""),
                    run_id=r.info.run_id,
                    status=str(r.info.status),
                    started=(r.info.start_time or 0) / 1000,
                    rounds=_rounds(r.data.tags, metrics),
                    final={
                        k.removeprefix("aggregate/"): v
                        for k, v in metrics.items()
                        if k.startswith("aggregate/")
                    },
                )
            )
        return out


def add_model_output(
    client: MlflowClient,
    run_id: str,
    experiment_id: str,
    *,
    name: str,
    step: int,
    tags: Mapping[str, str],
) -> str:
    """Record a logged model as the output of ``run_id`` at ``step``; its id.

    The logged model holds no files (the weights are the run's artifact its tags name), so
    the model costs no second copy in the store.
    """
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    model = client.create_logged_model(
        experiment_id, name=_model_name(name), source_run_id=run_id, tags=dict(tags)
    )
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(model_id=model.model_id, step=step)])
    return str(model.model_id)


def _model_name(text: str) -> str:
    """``text`` as a logged model's name (MLflow refuses ``/ : . % " '`` in one)."""
    return re.sub(r"[/:.%\"']", "_", text) or "model"


def _rounds(tags: Mapping[str, str], metrics: Mapping[str, float]) -> int:
    """The last round a job's run holds (``fedsilo.rounds``; in a store written before
    that tag, the highest ``n`` of its former ``iteration_{n}/...`` keys)."""
    if tags.get(TAG_ROUNDS, "").isdigit():
        return int(tags[TAG_ROUNDS])
    found = (k.split("/")[0][len("iteration_") :] for k in metrics if k.startswith("iteration_"))
    return max((int(n) for n in found if n.isdigit()), default=0)


def _metric(key: str, value: float, timestamp: int, step: int) -> Metric:
    from mlflow.entities import Metric

    return Metric(key=key, value=float(value), timestamp=timestamp, step=step)


def _flatten(params: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, str]]:
    """Nested dicts as dotted keys (``hyperparameters.lr``), values as bounded strings."""
    for key, value in params.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, f"{dotted}.")
        else:
            if isinstance(value, list | tuple):
                text = ",".join(str(v) for v in value)
            else:
                text = str(value)
            yield dotted, text[:_MAX_PARAM_CHARS]
