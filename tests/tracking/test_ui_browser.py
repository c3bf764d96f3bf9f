"""The MLflow UI in a real browser, on a finished job, as a data scientist opens it.

A job of 5 rounds over 3 silos is logged the way the orchestrator logs it (through
:class:`LiveTracking`: the job's start, each round as it closes, the end with its history
and model), ``fedsilo tracking ui`` serves the store, and headless chromium (a new profile
each time, as a first visit) opens it: the experiment opens in MLflow's training view with
the job among its runs, and the job's run page draws the federation's accuracy as one
curve with a point per round, not a chart per round.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fedsilo.api import RoundInfo
from fedsilo.strategies import weighted_metrics
from fedsilo.tracking import LiveTracking, Tracker

from .browser import Chart, Element, charts, chromium, open_page

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(900)]

SILOS = ("silo-a", "silo-b", "silo-c")
ROUNDS = 5
JOB_ID = "digits-0a1b2c3d"
ACCURACY = (0.62, 0.74, 0.83, 0.89, 0.93)  # the silos' accuracy rises every round


def _evaluate(silo: str, n: int) -> dict[str, float]:
    i = SILOS.index(silo)
    return {"accuracy": ACCURACY[n - 1] - i / 100, "loss": 1.5 / n, "num_samples": 100.0 + i}


def _train(silo: str, n: int) -> dict[str, float]:
    return {"loss": 2.0 / n, "num_samples": 400.0 + SILOS.index(silo)}


def _history() -> list[RoundInfo]:
    out = []
    for n in range(1, ROUNDS + 1):
        evaluate = {s: _evaluate(s, n) for s in SILOS}
        out.append(
            RoundInfo(
                round=n,
                train={s: _train(s, n) for s in SILOS},
                evaluate=evaluate,
                evaluate_aggregate=weighted_metrics(evaluate),
            )
        )
    return out


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A workspace whose store holds the finished job: (workspace, experiment id, run id)."""
    chromium()  # skip (or fail) before spending a minute on the store and the server
    workspace = tmp_path_factory.mktemp("ws")
    tracker = Tracker.for_workspace(workspace)
    live = LiveTracking(tracker, interval=0)
    params = {"name": "digits", "rounds": ROUNDS, "hyperparameters": {"lr": 0.1, "epochs": 2}}
    live.start(JOB_ID, "digits", params, submitter="alice")
    for n in range(1, ROUNDS + 1):
        records = [(n, s, "train", _train(s, n)) for s in SILOS]
        records += [(n, s, "evaluate", _evaluate(s, n)) for s in SILOS]
        live.rounds(JOB_ID, records)
    model = workspace / "0123abcd"
    model.write_bytes(b"a global model")
    live.finish(JOB_ID, "digits", params, _history(), model, "succeeded")
    assert live.close(120)
    [job] = tracker.jobs()
    assert job.status == "FINISHED" and job.rounds == ROUNDS
    run = tracker.client.get_run(job.run_id)
    return workspace, run.info.experiment_id, job.run_id


@pytest.fixture(scope="module")
def ui(store: tuple[Path, str, str]) -> Iterator[str]:
    """``fedsilo tracking ui`` on the store, once it answers; its URL."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "fedsilo", "tracking", "ui", str(store[0]), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while process.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError("the MLflow UI did not answer /health within 90 s")
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()


def _accuracy(dom: Element) -> Chart | None:
    return next((c for c in charts(dom) if "(aggregate/accuracy)" in c.legend and c.points), None)


def test_the_experiment_opens_in_the_training_view_with_the_job_among_its_runs(
    ui: str, store: tuple[Path, str, str]
) -> None:
    _, experiment, _ = store
    dom = open_page(f"{ui}/#/experiments/{experiment}", lambda d: JOB_ID in d.text())
    title = dom.find("title")[0].text()
    text = dom.text()
    assert JOB_ID in text, text[:2000]
    # MLflow's GenAI view would list the job under "Evaluation runs", next to traces
    assert title.startswith("Runs - "), title
    assert "Evaluation runs" not in text
    assert "alice/digits" in text


def test_the_run_page_draws_the_federations_accuracy_as_one_curve_over_the_rounds(
    ui: str, store: tuple[Path, str, str]
) -> None:
    _, experiment, run = store
    url = f"{ui}/#/experiments/{experiment}/runs/{run}/model-metrics"
    dom = open_page(url, lambda d: _accuracy(d) is not None)
    chart = _accuracy(dom)
    assert chart is not None, f"no chart of aggregate/accuracy on the run page: {dom.text()[:3000]}"
    assert chart.title == "accuracy"
    assert len(chart.points) == ROUNDS  # one point per round, on one curve
    xs = [x for x, _ in chart.points]
    ys = [y for _, y in chart.points]
    assert xs == sorted(xs) and len(set(xs)) == ROUNDS  # the rounds, in order
    assert all(a > b for a, b in itertools.pairwise(ys))  # rising (SVG y grows down)
    text = dom.text()
    assert "iteration_" not in text  # no section of one-point charts per round
    for section in ("aggregate", *SILOS):
        assert section in text


def test_the_run_page_keeps_the_jobs_parameters_model_and_silo_runs(
    ui: str, store: tuple[Path, str, str]
) -> None:
    _, experiment, run = store
    url = f"{ui}/#/experiments/{experiment}/runs/{run}"

    def child_runs(dom: Element) -> str:
        found = re.search(r"Child runs (.*?) Source", dom.text())
        return found.group(1) if found else ""

    def drawn(dom: Element) -> bool:
        silos = child_runs(dom)
        return "Logged models (1)" in dom.text() and all(s in silos for s in SILOS)

    dom = open_page(url, drawn)
    text = dom.text()
    assert "hyperparameters.lr" in text and "hyperparameters.epochs" in text
    assert sorted(re.findall(r"silo-[abc]", child_runs(dom))) == list(SILOS), text[:3000]
    assert "Logged models (1)" in text, text[:3000]
    assert "aggregate/accuracy" in text
