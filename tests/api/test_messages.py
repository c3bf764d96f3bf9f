"""What a silo accepts from the orchestrator: ids that become paths are strictly checked."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from fedsilo.api import MalformedTask, TaskKind, parse_task
from fedsilo.api._client import _task_id_of
from fedsilo.api._messages import FitTask

TASK_ID = "0123456789abcdef0123456789abcdef"


def test_a_well_formed_task_is_accepted() -> None:
    message = FitTask(
        task_id=TASK_ID,
        job_id="digits-1a2b3c4d",
        round=1,
        bundle_digest="a" * 64,
        params_digest="b" * 64,
    )
    assert message.job_id == "digits-1a2b3c4d"
    assert parse_task(message.model_dump_json()) == message
    assert message.kind is TaskKind.FIT


@pytest.mark.parametrize(
    "field, value",
    [
        ("job_id", "../../etc"),
        ("job_id", "/etc/passwd"),
        ("job_id", "a/b"),
        ("job_id", ".."),
        ("bundle_digest", "../x"),
        ("params_digest", "A" * 64),
        ("task_id", "../../x"),
        ("round", -1),
        ("round", 0),
        ("context", {}),
    ],
)
def test_path_like_or_malformed_fields_are_refused(field: str, value: object) -> None:
    fields: dict[str, object] = {
        "task_id": TASK_ID,
        "kind": "fit",
        "job_id": "digits-1a2b3c4d",
        "round": 1,
        "bundle_digest": "a" * 64,
        "params_digest": "b" * 64,
        field: value,
    }
    with pytest.raises(ValidationError):
        parse_task(json.dumps(fields))


@pytest.mark.parametrize(
    "field, value", [("entrypoint", "os; import shutil"), ("entrypoint", "../task")]
)
def test_a_context_with_a_path_like_entrypoint_is_refused(field: str, value: object) -> None:
    context = {
        "job_name": "digits",
        "bundle_digest": "a" * 64,
        "entrypoint": "task",
        "author": "alice",
        "rounds": 3,
        field: value,
    }
    task = {"task_id": TASK_ID, "kind": "prepare", "job_id": "digits-1", "context": context}
    with pytest.raises(ValidationError):
        parse_task(json.dumps(task))


def test_each_kind_carries_only_its_own_fields() -> None:
    """A fit carries no job context, a check no model: the union refuses other fields."""
    with pytest.raises(ValidationError, match="inputs"):
        parse_task(
            json.dumps(
                {
                    "task_id": TASK_ID,
                    "kind": "fit",
                    "job_id": "digits-1",
                    "round": 1,
                    "bundle_digest": "a" * 64,
                    "params_digest": "b" * 64,
                    "inputs": {"train": "digits-train"},
                }
            )
        )
    with pytest.raises(ValidationError, match="kind"):
        parse_task(json.dumps({"task_id": TASK_ID, "kind": "train", "job_id": "digits-1"}))


def test_a_refusal_can_name_the_task_when_its_id_is_sound() -> None:
    raw = json.dumps({"task_id": TASK_ID, "kind": "fit", "job_id": "../../etc"}).encode()
    assert _task_id_of(raw) == TASK_ID
    assert _task_id_of(b'{"task_id": "../x"}') is None
    assert _task_id_of(b"not json") is None
    assert "malformed task" in str(MalformedTask(TASK_ID, "bad job id"))
