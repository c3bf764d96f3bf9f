"""What a silo accepts from the orchestrator: ids that become paths are strictly checked."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from fedsilo.api import MalformedTask, TaskKind, TaskMessage
from fedsilo.api._client import _task_id_of

TASK_ID = "0123456789abcdef0123456789abcdef"


def test_a_well_formed_task_is_accepted() -> None:
    message = TaskMessage(
        task_id=TASK_ID,
        kind=TaskKind.FIT,
        job_id="digits-1a2b3c4d",
        bundle_digest="a" * 64,
        params_digest="b" * 64,
        entrypoint="task",
    )
    assert message.job_id == "digits-1a2b3c4d"


@pytest.mark.parametrize(
    "field, value",
    [
        ("job_id", "../../etc"),
        ("job_id", "/etc/passwd"),
        ("job_id", "a/b"),
        ("job_id", ".."),
        ("bundle_digest", "../x"),
        ("params_digest", "A" * 64),
        ("entrypoint", "os; import shutil"),
        ("entrypoint", "../task"),
        ("task_id", "../../x"),
        ("round", -1),
    ],
)
def test_path_like_or_malformed_fields_are_refused(field: str, value: object) -> None:
    fields: dict[str, object] = {"task_id": TASK_ID, "kind": "fit", field: value}
    with pytest.raises(ValidationError):
        TaskMessage.model_validate(fields)


def test_a_refusal_can_name_the_task_when_its_id_is_sound() -> None:
    raw = json.dumps({"task_id": TASK_ID, "kind": "fit", "job_id": "../../etc"}).encode()
    assert _task_id_of(raw) == TASK_ID
    assert _task_id_of(b'{"task_id": "../x"}') is None
    assert _task_id_of(b"not json") is None
    assert "malformed task" in str(MalformedTask(TASK_ID, "bad job id"))
