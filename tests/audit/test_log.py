"""The audit log: a hash chain that names the first line anyone edited, moved or removed."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import multiprocessing
import os
import stat
import threading
from enum import Enum
from pathlib import Path

import pytest

from fedsilo.audit import (
    GENESIS,
    AuditError,
    AuditLog,
    audit_path,
    canonical_json,
    read_log,
    verify_log,
)


class Colour(Enum):
    RED = "red"


def _write(path: Path, count: int, *, actor: str = "silo-a") -> AuditLog:
    log = AuditLog(path, actor=actor)
    for i in range(count):
        log.append("job.offered", job_id=f"job-{i}", round=i)
    return log


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def _put(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def _rehash(fields: dict[str, object]) -> bytes:
    """A line an attacker forges: every field chosen, its hash recomputed to match."""
    body = {key: value for key, value in fields.items() if key != "hash"}
    digest = hashlib.sha256(canonical_json(body).encode()).hexdigest()
    return canonical_json({**body, "hash": digest}).encode()


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = audit_path(tmp_path / "storage" / "silo-a")
    _write(path, 10)
    return path


def test_entries_chain_each_line_to_the_one_before(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, actor="silo-a")
    first = log.append("agent.started", sandbox="bubblewrap")
    second = log.append("dataset.read", dataset="digits", where=tmp_path, colour=Colour.RED)
    lines = _lines(path)
    assert [first.seq, second.seq] == [1, 2]
    assert first.prev == GENESIS
    assert second.prev == hashlib.sha256(lines[0]).hexdigest()
    assert json.loads(lines[1]) == second.model_dump()
    assert second.data == {"dataset": "digits", "where": str(tmp_path), "colour": "red"}
    assert second.actor == "silo-a" and second.time.endswith("Z")
    assert dt.datetime.fromisoformat(second.time) >= dt.datetime.fromisoformat(first.time)
    assert log.entries() == [first, second] == read_log(path)
    assert log.tail(1) == [second] and log.tail(5) == [first, second] and log.tail(0) == []
    assert verify_log(path).ok and verify_log(path).entries == 2


def test_tail_reads_across_chunks(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, actor="orchestrator")
    for i in range(300):
        log.append("request.refused", reason="x" * 500, n=i)
    assert [e.data["n"] for e in log.tail(3)] == [297, 298, 299]
    assert len(log.tail(250)) == 250 and log.tail(250)[0].seq == 51
    assert verify_log(path).entries == 300


def test_the_file_and_its_new_folders_are_private(tmp_path: Path) -> None:
    path = audit_path(tmp_path / "storage" / "silo-b")
    assert path == tmp_path / "storage" / "silo-b" / "audit" / "audit.jsonl"
    AuditLog(path, actor="silo-b")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for folder in (path.parent, path.parent.parent, path.parent.parent.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert path.read_bytes() == b""
    assert verify_log(path).ok and read_log(path) == []


def test_values_that_are_not_json_raise_and_write_nothing(log_file: Path) -> None:
    before = log_file.read_bytes()
    log = AuditLog(log_file, actor="silo-a")
    for bad in (b"bytes", {1, 2}, object(), float("nan"), {"nested": [{1: "int key"}]}):
        with pytest.raises(TypeError, match="audit data"):
            log.append("job.offered", value=bad)
    assert log_file.read_bytes() == before
    entry = log.append(
        "job.offered", when=dt.datetime(2024, 5, 1, tzinfo=dt.UTC), shape=(1, 2), ok=None
    )
    assert entry.data == {"when": "2024-05-01T00:00:00+00:00", "shape": [1, 2], "ok": None}


def test_a_missing_or_empty_log_is_valid(tmp_path: Path) -> None:
    missing = verify_log(tmp_path / "nowhere" / "audit.jsonl")
    assert (missing.ok, missing.entries, missing.first_bad_line, missing.problem) == (
        True, 0, None, None,
    )  # fmt: skip
    assert not (tmp_path / "nowhere").exists()
    assert read_log(tmp_path / "nowhere" / "audit.jsonl") == []


def test_an_edited_value_names_its_line(log_file: Path) -> None:
    lines = _lines(log_file)
    lines[6] = lines[6].replace(b'"job-6"', b'"job-9"')
    _put(log_file, lines)
    result = verify_log(log_file)
    assert (result.ok, result.first_bad_line, result.entries) == (False, 7, 6)
    assert result.problem == "line 7 was edited"


def test_an_edit_with_a_recomputed_hash_still_names_its_line(log_file: Path) -> None:
    lines = _lines(log_file)
    forged = json.loads(lines[6])
    forged["data"]["job_id"] = "job-forged"
    lines[6] = _rehash(forged)
    _put(log_file, lines)
    result = verify_log(log_file)
    assert (result.ok, result.first_bad_line) == (False, 7)
    assert result.problem is not None and result.problem.startswith("line 7 was edited")


def test_a_reformatted_line_counts_as_edited(log_file: Path) -> None:
    lines = _lines(log_file)
    lines[2] = json.dumps(json.loads(lines[2]), indent=1).replace("\n", "").encode()
    _put(log_file, lines)
    result = verify_log(log_file)
    assert (result.first_bad_line, result.problem) == (3, "line 3 was edited")


@pytest.mark.parametrize("index", [0, 6])
def test_a_deleted_line_is_found(log_file: Path, index: int) -> None:
    lines = _lines(log_file)
    del lines[index]
    _put(log_file, lines)
    result = verify_log(log_file)
    assert (result.ok, result.first_bad_line) == (False, index + 1)
    assert result.problem == f"a line before line {index + 1} was deleted"


def test_two_swapped_lines_are_out_of_order(log_file: Path) -> None:
    lines = _lines(log_file)
    lines[6], lines[7] = lines[7], lines[6]
    _put(log_file, lines)
    result = verify_log(log_file)
    assert (result.ok, result.first_bad_line) == (False, 7)
    assert result.problem == "line 7 is out of order"


def test_a_forged_inserted_line_is_named(log_file: Path) -> None:
    lines = _lines(log_file)
    before = json.loads(lines[5])
    forged = {
        **before,
        "seq": before["seq"] + 1,
        "event": "job.approved",
        "data": {"job_id": "evil"},
        "prev": hashlib.sha256(lines[5]).hexdigest(),
    }
    lines.insert(6, _rehash(forged))
    _put(log_file, lines)
    result = verify_log(log_file)
    assert (result.ok, result.first_bad_line) == (False, 7)
    assert result.problem == "line 7 was inserted"


def test_a_replayed_line_is_named(log_file: Path) -> None:
    lines = _lines(log_file)
    lines.insert(6, lines[2])
    _put(log_file, lines)
    result = verify_log(log_file)
    assert (result.ok, result.first_bad_line) == (False, 7)
    assert result.problem == "line 7 was inserted: it repeats line 3"


def test_a_truncated_last_line_is_found_and_blocks_appends(log_file: Path) -> None:
    raw = log_file.read_bytes()
    log_file.write_bytes(raw[:-20])
    result = verify_log(log_file)
    assert (result.ok, result.first_bad_line, result.entries) == (False, 10, 9)
    assert result.problem is not None and result.problem.startswith("line 10 is truncated")
    with pytest.raises(AuditError, match="incomplete"):
        AuditLog(log_file, actor="silo-a").append("job.offered")
    assert log_file.read_bytes() == raw[:-20]


def test_lines_cut_from_the_end_need_an_expected_count(log_file: Path) -> None:
    _put(log_file, _lines(log_file)[:7])
    assert verify_log(log_file).ok
    assert verify_log(log_file, expect_at_least=7).ok
    result = verify_log(log_file, expect_at_least=10)
    assert (result.ok, result.entries, result.first_bad_line) == (False, 7, None)
    assert result.problem == (
        "the log has 7 entries, fewer than the 10 expected: lines were removed from its end"
    )


def test_reading_a_damaged_log_names_the_line(log_file: Path) -> None:
    lines = _lines(log_file)
    lines[3] = b"not json"
    _put(log_file, lines)
    with pytest.raises(AuditError, match="line 4 of"):
        read_log(log_file)
    assert verify_log(log_file).problem == "line 4 is not an audit entry (not JSON)"


def _append_many(path: str, actor: str, count: int) -> None:
    log = AuditLog(Path(path), actor=actor)
    for i in range(count):
        log.append("task.done", n=i)


def test_processes_appending_at_once_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.jsonl"
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_append_many, args=(str(path), f"p{i}", 50)) for i in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    result = verify_log(path)
    assert result.ok and result.entries == 200, result.problem
    entries = read_log(path)
    assert [e.seq for e in entries] == list(range(1, 201))
    for actor in ("p0", "p1", "p2", "p3"):
        assert [e.data["n"] for e in entries if e.actor == actor] == list(range(50))


def test_threads_appending_at_once_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    shared = AuditLog(path, actor="silo-a")
    other = AuditLog(path, actor="silo-a-approval")

    def work(log: AuditLog) -> None:
        for i in range(25):
            log.append("task.done", n=i)

    threads = [threading.Thread(target=work, args=(log,)) for log in (shared, other) * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result = verify_log(path)
    assert result.ok and result.entries == 200, result.problem


def test_a_batch_writes_each_entry_at_once_and_flushes_them_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", actor="silo-a")
    flushed: list[int] = []
    real_fsync = os.fsync

    def counting(fd: int) -> None:
        flushed.append(log.path.read_bytes().count(b"\n"))  # entries in the file then
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting)
    log.append("before")
    with log.batch():
        log.append("metrics.sent", round=1)
        with log.batch():  # a batch inside a batch flushes with the outer one
            log.append("output.uploaded", round=1)
        assert log.path.read_bytes().count(b"\n") == 3  # written, not yet flushed
        assert flushed == [1]
    assert flushed == [1, 3]
    with pytest.raises(RuntimeError), log.batch():
        log.append("metrics.sent", round=2)
        raise RuntimeError("the step failed")
    assert flushed == [1, 3, 4]  # flushed also when the step raised
    with log.batch():
        pass
    assert flushed == [1, 3, 4]  # nothing written, nothing to flush
    log.append("after")
    assert flushed == [1, 3, 4, 5]
    assert verify_log(log.path).ok


def test_another_threads_entries_are_flushed_one_by_one_during_a_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", actor="silo-a")
    flushes = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (flushes.append(fd), real_fsync(fd)))
    with log.batch():
        other = threading.Thread(target=lambda: log.append("heartbeat"))
        other.start()
        other.join()
        assert len(flushes) == 1  # the other thread's entry did not wait for this batch
