"""``fedsilo quickstart``: a whole federation on this machine, end to end.

Provisions a 3-silo workspace, gives each silo a private share of scikit-learn's digits
as ``sensitive`` data, starts the real processes, runs an FL job over mutual TLS, and
compares the result with a model trained on all data and one trained on one silo's data.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from fedsilo.api import JobInfo, JobState, OrchestratorClient
from fedsilo.config import Classification, open_workspace
from fedsilo.errors import JobFailed, SandboxUnavailable
from fedsilo.jobs import load_job, load_private_key
from fedsilo.pipelines import train_centralized
from fedsilo.provisioning import provision
from fedsilo.runtime import down, free_port_block, processes, up
from fedsilo.silo._sandbox import check_sandbox
from fedsilo.storage import add_dataset
from fedsilo.task import load_task

__all__ = ["QuickstartResult", "run_quickstart"]

SILOS = ("silo-a", "silo-b", "silo-c")

_JOB = """\
# The quickstart's FL job: submit it again with
#   fedsilo submit {job_file} --workspace {workspace} --wait
name: digits
code: task
entrypoint: task
silos: [{silos}]
inputs:
  train: digits-train
  test: digits-test
rounds: {rounds}
# What leaves each silo: the model update and its metrics, trained on sensitive data,
# are declared intermediate (seen only by the federation's processes). Each silo's
# approval endpoint approves that declassification under its policy.
outputs:
  model: {{classification: intermediate}}
  metrics: {{classification: intermediate}}
strategy:
  name: fedavg
  weighting: samples
hyperparameters:
  lr: 0.1
  epochs: 2
  batch_size: 32
  seed: 0
"""

_FEDERATION = """\
name: quickstart
orchestrator:
  host: 127.0.0.1
  port: {port}
  storage: {{root: storage/orchestrator}}
  compute: {{name: orchestrator-cpu}}
silos:
{silos}
submitters: [submitter]
"""

_SILO = """\
  - name: {name}
    storage: {{root: storage/{name}}}
    compute: {{name: {name}-cpu}}
    sandbox: {sandbox}
    datasets:
      - {{name: digits-train, classification: sensitive}}
      - {{name: digits-test, classification: sensitive}}
"""


@dataclass(frozen=True)
class QuickstartResult:
    """What the quickstart measured."""

    fl_accuracy: float
    central_accuracy: float
    single_silo_accuracy: float
    rounds: int
    seconds: float
    fl_seconds: float
    job_id: str
    workspace: str
    sandbox: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _sandbox_mode(stage: Callable[[str], None]) -> str:
    """``bubblewrap`` where it works here; otherwise ``none``, said out loud."""
    try:
        check_sandbox()
    except SandboxUnavailable as exc:
        stage(
            f"WARNING: {exc}. The quickstart's silos run job code WITHOUT a sandbox "
            "(sandbox: none in their spec); install bubblewrap to confine it"
        )
        return "none"
    return "bubblewrap"


def _split_digits(folder: Path, seed: int = 0) -> dict[str, dict[str, Path]]:
    """Stratified 80/20 train/test, each dealt IID across the silos; also the pooled sets."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    y = y.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    rng = np.random.default_rng(seed)
    paths: dict[str, dict[str, Path]] = {}
    shares = {
        "train": np.array_split(rng.permutation(len(x_tr)), len(SILOS)),
        "test": np.array_split(rng.permutation(len(x_te)), len(SILOS)),
    }
    for role, xs, ys in (("train", x_tr, y_tr), ("test", x_te, y_te)):
        pooled = folder / "pooled" / f"{role}.npz"
        pooled.parent.mkdir(parents=True, exist_ok=True)
        np.savez(pooled, x=xs, y=ys)
        paths.setdefault("pooled", {})[role] = pooled
        for silo, idx in zip(SILOS, shares[role], strict=True):
            path = folder / silo / f"{role}.npz"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, x=xs[idx], y=ys[idx])
            paths.setdefault(silo, {})[role] = path
    return paths


def run_quickstart(
    workspace: Path,
    *,
    rounds: int = 5,
    keep_running: bool = False,
    on_stage: Callable[[str], None] | None = None,
    on_update: Callable[[JobInfo], None] | None = None,
) -> QuickstartResult:
    """Run the whole quickstart in ``workspace`` (re-created if it exists)."""
    started = time.perf_counter()
    stage = on_stage or (lambda _msg: None)
    workspace = workspace.absolute()
    if (workspace / "federation.yaml").exists():
        if any(p.alive for p in processes(workspace)):
            stage("stopping the federation already running in the workspace")
            down(workspace)
        shutil.rmtree(workspace)
    workspace.mkdir(parents=True)
    stage(f"provisioning a {len(SILOS)}-silo federation in {workspace}")
    sandbox = _sandbox_mode(stage)
    spec_file = workspace.parent / f".{workspace.name}-federation.yaml"
    silos_yaml = "".join(_SILO.format(name=s, sandbox=sandbox) for s in SILOS)
    spec_file.write_text(
        _FEDERATION.format(port=free_port_block(len(SILOS) + 1), silos=silos_yaml.rstrip("\n"))
    )
    try:
        provision(spec_file, workspace, force=True)
    finally:
        spec_file.unlink(missing_ok=True)
    ws = open_workspace(workspace)

    with tempfile.TemporaryDirectory(prefix="fedsilo-digits-") as tmp:
        stage("splitting the digits data: each silo gets a private share as sensitive data")
        shards = _split_digits(Path(tmp))
        for silo in SILOS:
            for role in ("train", "test"):
                add_dataset(
                    ws.kit(silo), f"digits-{role}", shards[silo][role], Classification.SENSITIVE
                )

        job_dir = workspace / "job"
        (job_dir / "task").mkdir(parents=True)
        source = resources.files("fedsilo.quickstart").joinpath("task", "task.py")
        (job_dir / "task" / "task.py").write_text(source.read_text())
        job_file = job_dir / "job.yaml"
        job_file.write_text(
            _JOB.format(
                job_file=job_file, workspace=workspace, silos=", ".join(SILOS), rounds=rounds
            )
        )
        spec, code_dir = load_job(job_file)

        stage("starting the orchestrator, and per silo its agent and approval endpoint")
        up(workspace)
        try:
            fl_started = time.perf_counter()
            with OrchestratorClient(ws.kit(ws.submitter_name)) as client:
                key = load_private_key(ws.kit(ws.submitter_name).signing_key_file)
                job_id = client.submit(spec, code_dir, signing_key=key)
                info = client.wait(job_id, on_update=on_update)
                if info.state is not JobState.SUCCEEDED:
                    raise JobFailed(f"the quickstart job {job_id} {info.state.value}: {info.error}")
                client.download_model(job_id, workspace / "model.safetensors")
            fl_seconds = time.perf_counter() - fl_started
        finally:
            if not keep_running:
                stage("stopping the federation")
                down(workspace)

        stage("training the centralized baselines")
        task = load_task(code_dir, spec.entrypoint)
        pooled_test = shards["pooled"]["test"]
        central = train_centralized(
            task,
            shards["pooled"],
            hyperparameters=spec.hyperparameters,
            rounds=spec.rounds,
            work_dir=Path(tmp) / "central",
        )
        single = train_centralized(
            task,
            {"train": shards[SILOS[0]]["train"], "test": pooled_test},
            hyperparameters=spec.hyperparameters,
            rounds=spec.rounds,
            work_dir=Path(tmp) / "single",
            name=SILOS[0],
        )
    final = info.history[-1].evaluate_aggregate
    return QuickstartResult(
        fl_accuracy=final["accuracy"],
        central_accuracy=central.metrics["accuracy"],
        single_silo_accuracy=single.metrics["accuracy"],
        rounds=spec.rounds,
        seconds=time.perf_counter() - started,
        fl_seconds=fl_seconds,
        job_id=job_id,
        workspace=str(workspace),
        sandbox=sandbox,
    )
