"""Errors stay in the silo: the scrubber, the class names that may leave, the error store."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import uuid
from pathlib import Path

import pytest

from fedsilo.api import Outcome, TaskKind, TaskResult
from fedsilo.api._messages import JobTask, PingTask, parse_task
from fedsilo.audit import AuditLog, read_log
from fedsilo.errors import ConfigError, FedsiloError
from fedsilo.silo._errors import (
    ERROR_ID_PATTERN,
    ERROR_MAX,
    PATH_PLACEHOLDER,
    SENTENCE_MAX,
    SHARED_MAX,
    ErrorStore,
    KeptError,
    SiloErrors,
    known_class,
    scrub,
)
from fedsilo.silo._workerproc import WorkerFailed

ROW = "patient 0042, 1961-03-04, diagnosis: C50.9"


# -- scrub ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        'File "/srv/fedsilo/silo-a/jobs/j1/code/task.py", line 12, in train',
        "FileNotFoundError: [Errno 2] No such file or directory: '/srv/my data/rows.csv'",
        "cannot open /home/ana/rows.csv: permission denied",
        "cannot write to /sys/fs/cgroup/user.slice/fedsilo.scope.",
        "rows in ~/private/rows.csv and C:\\Users\\ana\\rows.csv",
    ],
)
def test_scrub_leaves_no_absolute_path(text: str) -> None:
    out = scrub(text, limit=500)
    assert PATH_PLACEHOLDER in out
    assert not re.search(r"(?<![\w:])/[a-z]", out), out
    for word in ("srv", "home", "ana", "cgroup", "private", "Users"):
        assert word not in out


def test_scrub_replaces_a_known_root_whole_even_with_spaces() -> None:
    root = Path("/srv/Hospital Data/silo-a")
    text = f"{root}/jobs/j1/work/x.csv is bad; {root}/other too; {root}x stays a name"
    out = scrub(text, limit=500, roots=[root])
    assert "Hospital" not in out.split("stays")[0]
    assert out.startswith(f"{PATH_PLACEHOLDER} is bad; {PATH_PLACEHOLDER} too;")


def test_scrub_keeps_fedsilos_own_words() -> None:
    for text in (
        "memory limit 2 GiB reached in round 3",
        "silo 'silo-b' refused the job (rule 'code-must-be-signed'): unsigned",
        "orchestrator https://127.0.0.1:8443/api answered 3/4 of a/b",
    ):
        assert scrub(text, limit=500) == text


def test_scrub_bounds_what_leaves_and_says_it_cut() -> None:
    out = scrub(ROW * 1000, limit=500)
    assert len(out) == 500 and out.endswith("(cut)")


def test_scrub_drops_terminal_control_characters() -> None:
    assert "\x1b" not in scrub("red \x1b[31m text\r\n", limit=100)


# -- class names ------------------------------------------------------------------------------


def test_only_known_exception_classes_are_named() -> None:
    assert known_class("ValueError") == "ValueError"
    assert known_class("OutOfMemoryError") == "OutOfMemoryError"
    assert known_class("PrivacyBudgetExceeded") == "PrivacyBudgetExceeded"
    for chosen in ("Patient0042", "C50_9", "", "Value Error", 42, None):
        assert known_class(chosen) is None


# -- the store --------------------------------------------------------------------------------


def _kept(error_id: str, when: float = 1.0) -> KeptError:
    return KeptError(
        id=error_id,
        time=when,
        silo="silo-a",
        job_id="j1",
        kind="fit",
        round=2,
        step="round 2",
        error_class="ValueError",
        message=f"ValueError: {ROW}",
        sent="the task code raised ValueError",
    )


def test_the_store_keeps_each_error_whole_and_private(tmp_path: Path) -> None:
    store = ErrorStore(tmp_path, "silo-a")
    error_id = store.new_id()
    assert re.match(ERROR_ID_PATTERN, error_id)
    stored = store.write(_kept(error_id))
    assert stat.S_IMODE(os.stat(stored.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store.folder).st_mode) == 0o700
    assert hashlib.sha256(stored.path.read_bytes()).hexdigest() == stored.sha256
    assert store.get(error_id).message == f"ValueError: {ROW}"
    assert ROW in store.get(error_id).text()
    assert [p.name for p in store.folder.iterdir()] == [f"{error_id}.json"]


def test_the_store_lists_the_newest_first(tmp_path: Path) -> None:
    store = ErrorStore(tmp_path, "silo-a")
    ids = [store.new_id() for _ in range(3)]
    for when, error_id in enumerate(ids):
        store.write(_kept(error_id, when=float(when)))
    assert [e.id for e in store.recent()] == ids[::-1]
    assert [e.id for e in store.recent(2)] == ids[:0:-1]


@pytest.mark.parametrize("asked", ["e-000000000000", "../../etc/passwd", "e-XYZ"])
def test_an_unknown_or_malformed_id_is_an_error_naming_it(tmp_path: Path, asked: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(asked)):
        ErrorStore(tmp_path, "silo-a").get(asked)


# -- what a failed task sends -------------------------------------------------------------------


def _task(kind: TaskKind = TaskKind.FIT) -> JobTask:
    fields: dict[str, object] = {"task_id": uuid.uuid4().hex, "kind": kind.value, "job_id": "j1"}
    if kind in (TaskKind.FIT, TaskKind.EVALUATE):
        fields.update(round=3, bundle_digest="a" * 64, params_digest="b" * 64)
    task = parse_task(json.dumps(fields))
    assert not isinstance(task, PingTask)
    return task


def _errors(tmp_path: Path, *, share: bool = False) -> SiloErrors:
    storage = tmp_path / "storage"
    audit = AuditLog(storage / "audit" / "audit.jsonl", actor="silo-a")
    return SiloErrors("silo-a", storage, audit, share=share, roots=())


def _worker_failed(tmp_path: Path, claimed: str) -> WorkerFailed:
    return WorkerFailed(
        "silo-a",
        message=f"{claimed}: {ROW}",
        traceback=f'File "{tmp_path}/code/task.py", line 3\n  raise {claimed}("{ROW}")',
        claimed_class=claimed,
        output=f"printed: {ROW}",
    )


@pytest.mark.parametrize(
    ("claimed", "says"),
    [
        ("ValueError", "the task code raised ValueError"),
        ("Patient0042", "the task code raised an exception of a class of its own"),
    ],
)
def test_a_task_failure_leaves_as_fedsilos_words_and_stays_whole(
    tmp_path: Path, claimed: str, says: str
) -> None:
    errors = _errors(tmp_path)
    result = errors.failed(_task(), _worker_failed(tmp_path, claimed))
    assert result.error_id is not None and result.error is not None
    assert result.error.startswith(says) and result.error_id in result.error
    assert "Patient0042" not in result.error and ROW not in result.error
    kept = errors.store.get(result.error_id)
    assert ROW in kept.message and ROW in kept.traceback and ROW in kept.output
    assert (kept.job_id, kept.step, kept.error_class) == ("j1", "round 3", claimed)
    (line,) = [e for e in read_log(errors.audit.path) if e.event == "task.failed"]
    file = errors.store.folder / f"{result.error_id}.json"
    assert line.data["error_id"] == result.error_id
    assert line.data["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    assert ROW not in str(line.data)


def test_a_worker_that_died_leaves_no_exit_code_nor_output(tmp_path: Path) -> None:
    died = WorkerFailed(
        "silo-a", message="the job worker exited (code 42)", output=ROW, exited=True
    )
    result = _errors(tmp_path).failed(_task(), died)
    assert result.error is not None
    assert result.error.startswith("the job worker ended without an answer (error e-")
    assert "42" not in result.error.split("(error")[0]


def test_an_agent_error_quoting_a_library_leaves_as_its_class(tmp_path: Path) -> None:
    try:
        try:
            raise ValueError(ROW)
        except ValueError as cause:
            raise FedsiloError(f"{tmp_path}/update.safetensors: cannot read: {cause}") from cause
    except FedsiloError as exc:
        quoting = exc
    result = _errors(tmp_path).failed(_task(), quoting)
    assert result.error is not None and ROW not in result.error
    assert result.error.startswith("the silo agent could not go on: FedsiloError")


def test_fedsilos_own_errors_leave_scrubbed(tmp_path: Path) -> None:
    own = FedsiloError(f"the job worker of j1 is not running in {tmp_path}/storage")
    result = _errors(tmp_path).failed(_task(), own)
    assert result.error is not None and str(tmp_path) not in result.error
    assert result.error.startswith(f"the job worker of j1 is not running in {PATH_PLACEHOLDER}")


def test_an_internal_error_leaves_as_its_class_alone(tmp_path: Path) -> None:
    result = _errors(tmp_path).failed(_task(), KeyError(ROW))
    assert result.error is not None and ROW not in result.error
    assert result.error.startswith("internal error in the silo agent: KeyError (error e-")


def test_a_silo_that_shares_errors_sends_them_scrubbed_and_audits_it(tmp_path: Path) -> None:
    errors = _errors(tmp_path, share=True)
    result = errors.failed(_task(), _worker_failed(tmp_path, "ValueError"))
    assert result.error is not None and result.error_id is not None
    sentence, shared = result.error.split("\n", 1)
    assert result.error_id in sentence and ROW in shared
    assert str(tmp_path) not in shared and PATH_PLACEHOLDER in shared
    (line,) = [e for e in read_log(errors.audit.path) if e.event == "error.shared"]
    assert line.data["error_id"] == result.error_id
    assert line.data["sha256"] == hashlib.sha256(shared.encode()).hexdigest()


def test_what_a_silo_shares_is_bounded_and_fits_a_result(tmp_path: Path) -> None:
    huge = WorkerFailed("silo-a", message=ROW * 10_000, claimed_class="ValueError")
    result = _errors(tmp_path, share=True).failed(_task(), huge)
    assert result.error is not None
    assert len(result.error) <= SENTENCE_MAX + 1 + SHARED_MAX == ERROR_MAX
    TaskResult.model_validate(result.model_dump())
    with pytest.raises(ValueError):
        TaskResult(outcome=Outcome.FAILED, error_id="../etc")
