"""Every table the CLI prints fits 80 columns, keeps names whole, and says why a cell is empty.

The tables are rendered as a terminal of 80 columns would show them, from the records the
commands render (a job's rounds under differential privacy, the job list, status, a silo's
approval queue, an audit log, the tracked jobs); the CLI's own commands are run at
``COLUMNS=80`` for the data listing and in ``test_hints.py`` against a real federation.
"""

from __future__ import annotations

import io
import re
import time

from rich.console import Console, RenderableType

from fedsilo.api import (
    ComputeReport,
    JobInfo,
    JobState,
    RoundInfo,
    RoundNote,
    SiloReport,
    SiloStatus,
    StatusReport,
)
from fedsilo.audit import AuditEntry
from fedsilo.cli._audit import _entries_table
from fedsilo.cli._jobs import _jobs_table, _round_table
from fedsilo.cli._runtime import _computes_table, _silos_table
from fedsilo.cli._tables import Footnotes, short
from fedsilo.cli._tracking import _runs_table
from fedsilo.tracking import TrackedJob

SILOS = ("hospital-a", "hospital-b", "hospital-c")
GIB = 2**30


def render(shown: RenderableType) -> str:
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(shown)
    return console.export_text()


def assert_fits(text: str, *whole: str) -> None:
    """No line wider than 80 columns, and each of ``whole`` on one line, uncut."""
    wide = [line for line in text.splitlines() if len(line) > 80]
    assert not wide, f"lines over 80 columns:\n{chr(10).join(wide)}"
    assert "…" not in text, text
    for name in whole:
        assert name in text, f"{name} is cut in:\n{text}"


def _dp_history() -> list[RoundInfo]:
    def one(n: int, missed: tuple[str, ...] = ()) -> RoundInfo:
        took_part = [s for s in SILOS if s not in missed]
        return RoundInfo(
            round=n,
            train={}
            if n == 0
            else {s: {"loss": 0.41, "num_samples": 100, "epsilon": 1.25} for s in took_part},
            evaluate={
                s: {"accuracy": 0.9, "f1": 0.8, "loss": 0.3, "num_samples": 100} for s in took_part
            },
            evaluate_aggregate={"accuracy": 0.9, "f1": 0.8, "loss": 0.3, "num_samples": 300},
            privacy={}
            if n == 0
            else {
                "central_epsilon": 2.5,
                "secure_aggregation_silos": 3,
                "secure_aggregation_dropped": 1,
            },
            notes=[RoundNote(silo=s, kind="missed", text=f"{s} failed") for s in missed],
        )

    return [one(0), one(1), one(2, missed=("hospital-b",))]


def test_the_privacy_table_keeps_silo_names_and_explains_each_dash() -> None:
    notes = Footnotes()
    text = render(notes.under(_round_table(_dp_history(), notes)))
    assert_fits(text, *SILOS, "ε 1.25")
    dashes = re.findall(r"-([¹²³⁴⁵⁶⁷⁸⁹])", text)
    assert dashes, text
    for mark in set(dashes):
        assert re.search(rf"^{mark} \S", text, re.MULTILINE), f"no footnote {mark}:\n{text}"
    assert "round 0 evaluates the initial model" in text
    assert "the round closed without this silo" in text
    assert not re.search(r"(?<![\w.])-(?![\w¹²³⁴⁵⁶⁷⁸⁹])", text.replace("─", "")), text


def test_counts_print_as_whole_numbers() -> None:
    history = [
        RoundInfo(
            round=1,
            train={"hospital-a": {"loss": 0.5, "num_samples": 100}},
            evaluate={"hospital-a": {"accuracy": 0.5, "correct": 100.0, "num_samples": 200}},
            evaluate_aggregate={"accuracy": 0.5, "correct": 100.0},
        )
    ]
    text = render(_round_table(history, Footnotes()))
    assert "100.0000" not in text and " 100 " in text


def _job(n: int, error: str | None = None) -> JobInfo:
    return JobInfo(
        id=f"pneumonia-resnet-dp-{n:08x}",
        name="pneumonia-resnet-dp",
        submitter="alice-at-hospital-a",
        state=JobState.FAILED if error else JobState.RUNNING,
        silos=list(SILOS),
        rounds=100,
        current_round=42,
        error=error,
        detail="round 43: waiting for hospital-b",
        created_at=time.time(),
    )


def test_the_job_list_shows_each_id_whole_on_one_line() -> None:
    error = (
        "silo 'hospital-b' failed in round 42 (train): RuntimeError; error e-3fa9c2d41b07; "
        "the silo's administrator reads it with: fedsilo silo errors e-3fa9c2d41b07 --kit KIT"
    )
    jobs = [_job(1), _job(2, error)]
    text = render(_jobs_table(jobs))
    assert_fits(text, *(j.id for j in jobs), "alice-at-hospital-a", "42/100")


def test_status_fits_and_says_why_a_silo_shows_nothing() -> None:
    compute = ComputeReport(
        name="hospital-a-gpu-cluster",
        kind="gpu",
        threads=64,
        gpus=(0, 1, 2, 3, 4, 5, 6, 7),
        memory=512 * GIB,
        job_threads=16,
        job_gpus=2,
        job_memory=64 * GIB,
        processes=512,
        cpu=8.0,
        disk=100 * GIB,
        max_step_seconds=8 * 3600,
        threads_used=16,
        gpus_used=2,
        memory_used=64 * GIB,
        running=("pneumonia-resnet-dp-00000001",),
        queued=("pneumonia-resnet-dp-00000002",),
    )
    reported = SiloReport(sandbox="none", enforcement="rlimits", computes=(compute,))
    report = StatusReport(
        federation="hospitals",
        silos=[
            SiloStatus(name="hospital-a", online=True, last_seen=time.time(), report=reported),
            SiloStatus(name="hospital-b", online=False),
        ],
        jobs=[],
    )
    notes = Footnotes()
    silos = render(notes.under(_silos_table(report, notes)))
    assert_fits(silos, "hospital-a", "hospital-b", "confined)")
    assert "-¹" in silos and "¹ its agent has not reported" in silos
    computes = _computes_table(report)
    assert computes is not None
    assert_fits(render(computes), "hospital-a")


def test_an_audit_log_shortens_digests_unless_wide() -> None:
    digest = "ab" * 32
    entry = AuditEntry(
        seq=12,
        time="2025-05-01T12:00:00.123456Z",
        actor="hospital-a",
        event="job.approved",
        data={"job": "pneumonia-resnet-dp-00000001", "bundle": digest, "rule": "trusted-key"},
        prev="0" * 64,
        hash="1" * 64,
    )
    text = render(_entries_table([entry], wide=False))
    assert [line for line in text.splitlines() if len(line) > 80] == []
    assert "hospital-a" in text and "job.approved" in text and short(digest) in text
    assert digest not in text
    assert digest in render(_entries_table([entry], wide=True)).replace("\n", "").replace(
        "│", ""
    ).replace(" ", "")


def test_tracked_runs_fit_with_the_metrics_each_job_logged() -> None:
    jobs = [
        TrackedJob(
            job_id=f"pneumonia-resnet-dp-{n:08x}",
            job_name="pneumonia-resnet-dp",
            run_id="r" * 32,
            status="FINISHED",
            started=time.time(),
            rounds=100,
            final={"accuracy": 0.9, "auc": 0.95, "loss": 0.3} if n else {"accuracy": 0.9},
        )
        for n in range(2)
    ]
    text = render(_runs_table(jobs))
    assert_fits(text, *(j.job_id for j in jobs), "accuracy=0.9000")
    assert "auc=0.9500" in text
