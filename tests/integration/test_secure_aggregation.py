"""Secure aggregation over the real processes: masked uploads, dropouts, a clean abort."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from fedsilo.api import JobInfo, JobState, OrchestratorClient
from fedsilo.audit import audit_path, read_log
from fedsilo.jobs import JobSpec, load_job
from fedsilo.pipelines import simulate, workspace_inputs
from fedsilo.privacy.secagg import MASKED_TENSOR
from fedsilo.runtime import processes, up
from fedsilo.tensors import load_parameters
from tests.integration.conftest import SILOS, TASK, Federation, write_job

pytestmark = pytest.mark.integration

# The integration task, with one silo made slow in one round: ``extra.slow`` names the
# silos, ``extra.slow_round`` the round, ``extra.sleep`` how long they sleep in it.
SLOW_TASK = TASK.replace(
    '    time.sleep(float(ctx.hyperparameters.extra.get("sleep", 0)))\n',
    "    extra = ctx.hyperparameters.extra\n"
    '    if ctx.silo in str(extra.get("slow", "")).split(",") and ctx.round == extra.get(\n'
    '        "slow_round", -1\n'
    "    ):\n"
    '        time.sleep(float(extra.get("sleep", 0)))\n',
)


def _secure_job(
    folder: Path, *, rounds: int, threshold: int | None = None, extra: str = ""
) -> Path:
    secure = "{}" if threshold is None else f"{{threshold: {threshold}}}"
    job = write_job(folder, rounds=rounds, extra=extra, privacy=f"{{secure_aggregation: {secure}}}")
    (folder / "task" / "task.py").write_text(SLOW_TASK)
    return job


def _masked_uploads(fed: Federation, job_id: str) -> list[Path]:
    """The files silos uploaded for the job's rounds (not the initial model)."""
    orch = fed.workspace.kit("orchestrator").storage_path
    uploaded = []
    for silo in SILOS:
        for entry in read_log(audit_path(fed.workspace.kit(silo).storage_path)):
            data = entry.data
            ours = entry.event == "output.uploaded" and data.get("job_id") == job_id
            if ours and int(str(data.get("round", 0))) >= 1:
                assert data.get("masked") is True, data
                uploaded.append(orch / "blobs" / str(data["sha256"]))
    return uploaded


def test_the_orchestrator_sees_only_masked_updates_and_gets_the_plain_model(
    running: Federation,
) -> None:
    job_file = _secure_job(running.scratch / "secure", rounds=3)
    spec, code_dir = load_job(job_file)
    with OrchestratorClient(running.submitter) as client:
        job_id = client.submit(spec, code_dir, signing_key=running.key)
        info = client.wait(job_id, timeout=180)
        assert info.state is JobState.SUCCEEDED, info.error
        model = running.scratch / "secure-model.safetensors"
        client.download_model(job_id, model)

    for r in info.history:
        assert r.privacy["secure_aggregation_silos"] == 3
        assert r.privacy["secure_aggregation_dropped"] == 0
        assert set(r.train) == set(SILOS)

    # the same job in one process, with the same masking, gives the same model; the plain
    # job (no masking) gives it to fixed-point error
    inputs = workspace_inputs(running.root, spec)
    secure_sim = simulate(spec, code_dir, inputs, work_root=running.scratch / "sim-secure")
    plain_spec = JobSpec.model_validate({**spec.model_dump(mode="json"), "privacy": {}})
    plain_sim = simulate(plain_spec, code_dir, inputs, work_root=running.scratch / "sim-plain")
    federated = load_parameters(model)
    for name, value in secure_sim.parameters.items():
        np.testing.assert_array_equal(federated[name], value)
        np.testing.assert_allclose(federated[name], plain_sim.parameters[name], atol=2e-5)

    # every update a silo sent in a round is one masked vector of words, which look
    # uniform: nothing of the plain update is in what the orchestrator holds. Round 1
    # weighs by samples no silo has reported yet, so it takes 64-bit words; then 32-bit
    uploads = _masked_uploads(running, job_id)
    assert len(uploads) == 3 * spec.rounds
    widths = []
    for path in uploads:
        with safe_open(str(path), framework="numpy") as fh:
            assert list(fh.keys()) == [MASKED_TENSOR]
            words = fh.get_tensor(MASKED_TENSOR)
        bits = 8 * words.dtype.itemsize
        widths.append(bits)
        assert words.dtype in (np.uint32, np.uint64)
        top_bits = (words >> words.dtype.type(bits - 1)).astype(np.float64)
        assert abs(top_bits.mean() - 0.5) < 0.05
        signed = words.view(np.int32 if bits == 32 else np.int64).astype(np.float64) / 2.0**24
        assert np.median(np.abs(signed)) > 2.0 ** (bits - 27)  # a plain update: ~1e-2
    assert sorted(widths) == [32] * 3 * (spec.rounds - 1) + [64] * 3

    for silo in SILOS:
        events = [e.event for e in read_log(audit_path(running.workspace.kit(silo).storage_path))]
        assert "secagg.setup" in events and "secagg.unmask" in events


def test_central_dp_over_secure_aggregation_clips_in_the_silos(running: Federation) -> None:
    """DP-FedAvg without the orchestrator seeing an update: silos clip, the sum is noised."""
    folder = running.scratch / "secure-dp"
    job = write_job(
        folder,
        rounds=2,
        privacy="{secure_aggregation: {}, central: {clip_norm: 0.5, noise_multiplier: 0.5}}",
    )
    (folder / "task" / "task.py").write_text(SLOW_TASK)
    spec, code_dir = load_job(job)
    with OrchestratorClient(running.submitter) as client:
        info = client.wait(client.submit(spec, code_dir, signing_key=running.key), timeout=180)
    assert info.state is JobState.SUCCEEDED, info.error
    epsilons = [r.privacy["central_epsilon"] for r in info.history]
    assert 0 < epsilons[0] < epsilons[1] < float("inf")  # spent over the rounds
    assert all(r.privacy["secure_aggregation_silos"] == 3 for r in info.history)


def _kill_silo_agent(fed: Federation, silo: str) -> None:
    proc = next(p for p in processes(fed.root) if p.name == silo and p.role == "silo")
    os.killpg(proc.pid, signal.SIGKILL)


def _run_killing(fed: Federation, job_file: Path, *, watch: str, round_: int, kill: str) -> JobInfo:
    """Run the job; kill ``kill``'s agent once ``watch`` uploaded its update of ``round_``."""
    log = audit_path(fed.workspace.kit(watch).storage_path)
    done = threading.Event()

    def wait_and_kill() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not done.is_set():
            for line in log.read_text().splitlines() if log.exists() else []:
                entry = json.loads(line)
                data = entry.get("data", {})
                if entry.get("event") == "output.uploaded" and data.get("round") == round_:
                    _kill_silo_agent(fed, kill)
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=wait_and_kill)
    spec, code_dir = load_job(job_file)
    try:
        with OrchestratorClient(fed.submitter) as client:
            job_id = client.submit(spec, code_dir, signing_key=fed.key)
            killer.start()
            return client.wait(job_id, timeout=240)
    finally:
        done.set()
        if killer.is_alive():
            killer.join()


def test_a_silo_that_drops_after_masking_is_still_in_the_sum(fresh: Federation) -> None:
    up(fresh.root)
    # silo-a and silo-b train slowly in round 2, so silo-c's masked update arrives first;
    # its agent is killed right after, before the round is unmasked
    job = _secure_job(
        fresh.scratch / "drop",
        rounds=4,
        extra=', extra: {slow: "silo-a,silo-b", slow_round: 2, sleep: 3}',
    )
    info = _run_killing(fresh, job, watch="silo-c", round_=2, kill="silo-c")
    assert info.state is JobState.SUCCEEDED, info.error
    by_round = {r.round: r.privacy for r in info.history}
    assert by_round[1]["secure_aggregation_silos"] == 3
    # round 2: silo-c's masked update is in the sum, recovered without its answer
    assert by_round[2] == {"secure_aggregation_silos": 3.0, "secure_aggregation_dropped": 0.0}
    for r in (3, 4):
        assert by_round[r] == {"secure_aggregation_silos": 2.0, "secure_aggregation_dropped": 1.0}
    assert set(info.history[-1].evaluate) == {"silo-a", "silo-b"}
    assert info.history[-1].evaluate_aggregate["accuracy"] > 0.5
    orch_log = read_log(audit_path(fresh.workspace.kit("orchestrator").storage_path))
    dropped = [e.data for e in orch_log if e.event == "secagg.dropped"]
    assert [d["silo"] for d in dropped] == ["silo-c"]


def test_fewer_silos_than_the_threshold_abort_the_job_cleanly(fresh: Federation) -> None:
    up(fresh.root)
    job = _secure_job(
        fresh.scratch / "abort",
        rounds=3,
        threshold=3,
        extra=', extra: {slow: "silo-c", slow_round: 2, sleep: 30}',
    )
    # silo-c is killed while it trains in round 2, after silo-a's masked update arrived
    info = _run_killing(fresh, job, watch="silo-a", round_=2, kill="silo-c")
    assert info.state is JobState.FAILED
    assert info.error is not None
    assert "secure aggregation aborted in round 2" in info.error
    assert "the threshold is 3" in info.error and "silo-c" in info.error
    assert [r.round for r in info.history] == [1]  # nothing of round 2 was released
