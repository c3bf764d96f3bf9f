"""One submitter's copy of the runs it may read in the orchestrator's tracking store.

MLflow's server does not check who reads a store: whoever reaches it sees every run. The
orchestrator writes each federation job to its owner's experiment (``OWNER/JOB_NAME``)
with the tags ``fedsilo.submitter`` and ``fedsilo.readers``; :func:`export_runs` copies the
runs one person may read (the jobs it submitted, those shared with it and those shared
with ``*``) into a store of its own, in a folder of its own, to be served to that person
alone (``fedsilo tracking ui --store DIR``).

Everything goes through the MLflow client, never SQL on its database, so the source may
be any store MLflow reaches. Each run is copied whole: the parent run with its silos'
child runs, params, tags, every value of every metric (each step, with its timestamp),
artifacts, its logged-model output (the final model) and status. Each copy carries
``fedsilo.exported_from``, the source run's id, so exporting again into the same folder
adds the runs that are new, completes those that were still running and copies nothing
twice; a finished run whose copy is finished too is
not read again. The folder holds ``fedsilo-export.json``, which says whose export it is: a
folder holding anything else is refused.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, TypeVar

from fedsilo.tracking._mlflow import TrackingError, wrap_mlflow_errors
from fedsilo.tracking._tracker import (
    _PARENT_TAG,
    TAG_JOB_ID,
    TAG_KIND,
    TAG_READERS,
    TAG_SUBMITTER,
    Tracker,
    add_model_output,
)

if TYPE_CHECKING:
    from mlflow.entities import LoggedModelOutput, Metric, Run
    from mlflow.store.entities.paged_list import PagedList
    from mlflow.tracking import MlflowClient

__all__ = ["EXPORT_FILE", "TAG_EXPORTED_FROM", "ExportResult", "export_runs", "may_read"]

EXPORT_FILE = "fedsilo-export.json"
"""The file that marks a folder as one person's export, and says whose."""

TAG_EXPORTED_FROM = "fedsilo.exported_from"
"""On an exported run: the id of the run it copies, in the source store."""

_RUNNING = "RUNNING"
# MLflow's limits on one log_batch call.
_METRICS_PER_BATCH = 1000
_PARAMS_OR_TAGS_PER_BATCH = 100

_T = TypeVar("_T")


@dataclass(frozen=True)
class ExportResult:
    """What an export did, by job id: copied anew, brought up to date, already current."""

    reader: str
    folder: Path
    added: tuple[str, ...]
    updated: tuple[str, ...]
    unchanged: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form for ``fedsilo tracking export --json``."""
        return {
            "reader": self.reader,
            "folder": str(self.folder),
            "added": list(self.added),
            "updated": list(self.updated),
            "unchanged": list(self.unchanged),
        }


def may_read(tags: Mapping[str, str], name: str) -> bool:
    """Whether submitter ``name`` may read the job run with these tags.

    Its owner may, and the submitters ``fedsilo.readers`` names (everyone for ``*``, as in
    a job spec's ``share_with``). A run without an owner (a simulation) is nobody's to export.
    """
    from fedsilo.jobs import SHARE_WITH_ALL

    owner = tags.get(TAG_SUBMITTER)
    if not owner:
        return False
    readers = tags.get(TAG_READERS, "").split(",")
    return name == owner or name in readers or SHARE_WITH_ALL in readers


def export_runs(source: Tracker, reader: str, folder: Path) -> ExportResult:
    """Copy the job runs ``reader`` may read from ``source`` into a store in ``folder``.

    ``folder`` must be new, empty, or ``reader``'s own earlier export, which this refreshes.
    Raises :class:`TrackingError` for another folder or when a store cannot be read or
    written.
    """
    from mlflow.exceptions import MlflowException

    folder = Path(folder).absolute()
    _claim(folder, reader, source.tracking_uri)
    target = Tracker.in_folder(folder)
    added: list[str] = []
    updated: list[str] = []
    unchanged: list[str] = []
    try:
        copier = _Copier(source.client, target)
        for run in sorted(_job_runs(source.client), key=lambda r: r.info.start_time or 0):
            if not may_read(run.data.tags, reader):
                continue
            job_id = run.data.tags.get(TAG_JOB_ID, run.info.run_id)
            copy = copier.copies.get(run.info.run_id)
            if copy is not None and _settled(run, copy):
                unchanged.append(job_id)
                continue
            copier.job(run)
            (added if copy is None else updated).append(job_id)
    except (MlflowException, OSError) as exc:
        raise wrap_mlflow_errors(f"cannot export the runs '{reader}' may read", exc) from exc
    return ExportResult(reader, folder, tuple(added), tuple(updated), tuple(unchanged))


def _claim(folder: Path, reader: str, source_uri: str) -> None:
    """Make ``folder`` ``reader``'s export, or refuse it if it holds anything else."""
    marker = folder / EXPORT_FILE
    if marker.is_file():
        try:
            owner = json.loads(marker.read_text()).get("reader")
        except (OSError, ValueError, AttributeError) as exc:
            raise TrackingError(f"cannot read {marker}: {exc}") from exc
        if owner != reader:
            raise TrackingError(
                f"{folder} holds the tracking export for '{owner}', not for '{reader}'; "
                "export into a new or empty folder"
            )
        return
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise TrackingError(
            f"{folder} is not empty and is not an earlier export for '{reader}' (it has no "
            f"{EXPORT_FILE}); export into a new or empty folder"
        )
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"reader": reader, "source": source_uri}, indent=2) + "\n")


def _settled(run: Run, copy: Run) -> bool:
    """A finished run whose copy finished the same way: nothing left to bring over."""
    status, end = run.info.status, run.info.end_time
    return bool(status != _RUNNING and copy.info.status == status and copy.info.end_time == end)


def _pages(search: Callable[[str | None], PagedList[_T]]) -> Iterator[_T]:
    """Every result of a paged MLflow search."""
    token: str | None = None
    while True:
        page = search(token)
        yield from page
        token = page.token
        if not token:
            return


def _all_runs(client: MlflowClient, filter_string: str = "") -> Iterator[Run]:
    experiments = [
        e.experiment_id for e in _pages(lambda t: client.search_experiments(page_token=t))
    ]
    if experiments:
        yield from _pages(lambda t: client.search_runs(experiments, filter_string, page_token=t))


def _job_runs(client: MlflowClient) -> Iterator[Run]:
    return _all_runs(client, f"tags.`{TAG_KIND}` = 'job'")


def _chunks(items: Sequence[_T], size: int) -> Iterable[Sequence[_T]]:
    return (items[i : i + size] for i in range(0, len(items), size))


class _Copier:
    """Copies runs from one client's store into a tracker's, completing earlier copies."""

    def __init__(self, source: MlflowClient, target: Tracker) -> None:
        self.source = source
        self.target = target
        self.client = target.client
        self.copies: dict[str, Run] = {
            run.data.tags[TAG_EXPORTED_FROM]: run
            for run in _all_runs(self.client)
            if TAG_EXPORTED_FROM in run.data.tags
        }
        self._experiments: dict[str, str] = {}

    def job(self, run: Run) -> None:
        """Copy a job's parent run and its silos' child runs; the parent's status last, so
        an export cut short leaves it unsettled and the next one completes it."""
        experiment = self._experiment(run.info.experiment_id)
        parent = self.run(run, experiment, parent=None, finish=False)
        children = _pages(
            lambda t: self.source.search_runs(
                [run.info.experiment_id],
                f"tags.`{_PARENT_TAG}` = '{run.info.run_id}'",
                page_token=t,
            )
        )
        for child in children:
            self.run(child, experiment, parent=parent, finish=True)
        self._finish(run, parent)

    def _experiment(self, source_id: str) -> str:
        """The export's experiment of the same name as the source's ``source_id``."""
        known = self._experiments.get(source_id)
        if known is None:
            name = self.source.get_experiment(source_id).name
            known = self._experiments[source_id] = self.target._experiment(name)
        return known

    def run(self, run: Run, experiment: str, *, parent: str | None, finish: bool) -> str:
        """Bring one run's copy up to date (creating it if need be); its copy's id."""
        from mlflow.entities import Param, RunTag

        tags = {k: v for k, v in run.data.tags.items() if k != _PARENT_TAG}
        tags[TAG_EXPORTED_FROM] = run.info.run_id
        if parent is not None:
            tags[_PARENT_TAG] = parent
        copy = self.copies.get(run.info.run_id)
        if copy is None:
            created = self.client.create_run(
                experiment, start_time=run.info.start_time, tags=tags, run_name=run.info.run_name
            )
            run_id, had_params, had_tags = created.info.run_id, {}, dict(tags)
            had_metrics: set[str] = set()
        else:
            run_id, had_params, had_tags = copy.info.run_id, copy.data.params, copy.data.tags
            had_metrics = set(copy.data.metrics)
        params = [Param(k, v) for k, v in run.data.params.items() if k not in had_params]
        for some_params in _chunks(params, _PARAMS_OR_TAGS_PER_BATCH):
            self.client.log_batch(run_id, params=some_params)
        changed = [RunTag(k, v) for k, v in tags.items() if had_tags.get(k) != v]
        for some_tags in _chunks(changed, _PARAMS_OR_TAGS_PER_BATCH):
            self.client.log_batch(run_id, tags=some_tags)
        metrics: list[Metric] = []
        for key in sorted(run.data.metrics):
            logged: set[tuple[int, int, str]] = set()
            if key in had_metrics:
                logged = {_point(m) for m in self.client.get_metric_history(run_id, key)}
            history = self.source.get_metric_history(run.info.run_id, key)
            metrics += [m for m in history if _point(m) not in logged]
        for some_metrics in _chunks(metrics, _METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=some_metrics)
        self._artifacts(run.info.run_id, run_id)
        if copy is None or not _model_outputs(copy):
            self._model_outputs(run, run_id, experiment)
        if finish:
            self._finish(run, run_id)
        return str(run_id)

    def _model_outputs(self, run: Run, copy: str, experiment: str) -> None:
        """Give the copy the logged models the source run outputs (the job's final model)."""
        for output in _model_outputs(run):
            model = self.source.get_logged_model(output.model_id)
            add_model_output(
                self.client,
                copy,
                experiment,
                name=model.name,
                step=output.step,
                tags={**model.tags, TAG_EXPORTED_FROM: model.model_id},
            )

    def _finish(self, run: Run, copy: str) -> None:
        if run.info.status != _RUNNING:
            self.client.set_terminated(copy, run.info.status, end_time=run.info.end_time)

    def _artifacts(self, source_id: str, copy: str) -> None:
        """Copy the artifact files of ``source_id`` its copy does not hold yet."""
        missing = sorted(set(_files(self.source, source_id)) - set(_files(self.client, copy)))
        if not missing:
            return
        with tempfile.TemporaryDirectory(prefix="fedsilo-export-") as tmp:
            for path in missing:
                local = self.source.download_artifacts(source_id, path, tmp)
                folder = str(PurePosixPath(path).parent)
                self.client.log_artifact(copy, local, None if folder == "." else folder)


def _model_outputs(run: Run) -> list[LoggedModelOutput]:
    """The logged models a run outputs (none from a store that records no outputs)."""
    return list(run.outputs.model_outputs) if run.outputs is not None else []


def _point(metric: Metric) -> tuple[int, int, str]:
    """A metric value's identity: step, timestamp and value (``repr``, so NaN equals NaN)."""
    return (metric.step, metric.timestamp, repr(metric.value))


def _files(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    """The paths of every artifact file of a run, below ``path``."""
    out: list[str] = []
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            out += _files(client, run_id, item.path)
        else:
            out.append(item.path)
    return out
