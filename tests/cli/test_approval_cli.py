"""``fedsilo approval``: the administrator lists, shows, approves and rejects held jobs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from fedsilo.approval import ApprovalClient, Decision
from fedsilo.cli import _approval
from fedsilo.config import Kit
from fedsilo.errors import ConfigError, TransportError
from tests.approval.conftest import (
    Authority,
    Endpoint,
    free_port,
    make_request,
    serving,
    write_silo_kit,
)


@pytest.fixture
def app() -> typer.Typer:
    root = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
    _approval.register(root)
    return root


def invoke(app: typer.Typer, *args: str) -> Result:
    return CliRunner().invoke(app, list(args), catch_exceptions=True)


@pytest.fixture
def silo_kit(tmp_path: Path) -> Kit:
    """A silo kit whose approval endpoint is not running."""
    ca = Authority("cli test CA")
    return write_silo_kit(tmp_path / "kit", ca, port=free_port(), storage=tmp_path / "storage")


@pytest.fixture
def endpoint(silo_kit: Kit) -> Iterator[Endpoint]:
    """The silo's approval endpoint, running."""
    with serving(silo_kit) as served:
        yield served


@pytest.fixture
def held(endpoint: Endpoint) -> Iterator[str]:
    """The request id of a job the endpoint holds for a person."""
    with ApprovalClient(endpoint.kit) as client:
        answer = client.ask(make_request(job_name="needs-a-person", author="bob"))
    assert answer.decision is Decision.MANUAL
    yield answer.request_id


def test_list_shows_held_jobs(app: typer.Typer, endpoint: Endpoint, held: str) -> None:
    kit = str(endpoint.kit.kit_dir)
    result = invoke(app, "approval", "list", "--kit", kit, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [(r["request_id"], r["state"], r["author"]) for r in rows] == [(held, "held", "bob")]
    table = invoke(app, "approval", "list", "--kit", kit)
    assert table.exit_code == 0 and "bob" in table.output and held[:6] in table.output


def test_show_prints_what_the_job_would_do(app: typer.Typer, endpoint: Endpoint, held: str) -> None:
    result = invoke(app, "approval", "show", held, "--kit", str(endpoint.kit.kit_dir))
    assert result.exit_code == 0, result.output
    assert "silo-a:train (sensitive)" in result.output
    assert "model: sensitive -> intermediate" in result.output


def test_approve_then_the_agent_sees_it(app: typer.Typer, endpoint: Endpoint, held: str) -> None:
    kit = str(endpoint.kit.kit_dir)
    result = invoke(
        app, "approval", "approve", held, "--kit", kit, "--reason", "ok", "--expires-in", "1"
    )
    assert result.exit_code == 0, result.output
    assert "approve by silo-a-admin" in result.output
    with ApprovalClient(endpoint.kit) as client:
        assert client.state(held).decision is Decision.APPROVE
    listed = invoke(app, "approval", "list", "--kit", kit, "--all", "--json")
    assert [r["state"] for r in json.loads(listed.output)] == ["approved"]
    assert json.loads(invoke(app, "approval", "list", "--kit", kit, "--json").output) == []


def test_reject_then_the_agent_sees_it(app: typer.Typer, endpoint: Endpoint, held: str) -> None:
    kit = str(endpoint.kit.kit_dir)
    result = invoke(app, "approval", "reject", held, "--kit", kit, "--reason", "no", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["decision"] == "reject"
    with ApprovalClient(endpoint.kit) as client:
        answer = client.state(held)
    assert (answer.decision, answer.reason) == (Decision.REJECT, "no")


def test_the_admin_commands_need_a_silo(app: typer.Typer) -> None:
    result = invoke(app, "approval", "list")
    assert result.exit_code == 2
    assert "--silo" in result.output


def test_a_kit_of_another_silo_is_refused(app: typer.Typer, silo_kit: Kit) -> None:
    result = invoke(app, "approval", "list", "--kit", str(silo_kit.kit_dir), "--silo", "silo-b")
    assert isinstance(result.exception, ConfigError)


def test_an_endpoint_that_is_down_is_a_clear_error(app: typer.Typer, silo_kit: Kit) -> None:
    result = invoke(app, "approval", "list", "--kit", str(silo_kit.kit_dir))
    assert isinstance(result.exception, TransportError)
    assert "fedsilo approval serve" in str(result.exception)


def test_show_bounds_long_tensor_lists_and_says_when_no_model_is_declared(
    app: typer.Typer, endpoint: Endpoint
) -> None:
    import numpy as np

    from fedsilo.approval import CodeFile, OutputRef
    from fedsilo.config import Classification
    from fedsilo.jobs import ModelLayout

    model = ModelLayout.of(
        {f"layer{i:03d}.weight": np.zeros((4, 4), np.float32) for i in range(100)}
    )
    big = OutputRef(
        name="model",
        destination="orchestrator",
        classification=Classification.INTERMEDIATE,
        bytes=model.bytes,
        model=model,
    )
    files = (CodeFile(path="task.py", bytes=2048, sha256="c" * 64),)
    kit = str(endpoint.kit.kit_dir)
    with ApprovalClient(endpoint.kit) as client:
        shown = client.ask(
            make_request(job_name="needs-a-person", outputs=(big,), files=files, rounds=3)
        )
        bare = client.ask(make_request(job_id="job-2", job_name="needs-a-person"))
    output = invoke(app, "approval", "show", shown.request_id, "--kit", kit).output
    assert "1,600 values in 100 tensors, 6.2 KiB an upload; it leaves 4 times" in output
    assert "layer039.weight" in output and "layer040.weight" not in output
    assert "... and 60 more tensors" in output
    assert f"2 KiB  {'c' * 12}  task.py" in output and "c" * 13 not in output
    assert max(len(line) for line in output.splitlines() if "sha256" in line) <= 80
    prefix = shown.request_id[:12]
    wide = invoke(app, "approval", "show", prefix, "--kit", kit, "--wide").output
    assert f"2 KiB  {'c' * 64}  task.py" in wide
    output = invoke(app, "approval", "show", bare.request_id, "--kit", kit).output
    assert "not declared: the bundle has no MODEL.json" in output
