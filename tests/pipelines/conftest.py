"""The digits quickstart's task and data, split over three silos, for pipeline tests."""

from __future__ import annotations

from pathlib import Path

import pytest

import fedsilo.quickstart
from fedsilo.jobs import JobSpec, load_job
from fedsilo.quickstart._quickstart import SILOS, _split_digits

JOB = """\
name: digits
code: {code}
silos: [{silos}]
inputs: {{train: digits-train, test: digits-test}}
rounds: 3
hyperparameters: {{lr: 0.1, epochs: 1, batch_size: 32, seed: 0}}
"""


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """Each silo's ``train``/``test`` npz shards, and the ``pooled`` ones."""
    return _split_digits(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="session")
def silo_inputs(digits: dict[str, dict[str, Path]]) -> dict[str, dict[str, Path]]:
    return {silo: digits[silo] for silo in SILOS}


@pytest.fixture(scope="session")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[JobSpec, Path]:
    """The quickstart's digits job, 3 silos, 3 short rounds."""
    code = Path(fedsilo.quickstart.__file__).parent / "task"
    path = tmp_path_factory.mktemp("job") / "job.yaml"
    path.write_text(JOB.format(code=code, silos=", ".join(SILOS)))
    return load_job(path)


@pytest.fixture
def one_round_job_file(job: tuple[JobSpec, Path], tmp_path: Path) -> Path:
    """A job file of the digits task with one round and the default hyperparameters."""
    _, code_dir = job
    path = tmp_path / "job.yaml"
    path.write_text(
        f"name: digits\ncode: {code_dir}\nsilos: [{', '.join(SILOS)}]\n"
        "inputs: {train: digits-train, test: digits-test}\nrounds: 1\n"
    )
    return path


FEDERATION = """\
name: pipelines
orchestrator:
  storage: {{root: storage/orchestrator}}
  compute: {{name: orchestrator-cpu}}
silos:
{silos}
submitters: [submitter]
"""

SILO = """\
  - name: {name}
    storage: {{root: storage/{name}}}
    compute: {{name: {name}-cpu}}
    datasets:
      - {{name: digits-train, classification: sensitive}}
      - {{name: digits-test, classification: sensitive}}
"""


@pytest.fixture(scope="session")
def workspace(
    tmp_path_factory: pytest.TempPathFactory, silo_inputs: dict[str, dict[str, Path]]
) -> Path:
    """A provisioned 3-silo workspace whose catalogs hold the digits shards."""
    from fedsilo.config import Classification, open_workspace
    from fedsilo.provisioning import provision
    from fedsilo.storage import add_dataset

    base = tmp_path_factory.mktemp("ws")
    spec = base / "federation.yaml"
    spec.write_text(FEDERATION.format(silos="".join(SILO.format(name=s) for s in SILOS)))
    ws = provision(spec, base / "ws")
    for silo in SILOS:
        for role in ("train", "test"):
            kit = open_workspace(ws.root).kit(silo)
            add_dataset(kit, f"digits-{role}", silo_inputs[silo][role], Classification.SENSITIVE)
    return ws.root
