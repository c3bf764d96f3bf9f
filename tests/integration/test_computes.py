"""A silo subgraph on two computes of a silo: preprocessing on one, training on another."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsilo.api import JobState, OrchestratorClient
from fedsilo.audit import audit_path, read_log
from fedsilo.config import Classification, open_workspace
from fedsilo.jobs import load_job, load_private_key
from fedsilo.provisioning import provision
from fedsilo.quickstart._quickstart import _split_digits
from fedsilo.runtime import down, up
from fedsilo.storage import add_dataset
from tests.integration.conftest import TASK, free_port, write_job

pytestmark = pytest.mark.integration

FEDERATION = """\
name: computes
orchestrator:
  port: {port}
  storage: {{root: storage/orchestrator}}
  compute: {{name: orchestrator-cpu}}
silos:
  - name: silo-a
    storage: {{root: storage/silo-a}}
    compute: {{name: silo-a-cpu}}
    computes:
      - {{name: silo-a-accel, kind: accel, environment: {{ACCEL_DEVICE: "0"}}}}
  - name: silo-b
    storage: {{root: storage/silo-b}}
    compute: {{name: silo-b-cpu}}
    computes:
      - {{name: silo-b-accel, kind: accel, environment: {{ACCEL_DEVICE: "1"}}}}
  - name: silo-c
    storage: {{root: storage/silo-c}}
    compute: {{name: silo-c-cpu}}
submitters: [alice]
"""

# preprocessing writes down where it ran; training reports it and where it runs itself
TWO_COMPUTE_TASK = (
    TASK
    + """

def preprocess(ctx):
    import os
    (ctx.work_dir / "preprocessed-on").write_text(os.environ.get("ACCEL_DEVICE", "-"))


_train = train


def train(model, ctx):
    import os
    metrics = dict(_train(model, ctx))
    metrics["preprocessed_on_default"] = float(
        (ctx.work_dir / "preprocessed-on").read_text() == "-"
    )
    metrics["trained_on_device"] = float(os.environ.get("ACCEL_DEVICE", "-1"))
    return metrics
"""
)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("computes")
    (base / "federation.yaml").write_text(FEDERATION.format(port=free_port()))
    ws = provision(base / "federation.yaml", base / "ws")
    shards = _split_digits(base / "data")
    for silo in ("silo-a", "silo-b", "silo-c"):
        for role in ("train", "test"):
            kit = open_workspace(ws.root).kit(silo)
            add_dataset(kit, f"digits-{role}", shards[silo][role], Classification.SENSITIVE)
    up(ws.root)
    try:
        yield ws.root
    finally:
        down(ws.root)


def _submit(root: Path, folder: Path, silos: str) -> object:
    job = write_job(
        folder,
        rounds=2,
        silos=silos,
        computes="{preprocess: cpu, train: accel}",
        metrics="[loss, accuracy, preprocessed_on_default, trained_on_device]",
    )
    (folder / "task" / "task.py").write_text(TWO_COMPUTE_TASK)
    ws = open_workspace(root)
    kit = ws.kit(ws.submitter_name)
    spec, code_dir = load_job(job)
    with OrchestratorClient(kit) as client:
        job_id = client.submit(spec, code_dir, signing_key=load_private_key(kit.signing_key_file))
        return client.wait(job_id, timeout=180)


def test_preprocessing_and_training_run_on_the_computes_the_job_names(
    federation: Path, tmp_path: Path
) -> None:
    info = _submit(federation, tmp_path / "job", "[silo-a, silo-b]")
    assert info.state is JobState.SUCCEEDED, info.error
    for r in info.history:
        assert r.train["silo-a"]["trained_on_device"] == 0.0
        assert r.train["silo-b"]["trained_on_device"] == 1.0
        assert all(m["preprocessed_on_default"] == 1.0 for m in r.train.values())
    ws = open_workspace(federation)
    started = [
        e.data["compute"]
        for e in read_log(audit_path(ws.kit("silo-a").storage_path))
        if e.event == "job.started" and e.data.get("job_id") == info.id
    ]
    assert started == ["silo-a-cpu", "silo-a-accel"]


def test_a_silo_without_the_compute_refuses_the_job(federation: Path, tmp_path: Path) -> None:
    info = _submit(federation, tmp_path / "job-c", "[silo-a, silo-c]")
    assert info.state is JobState.FAILED
    assert "silo 'silo-c' refused the job (rule 'compute')" in (info.error or "")
    assert "compute of kind 'accel'" in (info.error or "")
