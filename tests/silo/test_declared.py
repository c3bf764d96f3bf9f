"""Parameters leave a silo only as exactly the model the job declared in its bundle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedsilo.api._messages import FitTask, JobContext, JobTask, PrepareTask
from fedsilo.audit import AuditLog
from fedsilo.errors import PolicyRejected, SignatureError
from fedsilo.jobs import MODEL_NAME, ModelLayout
from fedsilo.silo._declared import check_parameters, gate_parameters, read_declared
from fedsilo.tensors import save_parameters

PARAMS = {
    "fc.weight": np.zeros((10, 4), np.float32),
    "fc.bias": np.zeros(10, np.float32),
    "bn.num_batches_tracked": np.zeros((), np.int64),
}
DECLARED = ModelLayout.of(PARAMS)


def _file(tmp_path: Path, params: dict[str, Any], **kwargs: Any) -> Path:
    path = tmp_path / "update.safetensors"
    save_parameters(params, path, **kwargs)
    return path


CONTEXT = JobContext(
    job_name="job", bundle_digest="b" * 64, entrypoint="task", author="alice", rounds=2
)


def _task(round_: int = 2) -> JobTask:
    if round_ == 0:  # the initial model, built in preparation
        return PrepareTask(task_id="a" * 32, job_id="job-1", context=CONTEXT)
    return FitTask(
        task_id="a" * 32,
        job_id="job-1",
        round=round_,
        bundle_digest="b" * 64,
        params_digest="c" * 64,
    )


def test_the_declared_model_passes(tmp_path: Path) -> None:
    trained = {k: v + 1 for k, v in PARAMS.items()}  # values change; the layout does not
    assert check_parameters(DECLARED, _file(tmp_path, trained)) is None


@pytest.mark.parametrize(
    ("change", "tensor", "words"),
    [
        ({"extra": np.zeros(5, np.float32)}, "extra", "declares has no such tensor"),
        ({"fc.weight": np.zeros((10, 5), np.float32)}, "fc.weight", "[10, 5] float32"),
        ({"fc.bias": np.zeros(10, np.float64)}, "fc.bias", "[10] float64"),
        ({"fc.bias": np.zeros(10, np.bool_)}, "fc.bias", "[10] bool"),
        ({"bn.num_batches_tracked": np.zeros((), np.float32)}, "bn.num_batches_tracked", "[]"),
        ({"fc.bias": None}, "fc.bias", "the parameters do not hold it"),
    ],
)
def test_any_other_layout_is_refused_naming_the_tensor(
    tmp_path: Path, change: dict[str, Any], tensor: str, words: str
) -> None:
    params = {**PARAMS, **change}
    params = {k: v for k, v in params.items() if v is not None}
    fault = check_parameters(DECLARED, _file(tmp_path, params))
    assert fault is not None
    assert fault[0] == tensor and words in fault[1]


def test_bytes_beside_the_tensors_are_refused(tmp_path: Path) -> None:
    tagged = _file(tmp_path, dict(PARAMS), metadata={"note": "a patient's record"})
    assert check_parameters(DECLARED, tagged) == (
        None,
        "the file carries metadata beside the tensors",
    )
    path = _file(tmp_path, dict(PARAMS))
    with path.open("ab") as fh:
        fh.write(b"smuggled")
    assert check_parameters(DECLARED, path) == (None, "the file holds bytes beyond its tensors")
    path = _file(tmp_path, dict(PARAMS))
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    padded = json.dumps(header).encode() + b" " * 64  # room to hide a message in
    path.write_bytes(len(padded).to_bytes(8, "little") + padded + data[8 + length :])
    fault = check_parameters(DECLARED, path)
    assert fault is not None and "header holds more" in fault[1]
    path.write_bytes(b"not parameters at all")
    assert check_parameters(DECLARED, path) == (None, "the file is not safetensors")


def test_a_refusal_is_audited_and_fails_the_job_naming_silo_and_tensor(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl", actor="silo-a")
    path = _file(tmp_path, {**PARAMS, "extra": np.zeros(3, np.float32)})
    with pytest.raises(PolicyRejected) as caught:
        gate_parameters(audit, "silo-a", _task(), DECLARED, path)
    message = str(caught.value)
    assert "silo 'silo-a'" in message and "tensor 'extra'" in message
    assert "round 2" in message and "nothing was sent" in message
    assert caught.value.rule == "declared-model"
    [line] = [e for e in audit.entries() if e.event == "output.refused"]
    assert line.data["tensor"] == "extra" and line.data["round"] == 2
    # with no declaration at all, nothing leaves either
    with pytest.raises(PolicyRejected, match="declares no model"):
        gate_parameters(audit, "silo-a", _task(0), None, _file(tmp_path, dict(PARAMS)))
    gate_parameters(audit, "silo-a", _task(), DECLARED, _file(tmp_path, dict(PARAMS)))


def test_the_declaration_is_read_from_the_unpacked_bundle(tmp_path: Path) -> None:
    assert read_declared(tmp_path) is None
    (tmp_path / MODEL_NAME).write_bytes(DECLARED.canonical())
    assert read_declared(tmp_path) == DECLARED
    (tmp_path / MODEL_NAME).write_text('{"parameters": 1, "bytes": 4, "tensors": []}')
    with pytest.raises(SignatureError, match=r"MODEL\.json is malformed"):
        read_declared(tmp_path)
