"""The quickstart, run from Python through ``fedsilo.Federation``: no CLI, real processes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import fedsilo
from fedsilo.api import JobState
from fedsilo.config import FederationSpec
from fedsilo.errors import ConfigError
from fedsilo.quickstart._quickstart import _JOB, SILOS, _split_digits
from fedsilo.tensors import load_parameters
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration


def _spec() -> FederationSpec:
    """The quickstart's federation, as an object rather than a file."""
    return FederationSpec.model_validate(
        {
            "name": "notebook",
            "orchestrator": {
                "port": free_port(),
                "storage": {"root": "storage/orchestrator"},
                "compute": {"name": "orchestrator-cpu"},
            },
            "silos": [
                {"name": s, "storage": {"root": f"storage/{s}"}, "compute": {"name": f"{s}-cpu"}}
                for s in SILOS
            ],
            "submitters": ["ada"],
        }
    )


def test_the_quickstart_runs_from_python(tmp_path: Path) -> None:
    fed = fedsilo.Federation.provision(spec=_spec(), workspace=tmp_path / "ws")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ws"]  # nothing left beside it
    shards = _split_digits(tmp_path / "data")
    for silo in SILOS:
        for role in ("train", "test"):
            fed.add_dataset(silo=silo, name=f"digits-{role}", path=shards[silo][role])
    folder = tmp_path / "job"
    shutil.copytree(Path(fedsilo.__file__).parent / "quickstart" / "task", folder / "task")
    job_file = folder / "job.yaml"
    job_file.write_text(
        _JOB.format(job_file=job_file, workspace=fed.root, silos=", ".join(SILOS), rounds=3)
    )
    with fed.running():
        job = fed.submit(job=job_file)  # signed with ada's key, as `fedsilo submit` does
        seen: list[JobState] = []
        info = job.wait(timeout=240, on_update=lambda i: seen.append(i.state))
        assert info.state is JobState.SUCCEEDED, info.error
        assert info.submitter == "ada"
        assert info.history[-1].evaluate_aggregate["accuracy"] > 0.8
        assert JobState.RUNNING in seen
        model = load_parameters(job.model(path=tmp_path / "model.safetensors"))
        assert model and job.info().has_model
        assert [s.name for s in fed.status().silos] == list(SILOS)
    again = fedsilo.Federation.open(workspace=fed.root)
    with pytest.raises(ConfigError, match="has no silo 'silo-z'"):
        again.add_dataset(silo="silo-z", name="x", path=job_file)
    with pytest.raises(ConfigError, match="not a submitter"):
        again.submit(job=job_file, submitter="silo-a")
