"""``fedsilo tracking ui`` serves the workspace's store on loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from fedsilo.tracking import Tracker, ui_command
from fedsilo.tracking._ui_app import TRAINING_VIEW_SCRIPT, TrainingViewFirst


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_ui_command_points_at_the_workspace_store(tmp_path: Path) -> None:
    command = ui_command(tmp_path, port=5123)
    assert command.url == "http://127.0.0.1:5123"
    assert f"sqlite:///{tmp_path.absolute()}/tracking/mlflow.db" in command.argv
    assert (tmp_path / "tracking" / "artifacts").as_uri() in command.argv
    assert command.env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert command.argv[command.argv.index("--host") + 1] == "127.0.0.1"
    # MLflow's app through fedsilo's, registered as an mlflow.app entry point
    assert command.training_view
    assert command.argv[command.argv.index("--app-name") + 1] == "fedsilo"


def _serve(app: Any, path: str, method: str = "GET") -> tuple[dict[str, Any], bytes]:
    """One request to an ASGI app: the start of its answer and the whole body."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    scope = {"type": "http", "method": method, "path": path, "headers": []}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start, body


def _mlflow_like(page: bytes, content_type: bytes = b"text/html; charset=utf-8") -> Any:
    """An app that answers every request with ``page``, in two chunks, as MLflow's does."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(page))]
        headers.append((b"etag", b'"mlflow"'))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": page[:10], "more_body": True})
        await send({"type": "http.response.body", "body": page[10:], "more_body": False})

    return app


PAGE = b"<!doctype html><html><head><title>MLflow</title></head><body></body></html>"


def test_the_ui_page_makes_the_training_view_a_new_browsers_choice() -> None:
    start, body = _serve(TrainingViewFirst(_mlflow_like(PAGE)), "/")
    assert body == PAGE.replace(b"<head>", b"<head>" + TRAINING_VIEW_SCRIPT)
    assert b"mlflow.workflowType_v1" in body and b"machine_learning" in body
    assert b"getItem(k)===null" in body  # a browser that chose GenAI keeps it
    headers = dict(start["headers"])
    assert headers[b"content-length"] == str(len(body)).encode()
    assert b"etag" not in headers


@pytest.mark.parametrize(
    ("path", "method", "content_type"),
    [
        ("/ajax-api/2.0/mlflow/runs/search", "GET", b"text/html"),
        ("/", "POST", b"text/html"),
        ("/", "GET", b"application/json"),
    ],
)
def test_everything_else_passes_through_untouched(
    path: str, method: str, content_type: bytes
) -> None:
    start, body = _serve(TrainingViewFirst(_mlflow_like(PAGE, content_type)), path, method)
    assert body == PAGE
    assert dict(start["headers"])[b"etag"] == b'"mlflow"'


@pytest.mark.slow
@pytest.mark.integration
def test_ui_answers_health_on_loopback(tmp_path: Path) -> None:
    tracker = Tracker.for_workspace(tmp_path)
    tracker.finish(tracker.start_job("job-1", "digits", {"rounds": 1}), "succeeded")
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "fedsilo", "tracking", "ui", str(tmp_path), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        healthy = False
        while time.monotonic() < deadline and process.poll() is None:
            try:
                healthy = httpx.get(f"{url}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                healthy = False
            if healthy:
                break
            time.sleep(0.5)
        assert healthy, "the UI did not answer /health within 60 s"
        found = httpx.post(
            f"{url}/api/2.0/mlflow/runs/search", json={"experiment_ids": ["1"]}, timeout=10
        )
        assert found.status_code == 200
        assert "job-1" in found.text
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
    assert url.encode() in output
